//! `vault exec -c NAME... [--env K=V]... -- CMD ARGS` (docs/exec.md): resolve
//! every credential in one request, refuse before starting anything when one
//! is missing, locked or expired, write the child's files into a private
//! folder, run the child with its environment, forward signals, remove the
//! folder whatever way the child ends, and exit with the child's code.

pub(crate) mod child;
mod loopback;
mod mask;
mod metadata;
pub mod plan;
mod server;
mod shadow;

pub use child::Folder;

use std::ffi::OsString;

use vault_protocol::message::RecordView;
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Request, Response, SecretValue, WireError, validate_name};

use crate::args::ExecArgs;
use crate::commands::Ctx;
use crate::dotenv;
use crate::error::{CliResult, failed, unexpected, usage};

/// Set in the child: the credentials it was given, comma-separated.
pub const VAULT_EXEC: &str = "VAULT_EXEC";

/// Runs `vault exec`; the child's exit code becomes ours.
pub fn run(ctx: &mut Ctx, args: ExecArgs) -> CliResult<()> {
    let mut names: Vec<String> = Vec::new();
    for name in &args.credentials {
        validate_name(name).map_err(usage)?;
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let overrides = parse_overrides(&args.env)?;
    let outer = std::env::var(VAULT_EXEC).unwrap_or_default();
    if let Some(again) = names
        .iter()
        .find(|n| outer.split(',').any(|o| o == n.as_str()))
    {
        return Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "already inside 'vault exec' with {again} (VAULT_EXEC={outer}): the variables are set; \
                 run the command directly, or leave the outer 'vault exec' first"
            ),
        ));
    }
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(usage(
            "no command to run: vault exec -c NAME -- COMMAND [ARG...]",
        ));
    };

    let env_files = read_env_files(&args.env_file)?;
    let mut wanted = names.clone();
    for (_, entries) in &env_files {
        for (name, _) in entries.iter().filter_map(|e| dotenv::reference(&e.value)) {
            validate_name(name).map_err(usage)?;
            if !wanted.iter().any(|w| w == name) {
                wanted.push(name.to_owned());
            }
        }
    }
    let resolved = if wanted.is_empty() {
        Vec::new()
    } else {
        match ctx.call_unlocked(&|| Request::Resolve {
            names: wanted.clone(),
        })? {
            Response::Resolved { records } => records,
            _ => return Err(unexpected("resolve")),
        }
    };
    refuse_expired(&resolved, Timestamp::now())?;
    let file_vars = env_file_vars(&env_files, &resolved)?;
    drop(env_files);
    // Only the -c credentials give all their variables; the others were
    // asked for one field each.
    let records: Vec<RecordView> = resolved
        .into_iter()
        .filter(|r| names.contains(&r.name))
        .collect();
    let agent = if args.ssh_agent {
        Some(crate::commands::agent_socket(ctx)?)
    } else {
        None
    };
    // The child must not inherit our connection, and the daemon need not
    // keep it open while the child runs.
    ctx.disconnect();

    let served = if args.server {
        served_credentials(&records)?
    } else {
        Served::default()
    };
    if !args.server
        && let Some(issuer) = records.iter().find(|r| {
            r.fields
                .contains_key(vault_protocol::credential::ISSUER_KEY)
        })
    {
        return Err(usage(format!(
            "'{0}' is a workload identity issuer, which has no key file to give: run the child \
             with 'vault exec --server -c {0}' (a metadata endpoint with its tokens), or write \
             its external_account file with 'vault emit gcloud {0} --external-account'",
            issuer.name
        )));
    }
    let folder = child::Folder::create(&ctx.target.paths.exec_dir()).map_err(failed)?;
    let prefixes = parse_prefixes(&args.prefix, &records)?;
    let mut plan =
        plan::build(&records, &overrides, &prefixes, &folder.path_str()).map_err(usage)?;
    for var in &file_vars {
        if !overrides.iter().any(|(k, _)| *k == var.key) {
            plan.set.insert(
                var.key.clone(),
                plan::EnvValue {
                    value: var.value.duplicate(),
                    from: var.from.clone(),
                },
            );
        }
    }
    if let Some(agent) = &agent
        && !overrides.iter().any(|(k, _)| k == "SSH_AUTH_SOCK")
    {
        plan.set.insert(
            "SSH_AUTH_SOCK".to_owned(),
            plan::EnvValue {
                value: agent.to_string_lossy().as_ref().into(),
                from: None,
            },
        );
    }
    let endpoint = match served.aws.clone() {
        Some(name) => {
            let token = zeroize::Zeroizing::new(child::random_hex(32).map_err(failed)?);
            let endpoint = server::CredServer::start(ctx.target.clone(), name.clone(), token)
                .map_err(failed)?;
            serve_instead_of_keys(&mut plan, &name, &endpoint, &overrides);
            shadow::hide_default_aws_profile(&mut plan, folder.path(), &overrides);
            shadow::hide_boto_config(&mut plan, folder.path(), &overrides);
            Some(endpoint)
        }
        None => None,
    };
    let metadata = match served.gcp.clone() {
        Some((name, identity)) => {
            let server =
                metadata::MetadataServer::start(ctx.target.clone(), name.clone(), identity)
                    .map_err(failed)?;
            serve_instead_of_key_file(&mut plan, &name, &server, &overrides);
            shadow::hide_gcloud_adc(&mut plan, folder.path(), &overrides);
            Some(server)
        }
        None => None,
    };
    let mut masker = mask::Masker::default();
    if !args.no_mask {
        for record in &records {
            for (field, value) in &record.fields {
                if record.kind.is_secret(field) {
                    masker.add(value.expose_secret(), &record.name);
                }
            }
        }
    }
    if !args.no_mask {
        for var in file_vars.iter().filter(|v| v.secret) {
            if let Some(from) = &var.from {
                masker.add(var.value.expose_secret(), from);
            }
        }
    }
    drop(file_vars);
    if let Some(endpoint) = &endpoint {
        masker.add(&endpoint.token, "AWS_CONTAINER_AUTHORIZATION_TOKEN");
    }
    if let Some((name, at)) = unrefreshable_expiry(&records, &served) {
        warn_before_expiry(name, at);
    }
    drop(records);
    folder.write_all(&plan.files).map_err(failed)?;
    plan.files.clear();

    let mut exec_names = outer;
    for name in &names {
        if !exec_names.is_empty() {
            exec_names.push(',');
        }
        exec_names.push_str(name);
    }
    let code = child::run(program, program_args, &plan, &exec_names, &masker);
    drop(plan);
    drop(endpoint);
    drop(metadata);
    drop(folder);
    match code {
        Ok(code) => {
            ctx.exit_code = code;
            Ok(())
        }
        Err(child::SpawnError { code, message }) => {
            eprintln!("vault: {message}");
            ctx.exit_code = code;
            Ok(())
        }
    }
}

