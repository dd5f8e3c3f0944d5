//! The command line, as clap sees it (docs/user-guide.md). Only syntax lives here; what
//! the arguments mean is decided in `commands/`.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use vault_protocol::CredentialType;

/// A local-first encrypted credential vault.
#[derive(Debug, Parser)]
#[command(name = "vault", version, propagate_version = true)]
#[command(
    about = "A local-first encrypted credential vault",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 locked or bad passphrase, 4 not found, \
                  5 already exists or conflict, 6 daemon unreachable or version mismatch, \
                  7 credential expired."
)]
pub struct Cli {
    /// Print one JSON document on stdout (machine output)
    #[arg(long, global = true)]
    pub json: bool,

    /// Print nothing but results and errors
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// The daemon's socket
    #[arg(long, global = true, env = "VAULT_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the vault and print its recipient (or join one kept on a server)
    Init(InitArgs),
    /// Unlock the vault
    Unlock(PassphraseArgs),
    /// Lock the vault now
    Lock,
    /// Show the state of the vault and the daemon
    Status,
    /// Add a credential
    #[command(after_help = ADD_HELP)]
    Add(AddArgs),
    /// Change fields or attributes of a credential (makes a new revision)
    Set(SetArgs),
    /// Print a credential, or copy one of its fields to the clipboard (--clip)
    #[command(after_help = GET_HELP)]
    Get(GetArgs),
    /// Edit a credential's fields in $VISUAL or $EDITOR (makes a new revision)
    Edit(EditArgs),
    /// Print the current one-time code (TOTP) of a credential's otp field
    #[command(after_help = OTP_HELP)]
    Otp(OtpArgs),
    /// Show who was handed which credential's value (the audit log)
    #[command(after_help = AUDIT_HELP)]
    Audit(AuditArgs),
    /// Check that credentials still work, each against its own service
    #[command(after_help = CHECK_HELP)]
    Check(CheckArgs),
    /// Rotate a credential: a new AWS access key from IAM, or new values, in every file and platform that has it
    #[command(after_help = ROTATE_HELP)]
    Rotate(RotateArgs),
    /// List credentials (never prints values)
    List(ListArgs),
    /// Delete a credential (its history is kept)
    Rm(RmArgs),
    /// Rename a credential
    Rename {
        /// Current name
        old: String,
        /// New name
        new: String,
    },
    /// Show the revisions of a credential
    History {
        /// The credential
        name: String,
    },
    /// Make an old revision current again
    Restore {
        /// The credential
        name: String,
        /// The revision to restore (see 'vault history NAME')
        #[arg(long, short)]
        revision: u64,
    },
    /// Run a command with credentials in its environment and files
    #[command(after_help = EXEC_HELP)]
    Exec(ExecArgs),
    /// Keep files other tools read (~/.aws/credentials) in sync with a credential
    Emit {
        #[command(subcommand)]
        action: EmitAction,
    },
    /// Google Cloud: access tokens minted from a gcp service-account key
    Gcp {
        #[command(subcommand)]
        action: GcpAction,
    },
    /// Amazon EKS: kubectl tokens signed with an aws credential
    Eks {
        #[command(subcommand)]
        action: EksAction,
    },
    /// AWS IAM Identity Center (SSO): sign in with a device code
    Sso {
        #[command(subcommand)]
        action: SsoAction,
    },
    /// Print a sign-in URL for the AWS console (like 'aws-vault login')
    #[command(after_help = CONSOLE_HELP)]
    Console {
        /// The aws credential
        name: String,
        /// The console page to open [default: the console's home, in the region]
        #[arg(long, value_name = "URL")]
        destination: Option<String>,
        /// The console's (and STS's) region [default: the credential's]
        #[arg(long)]
        region: Option<String>,
        /// How long the console session lasts, 15m to 12h
        #[arg(long, default_value = "1h", value_name = "DUR")]
        duration: String,
        /// Open it in the browser (xdg-open, or open on macOS) through a private
        /// page, instead of printing it
        #[arg(long)]
        open: bool,
    },
    /// Google Kubernetes Engine: kubectl tokens from a gcp credential
    Gke {
        #[command(subcommand)]
        action: GkeAction,
    },
    /// Print an aws credential for ~/.aws/config's credential_process
    #[command(name = "aws-process")]
    AwsProcess {
        /// The aws credential
        name: String,
    },
    /// Bring credentials in from ~/.aws/credentials, ~/.docker/config.json or a .env file
    #[command(after_help = IMPORT_HELP)]
    Import(ImportArgs),
    /// Start, stop or inspect the daemon (vaultd)
    Daemon {
        #[command(subcommand)]
        action: DaemonAction,
    },
    /// Check the daemon, permissions, emitted files and helpers; say how to fix each problem
    #[command(after_help = DOCTOR_HELP)]
    Doctor,
    /// Log in to a vault-server to sync this vault (or, before 'vault init --join', to join one)
    Login(LoginArgs),
    /// Sync with the server now; 'vault sync status' shows the sync state
    Sync {
        #[command(subcommand)]
        action: Option<SyncAction>,
        /// Sync now (the default)
        #[arg(long)]
        now: bool,
    },
    /// List sync conflicts: changes that lost to a concurrent change, kept in history
    Conflicts,
    /// Approve what a credential changed on another device would run, write or reach on this one
    #[command(after_help = APPROVE_HELP)]
    Approve(ApproveArgs),
    /// Add, list, check or remove workload platforms (OSMO) credentials are published to
    Remote {
        #[command(subcommand)]
        action: RemoteAction,
    },
    /// Publish a credential to a workload platform and keep it there as it changes
    #[command(after_help = PUBLISH_HELP)]
    Publish(PublishArgs),
    /// Delete a published credential from the platform (the vault keeps it)
    Unpublish(UnpublishArgs),
    /// Print the SSH_AUTH_SOCK line that points ssh at the vault's SSH agent
    #[command(name = "ssh-agent", after_help = SSH_AGENT_HELP)]
    SshAgent(SshAgentArgs),
    /// Print a shell completion script
    Completions {
        /// The shell
        #[arg(value_parser = shell_parser())]
        shell: Shell,
    },
}

