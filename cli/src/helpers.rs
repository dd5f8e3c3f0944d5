//! `docker-credential-vault` and `git-credential-vault`: the `vault` binary
//! called by those names (argv[0]), speaking docker's and git's credential
//! helper protocols (docs/user-guide.md). They never prompt: a locked vault is an
//! error the calling tool shows.

use std::io::{self, Read, Write};

use vault_protocol::message::{ListFilter, NewRecord, RecordView};
use vault_protocol::{CredentialType, ErrorCode, Request, Response, SecretValue, WireError};
use zeroize::Zeroizing;

use crate::client::{Client, Target, list_all};
use crate::names::{host_of, name_from};

/// Which helper argv[0] names, if any.
pub fn which(argv0: &str) -> Option<fn(&[String]) -> i32> {
    let name = std::path::Path::new(argv0).file_name()?.to_str()?;
    match name {
        "docker-credential-vault" => Some(docker),
        "git-credential-vault" => Some(git),
        _ => None,
    }
}

fn client() -> Result<Client, WireError> {
    let target = Target::from_env(None)?;
    Client::connect_or_start(&target)
}

fn read_stdin() -> io::Result<Zeroizing<String>> {
    let mut s = Zeroizing::new(String::new());
    io::stdin().read_to_string(&mut s)?;
    Ok(s)
}

/// Every credential of `kind`, with values.
fn all_of(client: &mut Client, kind: CredentialType) -> Result<Vec<RecordView>, WireError> {
    let filter = ListFilter {
        kind: Some(kind),
        ..ListFilter::default()
    };
    let names: Vec<String> = list_all(&filter, |req| client.call(req()))?
        .into_iter()
        .map(|r| r.name)
        .collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    match client.call(Request::Resolve { names })? {
        Response::Resolved { records } => Ok(records),
        _ => Err(WireError::new(
            ErrorCode::BadFrame,
            "unexpected answer to resolve",
        )),
    }
}

fn field<'a>(r: &'a RecordView, f: &str) -> &'a str {
    r.fields
        .get(f)
        .map(|v| v.expose_secret())
        .unwrap_or_default()
}

fn upsert(
    client: &mut Client,
    existing: Option<&RecordView>,
    name: &str,
    kind: CredentialType,
    fields: Vec<(&str, &str)>,
) -> Result<(), WireError> {
    let fields: std::collections::BTreeMap<String, SecretValue> = fields
        .into_iter()
        .map(|(k, v)| (k.to_owned(), SecretValue::from(v)))
        .collect();
    let req = match existing {
        Some(r) => Request::Set {
            name: r.name.clone(),
            fields,
            unset: vec![],
            description: None,
            tags: None,
            expires_at: None,
        },
        None => Request::Add {
            record: NewRecord {
                name: name.to_owned(),
                kind,
                fields,
                description: Some("stored by a credential helper".to_owned()),
                tags: vec!["helper".to_owned()],
                expires_at: None,
            },
        },
    };
    client.call(req).map(drop)
}