/// What `--server` serves: at most one `aws` credential (container
/// credentials) and one `gcp` service-account key (a metadata endpoint).
#[derive(Debug, Default)]
struct Served {
    aws: Option<String>,
    gcp: Option<(String, metadata::Identity)>,
}

impl Served {
    fn names(&self) -> impl Iterator<Item = &str> {
        self.aws
            .as_deref()
            .into_iter()
            .chain(self.gcp.as_ref().map(|(n, _)| n.as_str()))
    }
}

fn served_credentials(records: &[RecordView]) -> CliResult<Served> {
    let of = |kind| -> CliResult<Option<&RecordView>> {
        let found: Vec<&RecordView> = records.iter().filter(|r| r.kind == kind).collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            _ => Err(usage(format!(
                "--server serves one {kind} credential, not {}: keep one -c of type {kind}",
                found.len()
            ))),
        }
    };
    let aws = of(vault_protocol::CredentialType::Aws)?.map(|r| r.name.clone());
    let gcp = match of(vault_protocol::CredentialType::Gcp)? {
        Some(r) => match plan::gcp_identity(r) {
            Ok((email, project)) => Some((r.name.clone(), metadata::Identity { email, project })),
            // The aws credential is still served; this one goes to the
            // child as without --server.
            Err(why) if aws.is_some() => {
                eprintln!(
                    "vault: note: {why}; '{}' is given as a file instead",
                    r.name
                );
                None
            }
            Err(why) => return Err(usage(why)),
        },
        None => None,
    };
    if aws.is_none() && gcp.is_none() {
        return Err(usage(
            "--server serves an aws credential or a gcp service-account key: add -c NAME of one",
        ));
    }
    Ok(Served { aws, gcp })
}

/// Inherited variables that would turn google-auth away from a plain-HTTP
/// metadata endpoint: mTLS to it (`strict` refuses a custom host), no
/// metadata check at all, certificate-bound (agent identity) tokens.
const GCE_AWAY_FROM_ENDPOINT: [&str; 4] = [
    "GCE_METADATA_MTLS_MODE",
    "NO_GCE_CHECK",
    "GOOGLE_API_CERTIFICATE_CONFIG",
    "GOOGLE_API_ENABLE_RUNTIME_BOUND_TOKEN",
];