const PUBLISH_HELP: &str = "\
Types: registry -> REGISTRY, data -> DATA (with override_url and addressing_style
when set), generic, token and password -> GENERIC. The platform's rules are checked
first: its name pattern (use --as for names with . @ /), s3/gs/azure/tos/swift
endpoints, GENERIC keys of A-Z a-z 0-9 - . _, one REGISTRY per registry and one
DATA per endpoint. While the platform is unreachable the push waits and goes out,
in order, when it is back; 'vault remote status REMOTE' shows where each stands.";

const DOCTOR_HELP: &str = "\
Exits 1 when a check fails (warnings and skipped checks exit 0). With --json
the result is {\"ok\": BOOL, \"checks\": [{\"check\", \"status\", \"message\", \"fix\"}]}
where status is ok, warn, fail or skip.";

const ADD_HELP: &str = "\
Field values:
  FIELD=VALUE   the value itself (visible to other processes; avoid for secrets)
  FIELD=-       read the value from stdin (one trailing newline is dropped)
  FIELD=@PATH   read the value from a file
  FIELD         ask for it with a hidden prompt (terminal only)

Types and their fields (* = required):
  generic   any KEY=VALUE, at least one; keys of A-Z a-z 0-9 - . _ (exec sets
            those that are variable names)
  aws       access_key_id*, secret_access_key*, session_token, region, role_arn, mfa_serial
            minted by STS instead: source=NAME (+ role_arn, duration, sts_endpoint,
            session_name, mfa_serial with mfa_command) - keys then not required
  data      endpoint* (s3:// gs:// azure:// tos:// swift://), access_key_id*, access_key*,
            region, override_url, addressing_style
  registry  registry*, username*, auth*
  gcp       json* (key file: json=@key.json), project
  password  username*, password*, url
  ssh       private_key*, public_key, known_hosts, confirm (yes: the agent asks first)
  file      content*, path*, mode, env
  token     token*, url, env
  any type  expires_at=TS (the same as --expires-at)
            refresh_command=CMD (prints credential_process JSON; required
            fields then come from it - see docs/refresh.md)

Example:
  vault add my-ngc --type REGISTRY --payload registry=nvcr.io username='$oauthtoken' auth=-";

/// `vault init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    /// Join the vault VAULT_ID kept on the server of 'vault login' instead of
    /// creating one: asks for that vault's passphrase
    #[arg(long, value_name = "VAULT_ID")]
    pub join: Option<String>,
}

/// `vault login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The server: https://HOST[:PORT] (plain http:// only on 127.0.0.1 or localhost)
    pub url: String,
    /// Read the access token from this file ('-' for stdin); without it, asks on the terminal
    #[arg(long, value_name = "FILE", conflicts_with = "sso")]
    pub token_file: Option<PathBuf>,
    /// Sign in through the identity provider the server trusts (device code:
    /// approve it in a browser on any device); sync then renews the sign-in
    /// until the identity provider ends it
    #[arg(long)]
    pub sso: bool,
    /// With --sso: print the page instead of opening a browser
    #[arg(long, requires = "sso")]
    pub no_browser: bool,
}

/// `vault remote …`.
#[derive(Debug, Subcommand)]
pub enum RemoteAction {
    /// Add a platform: its access token is checked, then kept encrypted in the vault
    Add(RemoteAddArgs),
    /// List the platforms, what is published to each and what needs attention
    List,
    /// Compare the platform's credentials with what the vault published (drift)
    Status {
        /// The remote
        name: String,
    },
    /// Forget a platform (what was published to it stays there)
    Rm {
        /// The remote
        name: String,
        /// Also when credentials are published to it
        #[arg(long)]
        force: bool,
    },
}