/// docker's protocol: `get|store|erase|list|version`; answers and errors on
/// stdout, exit 1 on error.
fn docker(args: &[String]) -> i32 {
    let fail = |msg: &str| {
        println!("{msg}");
        1
    };
    let action = args.first().map(String::as_str).unwrap_or_default();
    if action == "version" {
        println!(
            "docker-credential-vault (vault {})",
            vault_protocol::BUILD_VERSION
        );
        return 0;
    }
    let input = match read_stdin() {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot read stdin: {e}")),
    };
    let mut client = match client() {
        Ok(c) => c,
        Err(e) => return fail(&e.message),
    };
    let registries = match all_of(&mut client, CredentialType::Registry) {
        Ok(r) => r,
        Err(e) => return fail(&e.message),
    };
    let find = |host: &str| {
        registries
            .iter()
            .find(|r| host_of(field(r, "registry")) == host)
    };
    match action {
        "get" => {
            let host = host_of(input.trim());
            match find(host) {
                // Never a dead key: docker shows this line to the user.
                Some(r) if r.expired => fail(&format!(
                    "the vault's credential {} for {host} has expired: renew it with 'vault set {}'",
                    r.name, r.name
                )),
                Some(r) => {
                    let doc = crate::secret_json::object(&[
                        ("ServerURL", Some(input.trim())),
                        ("Username", Some(field(r, "username"))),
                        ("Secret", Some(field(r, "auth"))),
                    ]);
                    println!("{}", *doc);
                    0
                }
                None => fail("credentials not found in native keychain"),
            }
        }
        "store" => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Creds {
                #[serde(rename = "ServerURL")]
                server_url: String,
                username: String,
                secret: SecretValue,
            }
            let creds: Creds = match serde_json::from_str(&input) {
                Ok(c) => c,
                Err(e) => return fail(&format!("bad credentials JSON: {e}")),
            };
            let host = host_of(&creds.server_url).to_owned();
            let result = upsert(
                &mut client,
                find(&host),
                &name_from(&host),
                CredentialType::Registry,
                vec![
                    ("registry", host.as_str()),
                    ("username", creds.username.as_str()),
                    ("auth", creds.secret.expose_secret()),
                ],
            );
            result.map_or_else(|e| fail(&e.message), |()| 0)
        }
        "erase" => match find(host_of(input.trim())) {
            Some(r) => client
                .call(Request::Remove {
                    name: r.name.clone(),
                    force: true,
                })
                .map_or_else(|e| fail(&e.message), |_| 0),
            None => fail("credentials not found in native keychain"),
        },
        "list" => {
            let map: serde_json::Map<String, serde_json::Value> = registries
                .iter()
                .map(|r| (field(r, "registry").to_owned(), field(r, "username").into()))
                .collect();
            println!("{}", serde_json::Value::Object(map));
            0
        }
        other => fail(&format!(
            "unknown action '{other}': use get, store, erase, list or version"
        )),
    }
}

/// git's protocol: `get|store|erase` with `key=value` lines on stdin.
/// A miss prints nothing (git then asks the next helper or the user).
fn git(args: &[String]) -> i32 {
    let action = args.first().map(String::as_str).unwrap_or_default();
    let input = match read_stdin() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("git-credential-vault: cannot read stdin: {e}");
            return 1;
        }
    };
    let attr = |k: &str| {
        input
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_default()
            .to_owned()
    };
    let (protocol, host, username) = (attr("protocol"), attr("host"), attr("username"));
    if host.is_empty() {
        return 0;
    }
    let run = || -> Result<(), WireError> {
        let mut client = client()?;
        let passwords = all_of(&mut client, CredentialType::Password)?;
        let url = format!("{protocol}://{host}");
        let matches = |r: &&RecordView| {
            let u = field(r, "url");
            (u == url || host_of(u) == host || r.name == host)
                && (username.is_empty() || field(r, "username") == username)
        };
        let found = passwords.iter().find(matches);
        match action {
            "get" => {
                if let Some(r) = found {
                    let out = Zeroizing::new(format!(
                        "username={}\npassword={}\n",
                        field(r, "username"),
                        field(r, "password")
                    ));
                    let _ = io::stdout().write_all(out.as_bytes());
                }
                Ok(())
            }
            "store" => {
                let password = attr("password");
                upsert(
                    &mut client,
                    found,
                    &name_from(&host),
                    CredentialType::Password,
                    vec![
                        ("username", &username),
                        ("password", &password),
                        ("url", &url),
                    ],
                )
            }
            "erase" => match found {
                Some(r) => client
                    .call(Request::Remove {
                        name: r.name.clone(),
                        force: true,
                    })
                    .map(drop),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("git-credential-vault: {}", e.message);
            1
        }
    }
}