/// With `--server`, a `gcp` credential's child gets the metadata endpoint
/// instead of the key file: no key is written, the file variables (also
/// inherited ones, which google-auth would prefer) are removed, and the
/// project stays; `--env` still wins.
fn serve_instead_of_key_file(
    plan: &mut plan::Plan,
    name: &str,
    server: &metadata::MetadataServer,
    overrides: &[(String, String)],
) {
    let key_file = plan::gcp_key_file(name);
    plan.files.retain(|f| f.rel != key_file);
    for key in [
        plan::GOOGLE_APPLICATION_CREDENTIALS,
        plan::CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE,
    ] {
        if plan
            .set
            .get(key)
            .is_some_and(|v| v.from.as_deref() == Some(name))
        {
            plan.set.remove(key);
        }
        if !overrides.iter().any(|(k, _)| k == key) {
            plan.unset.push(key);
        }
    }
    for key in GCE_AWAY_FROM_ENDPOINT {
        if !overrides.iter().any(|(k, _)| k == key) {
            plan.unset.push(key);
        }
    }
    // google-auth reads GCE_METADATA_HOST (GCE_METADATA_ROOT before it),
    // and pings GCE_METADATA_IP; gcloud reads GCE_METADATA_ROOT.
    for key in ["GCE_METADATA_HOST", "GCE_METADATA_ROOT", "GCE_METADATA_IP"] {
        if !overrides.iter().any(|(k, _)| k == key) {
            plan.set.insert(
                key.to_owned(),
                plan::EnvValue {
                    value: server.host.as_str().into(),
                    from: Some(name.to_owned()),
                },
            );
        }
    }
}

/// With `--server`, the child gets the endpoint instead of static keys for
/// credential `name` (its region stays); `--env` still wins.
fn serve_instead_of_keys(
    plan: &mut plan::Plan,
    name: &str,
    endpoint: &server::CredServer,
    overrides: &[(String, String)],
) {
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_CREDENTIAL_EXPIRATION",
    ] {
        if plan
            .set
            .get(key)
            .is_some_and(|v| v.from.as_deref() == Some(name))
        {
            plan.set.remove(key);
        }
    }
    plan.unset.push("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    for key in shadow::AWS_AHEAD_OF_ENDPOINT {
        if !overrides.iter().any(|(k, _)| k == key) {
            plan.unset.push(key);
        }
    }
    for (key, value) in [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", endpoint.token.as_str()),
    ] {
        if !overrides.iter().any(|(k, _)| k == key) {
            plan.set.insert(
                key.to_owned(),
                plan::EnvValue {
                    value: value.into(),
                    from: Some(name.to_owned()),
                },
            );
        }
    }
}

/// `--prefix [NAME=]PREFIX`: the variable prefix of a password credential;
/// NAME may be left out when exactly one is given.
fn parse_prefixes(
    given: &[String],
    records: &[RecordView],
) -> CliResult<std::collections::BTreeMap<String, String>> {
    let passwords: Vec<&str> = records
        .iter()
        .filter(|r| r.kind == vault_protocol::CredentialType::Password)
        .map(|r| r.name.as_str())
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for item in given {
        let (name, prefix) = match item.split_once('=') {
            Some((name, prefix)) => (name.to_owned(), prefix),
            None => match passwords.as_slice() {
                [one] => ((*one).to_owned(), item.as_str()),
                _ => {
                    return Err(usage(format!(
                        "--prefix {item}: say which password credential it is for, --prefix NAME={item}"
                    )));
                }
            },
        };
        if !passwords.contains(&name.as_str()) {
            return Err(usage(format!(
                "--prefix {item}: '{name}' is not a password credential given with -c"
            )));
        }
        if !vault_protocol::credential::is_env_name(prefix) {
            return Err(usage(format!(
                "--prefix {item}: '{prefix}' cannot start an environment variable name"
            )));
        }
        out.insert(name, prefix.to_owned());
    }
    Ok(out)
}

/// `--env K=V` pairs; the value may be empty.
fn parse_overrides(pairs: &[String]) -> CliResult<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| usage(format!("--env {pair}: use --env NAME=VALUE")))
        })
        .collect()
}

/// Each `--env-file` with its entries.
fn read_env_files(files: &[std::path::PathBuf]) -> CliResult<Vec<(String, Vec<dotenv::Entry>)>> {
    files
        .iter()
        .map(|path| {
            let what = path.display().to_string();
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                failed(format!(
                    "--env-file {what}: cannot read it ({e}); nothing was run"
                ))
            })?);
            let entries = dotenv::parse(&text, &what)
                .map_err(|e| usage(format!("{e}; nothing was run — fix the line and retry")))?;
            Ok((what, entries))
        })
        .collect()
}

/// A variable from an `--env-file`.
struct FileVar {
    key: String,
    value: SecretValue,
    /// The credential a reference named.
    from: Option<String>,
    /// A secret field (masked in the child's piped output).
    secret: bool,
}