/// The kinds of platform `vault remote add` knows.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RemoteKindArg {
    /// NVIDIA OSMO's credential service
    Osmo,
}

/// `vault remote add`.
#[derive(Debug, Args)]
pub struct RemoteAddArgs {
    /// Local name for the platform
    pub name: String,
    /// Its base URL: https://HOST (plain http:// only on 127.0.0.1 or localhost)
    pub url: String,
    /// The kind of platform
    #[arg(long, value_enum)]
    pub kind: RemoteKindArg,
    /// Read the platform access token from this file ('-' for stdin); without it, asks on the terminal
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Give an existing remote a new URL or token (its publications stay)
    #[arg(long)]
    pub replace: bool,
}

/// `vault publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The credential
    #[arg(required_unless_present = "repair")]
    pub name: Option<String>,
    /// The remote (see 'vault remote list')
    #[arg(long, value_name = "REMOTE", required_unless_present = "repair")]
    pub to: Option<String>,
    /// The platform's name for it (default: the credential's name)
    #[arg(long = "as", value_name = "REMOTE_NAME")]
    pub remote_name: Option<String>,
    /// Push again what the platform is missing and retry refused publications
    /// (on --to REMOTE, else on every remote)
    #[arg(long, conflicts_with_all = ["name", "remote_name"])]
    pub repair: bool,
}

/// `vault unpublish`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The credentials (none: list what waits, approve nothing)
    pub names: Vec<String>,
    /// Every credential that waits
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    /// Approve without asking (after reading what it shows)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `vault approve --help` epilogue.
const APPROVE_HELP: &str = "\
A field that runs a program (refresh_command, mfa_command), writes a file (a
file credential's path), names an endpoint (sts_endpoint) or sets a variable
that makes a child run code (LD_PRELOAD, GIT_SSH_COMMAND, ...) is used on this
device only with its exact value approved here. What you type on this device is
approved as you write it; what another device changed arrives by sync and
waits: using the credential fails (exit 1) until you approve it. Approvals stay
on this device and are never synced.

Examples:
  vault approve                 # list what waits
  vault approve gh              # show what gh would run, then ask
  vault approve --all --yes     # approve everything listed (scripts)";

/// `vault unpublish`.
#[derive(Debug, Args)]
pub struct UnpublishArgs {
    /// The credential
    pub name: String,
    /// Only from this remote (default: every remote it is published to)
    #[arg(long, value_name = "REMOTE")]
    pub from: Option<String>,
}

/// `vault sync …`.
#[derive(Debug, Subcommand)]
pub enum SyncAction {
    /// Sync now (push local changes, pull everyone else's)
    Now,
    /// Show the server, the last sync, queued changes and the last error
    Status,
    /// Compare this device's copy of every device's log with the server's; exit 1 on holes
    Verify,
    /// Fill the holes 'vault sync verify' finds: fetch again, push again
    Repair,
    /// Remove this device's shared audit log from the server (after setting [audit] sync = false)
    #[command(name = "unshare-audit")]
    UnshareAudit,
}

/// Where a passphrase comes from, besides `VAULT_PASSPHRASE_FILE` and the
/// terminal.
#[derive(Debug, Args)]
pub struct PassphraseArgs {
    /// Read the passphrase from the first line of stdin
    #[arg(long)]
    pub passphrase_stdin: bool,
}

/// `vault add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Name: 1-128 characters of A-Z a-z 0-9 . _ @ / -, starting alphanumeric
    pub name: String,

    /// Credential type
    #[arg(long = "type", short = 't', value_name = "TYPE", value_parser = type_parser(), ignore_case = true)]
    pub kind: CredentialType,

    /// Field values: FIELD=VALUE, FIELD=-, FIELD=@PATH or FIELD
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,

    /// More field values, in the spelling of workload platforms
    #[arg(long, value_name = "FIELD=VALUE", num_args = 1..)]
    pub payload: Vec<String>,

    /// Free text shown by 'vault list'
    #[arg(long, short)]
    pub description: Option<String>,

    /// A tag for filtering (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,

    /// When the credential stops being valid (RFC 3339)
    #[arg(long, value_name = "TS", conflicts_with = "ttl")]
    pub expires_at: Option<String>,

    /// How long the credential stays valid, from now (e.g. 1h, 30m)
    #[arg(long, value_name = "DUR")]
    pub ttl: Option<String>,

    /// Fill FIELD with a random password (default: password, or token for
    /// a token)
    #[arg(
        long,
        value_name = "FIELD",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = ""
    )]
    pub generate: Option<String>,

    /// Length of the generated password [default: 24]
    #[arg(long, value_name = "N", requires = "generate")]
    pub length: Option<usize>,

    /// Character classes of the generated password, comma-separated:
    /// letters, upper, lower, digits, symbols [default: letters,digits,symbols]
    #[arg(long, value_name = "CLASSES", requires = "generate")]
    pub charset: Option<String>,

    /// Print the generated password on stdout (else 'vault get' shows it)
    #[arg(long, requires = "generate")]
    pub print: bool,
}

