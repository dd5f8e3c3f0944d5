//! One record of each credential type, as `vault add` arguments.

use crate::*;

/// One record of each credential type (docs/user-guide.md), as `vault add` arguments.
/// Secret values come from `@file` or stdin, never argv.
#[derive(Debug)]
pub struct Sample {
    /// Record name.
    pub name: String,
    /// `--type`.
    pub kind: &'static str,
    /// Everything after `add NAME`.
    pub args: Vec<String>,
    /// Bytes for stdin (a `FIELD=-` argument), if any.
    pub stdin: Option<String>,
    /// A field holding a secret.
    pub secret_field: &'static str,
    /// Its value (contains [`MARK`]).
    pub secret_value: String,
    /// A non-secret field and its value, when the type has one.
    pub plain: Option<(&'static str, String)>,
}

impl Sample {
    /// `vault add` for this sample, which must succeed.
    pub fn add(&self, vh: &VaultHome) -> Run {
        let mut args = vec!["add".to_owned(), self.name.clone()];
        args.extend(self.args.iter().cloned());
        let run = match &self.stdin {
            Some(input) => vh.vault_in(&args, input.as_bytes()),
            None => vh.vault(&args),
        };
        run.ok().never_prints(MARK);
        run
    }
}

/// One sample of each of the 9 types; names end with `suffix`.
pub fn samples(vh: &VaultHome, suffix: &str) -> Vec<Sample> {
    let s = |tag: &str| secret(tag);
    let mut out = Vec::new();
    let mut push = |name: &str,
                    kind: &'static str,
                    args: Vec<String>,
                    stdin: Option<String>,
                    secret_field: &'static str,
                    secret_value: String,
                    plain: Option<(&'static str, String)>| {
        let mut all = vec!["--type".to_owned(), kind.to_owned()];
        all.extend(args);
        out.push(Sample {
            name: format!("{name}{suffix}"),
            kind,
            args: all,
            stdin,
            secret_field,
            secret_value,
            plain,
        });
    };

    let v = s("generic");
    push(
        "app-env",
        "generic",
        vec![format!(
            "API_KEY={}",
            vh.at_file(&format!("generic{suffix}"), &v)
        )],
        None,
        "API_KEY",
        v,
        None,
    );

    let v = s("aws");
    push(
        "aws-dev",
        "aws",
        vec![
            "access_key_id=AKIAE2EEXAMPLE".to_owned(),
            format!(
                "secret_access_key={}",
                vh.at_file(&format!("aws{suffix}"), &v)
            ),
            "region=eu-west-1".to_owned(),
        ],
        None,
        "secret_access_key",
        v,
        Some(("access_key_id", "AKIAE2EEXAMPLE".to_owned())),
    );

    let v = s("data");
    push(
        "bucket.prod",
        "data",
        vec![
            "endpoint=s3://e2e-bucket".to_owned(),
            "access_key_id=AKIADATA".to_owned(),
            format!("access_key={}", vh.at_file(&format!("data{suffix}"), &v)),
        ],
        None,
        "access_key",
        v,
        Some(("endpoint", "s3://e2e-bucket".to_owned())),
    );

    let v = s("registry");
    push(
        "ngc",
        "registry",
        vec![
            "registry=nvcr.io".to_owned(),
            "username=$oauthtoken".to_owned(),
            format!("auth={}", vh.at_file(&format!("registry{suffix}"), &v)),
        ],
        None,
        "auth",
        v,
        Some(("username", "$oauthtoken".to_owned())),
    );

    let key = s("gcp");
    let json = format!(
        "{{\"type\":\"service_account\",\"project_id\":\"e2e-proj\",\"private_key_id\":\"abc\",\
         \"private_key\":\"-----BEGIN PRIVATE KEY-----\\n{key}\\n-----END PRIVATE KEY-----\\n\",\
         \"client_email\":\"e2e@e2e-proj.iam.gserviceaccount.com\"}}"
    );
    push(
        "gcp-sa",
        "gcp",
        vec![
            format!("json={}", vh.at_file(&format!("gcp{suffix}.json"), &json)),
            "project=e2e-proj".to_owned(),
        ],
        None,
        "json",
        json,
        Some(("project", "e2e-proj".to_owned())),
    );

    let v = s("password");
    push(
        "me@corp",
        "password",
        vec![
            "username=alice".to_owned(),
            format!("password={}", vh.at_file(&format!("password{suffix}"), &v)),
            "url=https://corp.example".to_owned(),
        ],
        None,
        "password",
        v,
        Some(("username", "alice".to_owned())),
    );

    // Key files end with a newline and must round-trip byte for byte.
    let v = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        s("ssh"),
        s("ssh2")
    );
    push(
        "team/deploy-key",
        "ssh",
        vec![format!(
            "private_key={}",
            vh.at_file(&format!("ssh{suffix}"), &v)
        )],
        None,
        "private_key",
        v,
        None,
    );

    let v = s("file");
    push(
        "netrc_file",
        "file",
        vec![
            format!("content={}", vh.at_file(&format!("file{suffix}"), &v)),
            format!("path={}/netrc-e2e", vh.user_home.display()),
            "mode=0600".to_owned(),
        ],
        None,
        "content",
        v,
        Some(("mode", "0600".to_owned())),
    );

    let v = s("token");
    push(
        "9-gh-token",
        "token",
        vec!["token=-".to_owned(), "env=GH_TOKEN".to_owned()],
        Some(v.clone()),
        "token",
        v,
        Some(("env", "GH_TOKEN".to_owned())),
    );
    out
}