/// The `--env-file` variables in order (a later file or line wins), each
/// reference replaced by its credential's field.
fn env_file_vars(
    files: &[(String, Vec<dotenv::Entry>)],
    resolved: &[RecordView],
) -> CliResult<Vec<FileVar>> {
    let mut out = Vec::new();
    for (what, entries) in files {
        for e in entries {
            let var = match dotenv::reference(&e.value) {
                None => FileVar {
                    key: e.key.clone(),
                    value: SecretValue::from(e.value.as_str()),
                    from: None,
                    secret: false,
                },
                Some((name, field)) => {
                    let record = resolved
                        .iter()
                        .find(|r| r.name == name)
                        .ok_or_else(|| unexpected("resolve"))?;
                    let value = record.fields.get(field).ok_or_else(|| {
                        usage(format!(
                            "{what} line {}: '{name}' has no field {field} (it has: {}); nothing \
                             was run",
                            e.line,
                            record.fields.keys().cloned().collect::<Vec<_>>().join(", ")
                        ))
                    })?;
                    FileVar {
                        key: e.key.clone(),
                        value: value.duplicate(),
                        from: Some(name.to_owned()),
                        secret: record.kind.is_secret(field),
                    }
                }
            };
            out.retain(|v: &FileVar| v.key != var.key);
            out.push(var);
        }
    }
    Ok(out)
}

/// Exit 7 before anything starts when a credential has expired, naming it
/// and when.
fn refuse_expired(records: &[RecordView], now: Timestamp) -> CliResult<()> {
    match records
        .iter()
        .find(|r| r.expired || r.expires_at.is_some_and(|t| t <= now))
    {
        Some(r) => Err(WireError::new(
            ErrorCode::Expired,
            format!(
                "{} expired at {}: renew it (vault set {} ... --ttl DUR) before running the command",
                r.name,
                r.expires_at.map(|t| t.to_string()).unwrap_or_default(),
                r.name
            ),
        )),
        None => Ok(()),
    }
}

/// How long before an unrefreshable credential expires the wrapper warns.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// The credential given to the child that expires first and that nothing
/// will renew for it: every value in its environment or files is fixed for
/// its life; only the one served with `--server` is re-read (and refreshed
/// by the daemon, when it refreshes itself: a refresh command or a source).
fn unrefreshable_expiry(records: &[RecordView], served: &Served) -> Option<(String, Timestamp)> {
    records
        .iter()
        .filter(|r| {
            !served.names().any(|n| n == r.name)
                || !vault_protocol::credential::refreshes_itself(|f| r.fields.contains_key(f))
        })
        .filter_map(|r| Some((r.name.clone(), r.expires_at?)))
        .min_by_key(|(_, t)| *t)
}

/// One line on the wrapper's stderr five minutes before `at` (at once when
/// less is left), from a thread that dies with the wrapper. Checks the wall
/// clock in short sleeps, so a suspended laptop still warns on waking.
fn warn_before_expiry(name: String, at: Timestamp) {
    let warn_at = at.unix() - EXPIRY_WARNING.as_secs() as i64;
    std::thread::spawn(move || {
        loop {
            let left = warn_at - Timestamp::now().unix();
            if left <= 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(left.clamp(1, 30) as u64));
        }
        let now = Timestamp::now();
        eprintln!(
            "vault exec: {name} expires {} ({at}) and cannot be renewed for this command: \
             restart it once '{name}' is renewed",
            crate::output::relative(at, now)
        );
    });
}

/// The command, for messages.
pub fn describe(program: &OsString) -> String {
    program.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vault_protocol::{CredentialType, SecretValue};

    use super::*;

    fn aws(name: &str, extra: &str, expires: i64) -> RecordView {
        let mut fields = BTreeMap::new();
        fields.insert("access_key_id".to_owned(), SecretValue::from("ASIA"));
        if !extra.is_empty() {
            fields.insert(extra.to_owned(), SecretValue::from("x"));
        }
        RecordView {
            name: name.to_owned(),
            kind: CredentialType::Aws,
            fields,
            description: None,
            tags: vec![],
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            expires_at: Some(Timestamp(expires)),
            expired: false,
            revision: 1,
        }
    }

    fn served(name: &str) -> Served {
        Served {
            aws: Some(name.to_owned()),
            gcp: None,
        }
    }

    #[test]
    fn only_a_served_self_refreshing_credential_is_renewed_for_the_child() {
        for refresher in ["refresh_command", "source"] {
            let records = [aws("served", refresher, 100), aws("static", "", 200)];
            assert_eq!(
                unrefreshable_expiry(&records, &served("served")),
                Some(("static".to_owned(), Timestamp(200))),
                "{refresher}"
            );
            // In the environment, even a self-refreshing one is fixed.
            assert_eq!(
                unrefreshable_expiry(&records, &Served::default()),
                Some(("served".to_owned(), Timestamp(100)))
            );
        }
        let records = [aws("served", "", 100)];
        assert_eq!(
            unrefreshable_expiry(&records, &served("served")),
            Some(("served".to_owned(), Timestamp(100)))
        );
    }
}