/// `vault set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The credential
    pub name: String,

    /// Fields to set: FIELD=VALUE, FIELD=-, FIELD=@PATH or FIELD
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,

    /// A field to remove (repeatable)
    #[arg(long, value_name = "FIELD")]
    pub unset: Vec<String>,

    /// New description
    #[arg(long, short)]
    pub description: Option<String>,

    /// Replace the tags with these (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,

    /// New expiry (RFC 3339)
    #[arg(long, value_name = "TS", conflicts_with_all = ["ttl", "no_expiry"])]
    pub expires_at: Option<String>,

    /// New expiry, from now (e.g. 1h)
    #[arg(long, value_name = "DUR", conflicts_with = "no_expiry")]
    pub ttl: Option<String>,

    /// Remove the expiry
    #[arg(long)]
    pub no_expiry: bool,
}

/// `vault emit`.
#[derive(Debug, Subcommand)]
pub enum EmitAction {
    /// Write an aws credential as a profile of ~/.aws/credentials, and keep it in sync
    Aws {
        /// The aws credential
        name: String,
        /// The profile (section) to write
        #[arg(long)]
        profile: String,
        /// The file (default: $AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials;
        /// with --process, $AWS_CONFIG_FILE or ~/.aws/config)
        #[arg(long)]
        path: Option<PathBuf>,
        /// Replace a profile that vault did not write (a backup of the file is kept)
        #[arg(long)]
        force: bool,
        /// Write `credential_process = vault aws-process NAME` under [profile P]
        /// of ~/.aws/config (no keys in any file) instead
        #[arg(long)]
        process: bool,
        /// For an SSO credential: the aws CLI's own SSO profile instead ([profile P]
        /// with sso_session, [sso-session vault-S] in ~/.aws/config, and the
        /// session's access token, only, in ~/.aws/sso/cache), kept fresh by vaultd
        #[arg(long, conflicts_with = "process")]
        sso: bool,
    },
    /// Write a gcp credential's JSON as a gcloud/ADC key file, and keep it in sync
    Gcloud {
        /// The gcp credential
        name: String,
        /// Write it as Application Default Credentials
        /// (~/.config/gcloud/application_default_credentials.json)
        #[arg(long, conflicts_with = "path")]
        adc: bool,
        /// The file to write
        #[arg(long)]
        path: Option<PathBuf>,
        /// Replace a file that vault did not write (a backup is kept)
        #[arg(long)]
        force: bool,
        /// For an issuer credential ('vault gcp issuer'): an external_account
        /// file whose executable asks this vault for subject tokens (no key in it)
        #[arg(long)]
        external_account: bool,
    },
    /// Write a registry credential's login into ~/.docker/config.json (auths), and keep it in sync
    Docker {
        /// The registry credential
        name: String,
        /// The docker config (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)
        #[arg(long)]
        path: Option<PathBuf>,
        /// Replace an entry that vault did not write (a backup is kept)
        #[arg(long)]
        force: bool,
        /// Write credHelpers[registry] = "vault" instead: docker asks
        /// docker-credential-vault, and no login is in the file
        #[arg(long)]
        helper: bool,
    },
    /// Write a file credential's content to its path, and keep it in sync
    File {
        /// The file credential
        name: String,
        /// The file to write (default: the credential's own path field)
        #[arg(long)]
        path: Option<PathBuf>,
        /// Replace a file that vault did not write (a backup is kept)
        #[arg(long)]
        force: bool,
    },
    /// Add a user to ~/.kube/config whose token kubectl gets from vault
    /// (EKS from an aws credential, GKE from a gcp one), and keep it
    Kube {
        /// The aws or gcp credential
        name: String,
        /// The user's name in the kubeconfig (default: vault-NAME)
        #[arg(long)]
        user: Option<String>,
        /// aws: the EKS cluster's name
        #[arg(long)]
        cluster: Option<String>,
        /// aws: the cluster's region (default: the credential's)
        #[arg(long)]
        region: Option<String>,
        /// gcp: an OAuth scope (repeatable; default: cloud-platform)
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// The kubeconfig (default: the first file of $KUBECONFIG, or ~/.kube/config)
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Replace a user that vault did not write (a backup is kept)
        #[arg(long)]
        force: bool,
    },
    /// List emitted files and whether they still hold what vault wrote
    List,
    /// Rewrite every emitted file that drifted from what vault wrote
    Repair,
    /// Stop emitting: remove vault's section from the file
    Rm {
        /// The emitter id (see 'vault emit list')
        id: String,
    },
}

