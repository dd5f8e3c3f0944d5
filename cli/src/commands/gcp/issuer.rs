//! `vault gcp issuer|jwks|subject-token` (docs/gcp.md, "Keyless: an
//! external_account file"): the vault as an OIDC issuer a workload
//! identity pool trusts. The key is made here from the OS source and sent
//! to the daemon like any new record; from then on only the daemon signs
//! with it (`GcpSubjectToken`).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::json;
use vault_protocol::credential::{
    GCP_STS_TOKEN_URL, GCP_SUBJECT_TOKEN_TYPE, ISSUER, ISSUER_KEY, es256_kid, is_service_account,
    validate_fields,
};
use vault_protocol::message::NewRecord;
use vault_protocol::{CredentialType, Request, Response, SecretValue, validate_name};
use zeroize::Zeroizing;

use super::super::Ctx;
use crate::args::IssuerArgs;
use crate::error::{CliResult, failed, unexpected, usage};

/// IAM Credentials, where `--impersonate` asks for the account's tokens.
const IAM_ENDPOINT: &str = "https://iamcredentials.googleapis.com";

/// `vault gcp issuer NAME --audience AUD …`: a new issuer credential.
pub fn create(ctx: &mut Ctx, s: IssuerArgs) -> CliResult<()> {
    let name = s.name.as_str();
    validate_name(name).map_err(usage)?;
    let issuer = match s.issuer {
        Some(url) => url,
        None => {
            let mut id = [0u8; 6];
            getrandom::fill(&mut id).map_err(|e| failed(format!("no OS randomness: {e}")))?;
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            format!("https://vault.invalid/issuer/{hex}")
        }
    };
    let mut json = json!({
        "type": "external_account",
        "audience": s.audience,
        "subject_token_type": GCP_SUBJECT_TOKEN_TYPE,
        "token_url": s.token_url.as_deref().unwrap_or(GCP_STS_TOKEN_URL),
    });
    if let Some(account) = &s.impersonate {
        if !is_service_account(account) {
            return Err(usage(format!(
                "--impersonate '{}' is not a service account's email",
                account.escape_debug()
            )));
        }
        let base = s.iam_endpoint.as_deref().unwrap_or(IAM_ENDPOINT);
        json["service_account_impersonation_url"] = format!(
            "{}/v1/projects/-/serviceAccounts/{account}:generateAccessToken",
            base.trim_end_matches('/')
        )
        .into();
    } else if s.iam_endpoint.is_some() {
        return Err(usage("--iam-endpoint goes with --impersonate"));
    }
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| failed("could not make a P-256 key"))?;
    let key = Zeroizing::new(STANDARD.encode(pkcs8.as_ref()));
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "json".to_owned(),
        SecretValue::from(json.to_string().as_str()),
    );
    fields.insert(ISSUER.to_owned(), SecretValue::from(issuer.as_str()));
    fields.insert(ISSUER_KEY.to_owned(), SecretValue::from(key.as_str()));
    if let Some(project) = &s.project {
        fields.insert("project".to_owned(), SecretValue::from(project.as_str()));
    }
    validate_fields(CredentialType::Gcp, &fields).map_err(usage)?;
    let build = || Request::Add {
        record: NewRecord {
            name: name.to_owned(),
            kind: CredentialType::Gcp,
            fields: fields
                .iter()
                .map(|(k, v)| (k.clone(), v.duplicate()))
                .collect(),
            description: Some(format!("workload identity issuer {issuer}")),
            tags: Vec::new(),
            expires_at: None,
        },
    };
    match ctx.call_unlocked(&build)? {
        Response::Changed(_) => {}
        _ => return Err(unexpected("add")),
    }
    ctx.out.info(&format!(
        "added {name} (gcp issuer {issuer}). Next: 'vault gcp jwks {name} > jwks.json', create \
         the provider with --issuer-uri={issuer} --jwk-json-path=jwks.json, then 'vault emit \
         gcloud {name} --external-account --adc' (see 'vault gcp issuer --help')"
    ));
    Ok(())
}

/// `vault gcp jwks NAME`: the public key, as the provider takes it.
pub fn jwks(ctx: &mut Ctx, name: &str) -> CliResult<()> {
    let record = super::super::records::fetch(ctx, name)?;
    let key = record.fields.get(ISSUER_KEY).ok_or_else(|| {
        usage(format!(
            "'{name}' is not an issuer credential (no {ISSUER_KEY})"
        ))
    })?;
    let pkcs8 = Zeroizing::new(
        STANDARD
            .decode(key.expose_secret().trim())
            .map_err(|_| failed(format!("the {ISSUER_KEY} of '{name}' is not base64")))?,
    );
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &pkcs8,
        &SystemRandom::new(),
    )
    .map_err(|_| failed(format!("the {ISSUER_KEY} of '{name}' is not a P-256 key")))?;
    let point = pair.public_key().as_ref();
    let (x, y) = (&point[1..33], &point[33..65]);
    let doc = json!({"keys": [{
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(x),
        "y": URL_SAFE_NO_PAD.encode(y),
        "alg": "ES256",
        "use": "sig",
        "kid": es256_kid(point),
    }]});
    ctx.out.line(&doc.to_string());
    Ok(())
}

/// `vault gcp subject-token NAME`: the executable-source answer google-auth
/// and the other client libraries read (version 1).
pub fn subject_token(ctx: &mut Ctx, name: &str) -> CliResult<()> {
    validate_name(name).map_err(usage)?;
    let (token, expires_at) = match ctx.call_unlocked(&|| Request::GcpSubjectToken {
        name: name.to_owned(),
    })? {
        Response::AccessToken { token, expires_at } => (token, expires_at),
        _ => return Err(unexpected("gcp subject-token")),
    };
    let mut answer = crate::secret_json::object(&[
        ("token_type", Some(GCP_SUBJECT_TOKEN_TYPE)),
        ("id_token", Some(token.expose_secret())),
    ]);
    answer.pop();
    answer.push_str(&format!(
        ",\"version\":1,\"success\":true,\"expiration_time\":{}}}",
        expires_at.unix()
    ));
    ctx.out.line(&answer);
    Ok(())
}