/// `vault import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// What to read
    pub source: ImportSource,

    /// The file (default: ~/.aws/credentials, ~/.docker/config.json, ./.env)
    pub file: Option<PathBuf>,

    /// Show what would be created; change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Replace credentials that exist (a new revision; the old value stays in the history)
    #[arg(long)]
    pub force: bool,

    /// The credential's name, for env (default: DIR-env, from the file's folder)
    #[arg(long)]
    pub name: Option<String>,

    /// A tag for every imported credential (repeatable)
    #[arg(long)]
    pub tag: Vec<String>,

    /// Move off the plaintext: after importing, each imported profile
    /// (aws) or login (docker) in the file asks the vault instead; a 0600
    /// backup of the file is kept first
    #[arg(long, conflicts_with = "undo")]
    pub adopt: bool,

    /// Undo --adopt: the values go back into the file in plain text and the
    /// vault stops managing those entries
    #[arg(long, conflicts_with_all = ["force", "name", "tag", "dry_run"])]
    pub undo: bool,
}

const IMPORT_HELP: &str = "\
Examples:
  vault import aws --adopt     # keys into the vault; [PROFILE] in ~/.aws/credentials
                               # becomes credential_process = vault aws-process NAME
  vault import docker --adopt  # logins into the vault; auths become credHelpers
  vault import env --adopt     # .env values become vault://NAME/KEY references,
                               # resolved by 'vault exec --env-file .env -- CMD'
  vault import aws --undo      # the keys back in the file, as before

--adopt never touches a profile or login it did not import, and keeps the
file as FILE.vault-adopt-TIME (0600) before changing it. Afterwards no
imported secret is left in the file (remove the backup once satisfied).";

/// What `vault import` reads.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportSource {
    /// Profiles with keys in ~/.aws/credentials (regions from ~/.aws/config)
    Aws,
    /// Registry logins in ~/.docker/config.json
    Docker,
    /// KEY=VALUE lines of a .env file, as one generic credential
    Env,
}

/// `vault ssh-agent`.
#[derive(Debug, Args)]
pub struct SshAgentArgs {
    /// Print it for fish (set -gx) instead of sh
    #[arg(long, conflicts_with = "csh")]
    pub fish: bool,

    /// Print it for csh/tcsh (setenv) instead of sh
    #[arg(long)]
    pub csh: bool,
}

const SSH_AGENT_HELP: &str = "\
Example: eval \"$(vault ssh-agent)\"; ssh-add -l

vaultd serves the vault's ssh credentials (ed25519, ecdsa P-256, rsa) as an
SSH agent on its own socket; keys sign inside the daemon and never leave it.
This starts the daemon if needed and prints the line that sets SSH_AUTH_SOCK.
A locked vault lists no keys, so ssh falls back to its other methods:
run 'vault unlock' first. Keys cannot be added or removed through the agent
(ssh-add KEY, -d, -D fail): use 'vault add NAME --type ssh private_key=@FILE'.";

/// `vault exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A credential to give the command (repeatable)
    #[arg(short = 'c', long = "credential", value_name = "NAME")]
    pub credentials: Vec<String>,

    /// Set a variable; always wins over a credential's (repeatable)
    #[arg(long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,

    /// Variables from a .env file (repeatable); a value vault://NAME/FIELD
    /// is that field of a credential. Wins over -c, --env wins over it
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<std::path::PathBuf>,

    /// Variable prefix of a password credential: PREFIX_USERNAME,
    /// PREFIX_PASSWORD (default: its name upper-cased)
    #[arg(long, value_name = "[NAME=]PREFIX")]
    pub prefix: Vec<String>,

    /// Do not replace secret values in the command's piped output
    #[arg(long)]
    pub no_mask: bool,

    /// Serve the aws credential (container credentials) and the gcp key
    /// (a GCE metadata endpoint) on loopback instead of keys, so SDKs
    /// fetch fresh credentials and no gcp key file is written
    #[arg(long)]
    pub server: bool,

    /// Set SSH_AUTH_SOCK to the vault's SSH agent (see 'vault ssh-agent'),
    /// so the command's ssh signs with the vault's keys
    #[arg(long)]
    pub ssh_agent: bool,

    /// The command and its arguments, after --
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

const EXEC_HELP: &str = "\
Example: vault exec -c aws-dev -c wandb -- python train.py

The command gets each credential as environment variables (and files, for
gcp, ssh, registry and file credentials, written 0600 into a private folder
that is removed when it exits). Signals sent to vault are passed on; the
exit code is the command's (128+N when signal N killed it). When its stdout
or stderr is not a terminal, secret values in it are shown as
<redacted:NAME> (--no-mask turns that off).";

/// `vault get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The credential
    pub name: String,

    /// Print only this field's raw value and a newline (with --clip: copy it)
    #[arg(long, short, value_name = "FIELD")]
    pub field: Option<String>,

    /// Copy the value to the clipboard instead of printing it; cleared after
    /// --clear-after unless something else was copied meanwhile
    #[arg(long, short = 'c')]
    pub clip: bool,

    /// With --clip: how long the value stays on the clipboard, in seconds or
    /// as a duration (90s, 2m), 1 s to 1 h [default: $VAULT_CLIP_CLEAR_AFTER,
    /// else 45]
    #[arg(long, value_name = "SECS", requires = "clip")]
    pub clear_after: Option<String>,
}

const GET_HELP: &str = "\
With --clip, nothing is printed: the field (--field, else the password of a
password, the token of a token, the auth of a registry, or a record's only
field) goes to the clipboard and is cleared after 45 s (--clear-after, or
VAULT_CLIP_CLEAR_AFTER), unless something else was copied meanwhile. Every
program of your graphical session can read the clipboard while it holds the
value. Needs a graphical session: X11, Wayland or macOS.";

/// `vault edit`.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// The credential
    pub name: String,
}

/// `vault otp`.
#[derive(Debug, Args)]
pub struct OtpArgs {
    /// The credential whose otp field holds the seed
    pub name: String,
}

const OTP_HELP: &str = "\
The seed is the credential's otp field: the otpauth://totp/... URI of the
site's QR code, or the base32 secret shown beside it. Keep it with the
login it belongs to:

  vault set github otp=-        (paste the URI or secret, then Ctrl-D)
  vault otp github              (prints the code; on a terminal, how long it holds)

The daemon computes the code: 'vault otp' never receives the seed.";

/// `vault audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this credential's entries
    pub name: Option<String>,

    /// Only entries this recent (e.g. 1h, 7d) or since this time (RFC 3339)
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,

    /// This device's entries and those synced from the vault's other
    /// devices ([audit] sync), by time, with a DEVICE column
    #[arg(long, conflicts_with = "device")]
    pub all_devices: bool,

    /// Only the entries synced from this device (its id; this device's
    /// own id gives its local log)
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
}

const AUDIT_HELP: &str = "\
Every value vaultd hands out is recorded: get, exec and the credential
helpers (resolve), aws-process, otp, emit, publish. Each entry names the
client process (pid, executable, command line) and up to three parents.
The log is kept in vault.db, encrypted and chained: an entry deleted,
changed or cut off is reported, and the command exits 1. Settings:
[audit] enabled, keep in config.toml (docs/lifecycle.md). With [audit]
sync = true the entries are shared, sealed, with the vault's other
devices through the sync server: see them with --all-devices (docs/sync.md).";

/// `vault check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The credentials to check
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub names: Vec<String>,

    /// Check every credential
    #[arg(long)]
    pub all: bool,

    /// Each check's limit (e.g. 5s)
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub timeout: String,
}

const CHECK_HELP: &str = "\
Each credential is asked of its own service, all at once:
  aws       STS GetCallerIdentity (prints the account and ARN); the endpoint
            is the record's sts_endpoint, else config.toml's, else its region's
  token     a GET of its url with the token as the bearer (no url: skipped)
  registry  the registry's /v2/ with the login (basic, or its token service)
  data      S3 ListObjectsV2 on the bucket (s3://, tos://, gs:// HMAC keys)
  generic   its check_command (sh -c), the values in its environment;
            exit 0 means ok (no check_command: skipped)
Other types are skipped for now. Results are kept: 'vault list' shows a
failed one as check-failed, 'vault doctor' says why. Exits 1 when any check
fails. No value is ever printed.";

/// `vault rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The credential
    pub name: String,

    /// New values (any type): FIELD=-, FIELD=@PATH or FIELD; none for an
    /// aws key rotation
    #[arg(value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,

    /// aws: keep the old key, inactive, this long before deleting it (e.g. 24h) [default: 0]
    #[arg(long, value_name = "DURATION", conflicts_with = "fields")]
    pub grace: Option<String>,

    /// aws: how long to wait for IAM to let the new key in
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub wait: String,

    /// aws: finish a rotation that stopped part way: check the stored key,
    /// then deactivate and delete the old one now
    #[arg(long, conflicts_with_all = ["fields", "grace"])]
    pub finish: bool,
}

const ROTATE_HELP: &str = "\
aws (no FIELD=VALUE): the daemon, with the stored key, checks it (STS
GetCallerIdentity) and that the IAM user has room for a second key, creates
one (IAM CreateAccessKey), stores it (the old one stays in 'vault history'),
waits until STS takes it (--wait), then rewrites every emitted file, and
deactivates and deletes the old key (after --grace, if given). A failure
before the new key works puts the old key back and deletes the new one; one
after leaves the new key stored and working, and 'vault rotate NAME --finish'
completes it. IAM is asked at https://iam.amazonaws.com unless config.toml's
[rotate] iam_endpoint names another.

Any type: 'vault rotate NAME FIELD=-' replaces that field's value (from
stdin) and reports every emitted file and platform updated. Processes started
with 'vault exec' keep the old value: restart them.

Exits 1 when a step failed; the report says how to finish or undo.";

/// `vault list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this type
    #[arg(long = "type", short = 't', value_name = "TYPE", value_parser = type_parser(), ignore_case = true)]
    pub kind: Option<CredentialType>,

    /// Only credentials with this tag
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    /// Only credentials expiring within this duration (e.g. 24h)
    #[arg(long, value_name = "DUR")]
    pub expiring: Option<String>,

    /// Only expired credentials
    #[arg(long)]
    pub expired: bool,

    /// Show when each was last handed out, and to what (from the audit log)
    #[arg(long)]
    pub used: bool,

    /// Order of the rows
    #[arg(long, value_enum, default_value_t = SortKey::Name)]
    pub sort: SortKey,

    /// Output format (default: a table on a terminal, tab-separated lines otherwise)
    #[arg(long, value_enum)]
    pub format: Option<ListFormat>,
}

/// `vault list --sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// By name
    Name,
    /// Most recently changed first
    Updated,
    /// Soonest expiry first; no expiry last
    Expires,
}

/// `vault list --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns
    Table,
    /// Same as --json
    Json,
    /// Comma-separated values with a header row
    Csv,
}

/// `vault rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The credential
    pub name: String,

    /// Do not ask for confirmation
    #[arg(long, short)]
    pub force: bool,
}

/// `vault daemon ...`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum DaemonAction {
    /// Start vaultd if it is not running
    Start,
    /// Stop vaultd (locks the vault)
    Stop,
    /// Stop vaultd, then start it (after an upgrade)
    Restart,
    /// Show whether vaultd is running; exit 6 when it is not
    Status,
}

/// The shells `vault completions` writes for.
fn shell_parser() -> impl TypedValueParser<Value = Shell> {
    PossibleValuesParser::new(["bash", "zsh", "fish"])
        .map(|s| <Shell as ValueEnum>::from_str(&s, false).unwrap_or(Shell::Bash))
}

/// Type names for completion and help; upper case accepted.
fn type_parser() -> impl TypedValueParser<Value = CredentialType> {
    PossibleValuesParser::new(CredentialType::ALL.map(CredentialType::as_str))
        .try_map(|s| s.parse::<CredentialType>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn platform_spelling_of_types_and_payload() {
        let cli = Cli::try_parse_from([
            "vault",
            "add",
            "my-ngc",
            "--type",
            "REGISTRY",
            "--payload",
            "registry=nvcr.io",
            "username=$oauthtoken",
            "auth=-",
        ])
        .unwrap();
        let Command::Add(add) = cli.command else {
            panic!("not add")
        };
        assert_eq!(add.kind, CredentialType::Registry);
        assert_eq!(add.payload.len(), 3);
    }

    #[test]
    fn expiry_flags_conflict() {
        let r = Cli::try_parse_from(["vault", "set", "x", "--ttl", "1h", "--no-expiry"]);
        assert!(r.is_err());
    }
}

/// `vault gcp ...`.
#[derive(Debug, Subcommand)]
pub enum GcpAction {
    /// Print an OAuth2 access token (like 'gcloud auth print-access-token');
    /// with --json, its expiry too
    #[command(after_help = GCP_TOKEN_HELP)]
    Token {
        /// The gcp credential (a service-account key)
        name: String,
        /// An OAuth2 scope (repeatable) [default: https://www.googleapis.com/auth/cloud-platform]
        #[arg(long = "scope", value_name = "URL")]
        scopes: Vec<String>,
    },
    /// Make an issuer credential: a key kept in the vault whose short-lived
    /// tokens a workload identity pool trusts (no service-account key anywhere)
    #[command(after_help = GCP_ISSUER_HELP)]
    Issuer(IssuerArgs),
    /// Print an issuer credential's public key as a JWKS, to upload to its
    /// workload identity provider
    Jwks {
        /// The issuer credential
        name: String,
    },
    /// Print a subject token of an issuer credential in the executable-source
    /// format (what an external_account file runs)
    SubjectToken {
        /// The issuer credential
        name: String,
    },
}

/// `vault gcp issuer`.
#[derive(Debug, Args)]
pub struct IssuerArgs {
    /// The new gcp credential
    pub name: String,
    /// The workload identity provider:
    /// //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER
    #[arg(long)]
    pub audience: String,
    /// The issuer URL the provider trusts [default: https://vault.invalid/issuer/RANDOM]
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    /// A service account to act as (clients get its tokens, not federated ones)
    #[arg(long, value_name = "EMAIL")]
    pub impersonate: Option<String>,
    /// Where clients exchange subject tokens [default: https://sts.googleapis.com/v1/token]
    #[arg(long, value_name = "URL")]
    pub token_url: Option<String>,
    /// IAM Credentials, for --impersonate [default: https://iamcredentials.googleapis.com]
    #[arg(long, value_name = "URL")]
    pub iam_endpoint: Option<String>,
    /// The project id clients use by default
    #[arg(long)]
    pub project: Option<String>,
}

const GCP_ISSUER_HELP: &str = "\
Example:
  vault gcp issuer laptop --audience //iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/dev/providers/vault \\
      --impersonate deploy@my-project.iam.gserviceaccount.com
  vault gcp jwks laptop > jwks.json
  gcloud iam workload-identity-pools providers create-oidc vault --location=global \\
      --workload-identity-pool=dev --issuer-uri=ISSUER --jwk-json-path=jwks.json \\
      --attribute-mapping=google.subject=assertion.sub
  vault emit gcloud laptop --external-account --adc

Client libraries then run 'vault gcp subject-token laptop' for a token the
vault signs (ES256, 10 minutes, sub = the credential's name) and exchange it
at Google's STS; set GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1 for them.";

const CONSOLE_HELP: &str = "\
Example: vault console aws-dev --region eu-west-1 --open

The URL signs whoever opens it in, for 15 minutes. Printed, it is yours to
paste; with --open, vault writes it into a page only you can read (0600, in
its private runtime folder), opens that page, and removes it 10 s later: the
URL is never on a command line, where other users could read it. Long-term keys are exchanged for a
federation session first (STS GetFederationToken: the IAM user needs that
permission); a role's keys (a credential with role_arn) are used as they are.
config.toml [console] federation_endpoint names another sign-in endpoint.";

/// `vault sso ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum SsoAction {
    /// Sign in an SSO credential: prints the page and code to approve, opens the
    /// browser when there is one, waits, and keeps the session (docs/sso.md)
    Login {
        /// The aws credential with sso_start_url
        name: String,
        /// Do not open a browser; only print the page to open (on any device)
        #[arg(long)]
        no_browser: bool,
    },
    /// List the accounts and roles a signed-in SSO credential's session may use
    Roles {
        /// A signed-in SSO credential
        name: String,
    },
    /// Save one of those roles as a new SSO credential on the same portal (then
    /// 'vault sso login NEW' signs it in)
    Add {
        /// The new credential
        new: String,
        /// The signed-in SSO credential whose portal and session it uses
        #[arg(long, value_name = "NAME")]
        from: String,
        /// The 12-digit account id (from 'vault sso roles')
        #[arg(long, value_name = "ID")]
        account: String,
        /// The role name (from 'vault sso roles')
        #[arg(long, value_name = "ROLE")]
        role: String,
    },
}

/// `vault gke ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum GkeAction {
    /// Print a kubectl ExecCredential (like gke-gcloud-auth-plugin)
    #[command(after_help = GKE_TOKEN_HELP)]
    Token {
        /// The gcp credential (a service-account key)
        name: String,
        /// An OAuth2 scope (repeatable) [default: https://www.googleapis.com/auth/cloud-platform]
        #[arg(long = "scope", value_name = "URL")]
        scopes: Vec<String>,
        /// client.authentication.k8s.io/v1beta1 or /v1 [default: what kubectl asks
        /// for in KUBERNETES_EXEC_INFO, else v1beta1]
        #[arg(long, value_name = "VERSION")]
        api_version: Option<String>,
    },
}

const GKE_TOKEN_HELP: &str = "\
In ~/.kube/config, in place of gke-gcloud-auth-plugin:

  users:
  - name: vault-sa-dev
    user:
      exec:
        apiVersion: client.authentication.k8s.io/v1beta1
        command: vault
        args: [gke, token, sa-dev]
        interactiveMode: Never

The token is the one 'vault gcp token' hands out (minted by the daemon,
cached until 5 minutes before it expires).";

/// `vault eks ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum EksAction {
    /// Print a kubectl ExecCredential for an EKS cluster (like 'aws eks get-token')
    #[command(after_help = EKS_TOKEN_HELP)]
    Token {
        /// The aws credential
        name: String,
        /// The cluster's name
        #[arg(long, value_name = "NAME")]
        cluster: String,
        /// The STS region [default: the credential's region, else us-east-1]
        #[arg(long)]
        region: Option<String>,
        /// client.authentication.k8s.io/v1beta1 or /v1 [default: what kubectl asks
        /// for in KUBERNETES_EXEC_INFO, else v1beta1]
        #[arg(long, value_name = "VERSION")]
        api_version: Option<String>,
    },
}

const EKS_TOKEN_HELP: &str = "\
In ~/.kube/config (then 'kubectl config set-context --current --user vault-aws-dev'):

  users:
  - name: vault-aws-dev
    user:
      exec:
        apiVersion: client.authentication.k8s.io/v1beta1
        command: vault
        args: [eks, token, aws-dev, --cluster, my-cluster]
        interactiveMode: Never

The daemon presigns STS GetCallerIdentity with the credential's keys (its
sts_endpoint, config.toml's [refresh] sts_endpoint, or the region's); the
keys never leave it. The token is good for 14 minutes, less when the keys
expire sooner.";

const GCP_TOKEN_HELP: &str = "\
Example: curl -H \"Authorization: Bearer $(vault gcp token sa-dev)\" https://storage.googleapis.com/storage/v1/b?project=P

The daemon signs a JWT with the key and exchanges it at the key's token_uri
(Google's; another only when listed in config.toml [gcp] token_uris). The
token is kept in the daemon's memory and handed out again until 5 minutes
before it expires; the vault locking drops it.";
