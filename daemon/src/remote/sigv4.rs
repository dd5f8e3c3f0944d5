//! AWS Signature Version 4 for the daemon's STS, IAM and S3 calls
//! (docs/refresh.md, docs/lifecycle.md) and presigned EKS tokens
//! (docs/eks.md).
//! Only what a form POST to STS and a GET to S3 need: the caller gives the
//! canonical query (empty for a POST) and the body; the signed headers are
//! `content-type`, `host`, `x-amz-content-sha256` (S3), `x-amz-date`
//! and, with a session, `x-amz-security-token`. A presigned GET
//! ([`presign`]) signs `host` and the headers the caller names, and puts
//! the rest in the query.
//! Written over `ring` (HMAC-SHA256, SHA-256) rather than pulling in the
//! AWS SDK's signer and its runtime for one request type.

use ring::{digest, hmac};
use vault_protocol::SecretValue;

/// The form content type STS expects.
pub const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// One request to sign.
#[derive(Debug)]
pub struct Request<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// `host[:port]`, exactly as sent in the Host header.
    pub host: &'a str,
    /// The absolute path, already URI-encoded (`/` for STS).
    pub path: &'a str,
    /// The canonical query string (sorted, encoded), empty for none.
    pub query: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// `20150830T123600Z`.
    pub amz_date: &'a str,
    /// Signing region, e.g. `us-east-1`.
    pub region: &'a str,
    /// Signing service, e.g. `sts`.
    pub service: &'a str,
}

/// The long-term or session keys that sign.
pub struct Keys<'a> {
    /// Access key id.
    pub access_key_id: &'a str,
    /// Secret access key.
    pub secret_access_key: &'a SecretValue,
    /// Session token, for temporary keys.
    pub session_token: Option<&'a SecretValue>,
}

impl std::fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

fn hmac(key: &[u8], data: &str) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
}

/// The headers to send besides the body: `(name, value)`, including
/// `Authorization`. `Host` is not among them: the HTTP client sends it,
/// and it must equal `req.host`.
pub fn sign(req: &Request<'_>, keys: &Keys<'_>) -> Vec<(&'static str, String)> {
    let date = &req.amz_date[..8.min(req.amz_date.len())];
    let payload = sha256_hex(req.body);
    // Sorted by name, as the canonical request lists them.
    let mut headers: Vec<(&'static str, String)> = vec![
        ("content-type", FORM.to_owned()),
        ("host", req.host.to_owned()),
    ];
    // S3 wants the payload's hash as a header too.
    if req.service == "s3" {
        headers.push(("x-amz-content-sha256", payload.clone()));
    }
    headers.push(("x-amz-date", req.amz_date.to_owned()));
    if let Some(token) = keys.session_token {
        headers.push(("x-amz-security-token", token.expose_secret().to_owned()));
    }
    let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        req.method, req.path, req.query, payload
    );
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        req.amz_date,
        sha256_hex(canonical.as_bytes())
    );
    let signature = signature(keys, date, req.region, req.service, &to_sign);
    headers.retain(|(k, _)| *k != "host");
    headers.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            keys.access_key_id
        ),
    ));
    headers
}

/// The hex signature of `to_sign` under the key derived from `keys`'
/// secret for `date`, `region` and `service`.
fn signature(keys: &Keys<'_>, date: &str, region: &str, service: &str, to_sign: &str) -> String {
    let secret = zeroize::Zeroizing::new(format!("AWS4{}", keys.secret_access_key.expose_secret()));
    let k_date = hmac(secret.as_bytes(), date);
    let k_region = hmac(k_date.as_ref(), region);
    let k_service = hmac(k_region.as_ref(), service);
    let k_signing = hmac(k_service.as_ref(), "aws4_request");
    hex::encode(hmac(k_signing.as_ref(), to_sign))
}

/// A GET to presign (query-string authentication, as `aws eks get-token`
/// and botocore's `SigV4QueryAuth` make them).
#[derive(Debug)]
pub struct Presign<'a> {
    /// `host[:port]`, as the request will send it.
    pub host: &'a str,
    /// The absolute path, already URI-encoded.
    pub path: &'a str,
    /// The operation's parameters (`Action`, `Version`), unencoded.
    pub params: &'a [(&'a str, &'a str)],
    /// Headers signed besides `host`, names in lower case; the request
    /// must carry them (EKS: `x-k8s-aws-id`).
    pub headers: &'a [(&'a str, &'a str)],
    /// `20150830T123600Z`.
    pub amz_date: &'a str,
    /// `X-Amz-Expires`, in seconds.
    pub expires_secs: u64,
    /// Signing region.
    pub region: &'a str,
    /// Signing service.
    pub service: &'a str,
}

/// The query string of a presigned GET: the operation's parameters, then
/// the `X-Amz-*` ones (a session token among them), `X-Amz-Signature`
/// last; the same bytes botocore makes.
pub fn presign(req: &Presign<'_>, keys: &Keys<'_>) -> String {
    let date = &req.amz_date[..8.min(req.amz_date.len())];
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let mut headers: Vec<(String, String)> = std::iter::once(("host", req.host))
        .chain(req.headers.iter().copied())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let credential = format!("{}/{scope}", keys.access_key_id);
    let expires = req.expires_secs.to_string();
    let mut params: Vec<(&str, &str)> = req.params.to_vec();
    params.extend([
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", credential.as_str()),
        ("X-Amz-Date", req.amz_date),
        ("X-Amz-Expires", expires.as_str()),
        ("X-Amz-SignedHeaders", signed.as_str()),
    ]);
    if let Some(token) = keys.session_token {
        params.push(("X-Amz-Security-Token", token.expose_secret()));
    }
    let encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (form_encode(k), form_encode(v)))
        .collect();
    let mut sorted = encoded.clone();
    sorted.sort();
    let join = |pairs: &[(String, String)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical = format!(
        "GET\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        req.path,
        join(&sorted),
        sha256_hex(b"")
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        req.amz_date,
        sha256_hex(canonical.as_bytes())
    );
    let signature = signature(keys, date, req.region, req.service, &to_sign);
    format!("{}&X-Amz-Signature={signature}", join(&encoded))
}

/// `application/x-www-form-urlencoded` encoding of one value, with the
/// unreserved set SigV4 uses (`A-Z a-z 0-9 - _ . ~`).
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    push_form_encoded(&mut out, value);
    out
}

/// Appends `value` percent-encoded as [`form_encode`] does, in place, so
/// a secret (a refresh token, a client secret) is never copied into a
/// buffer that is not wiped.
pub fn push_form_encoded(out: &mut String, value: &str) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the AWS documentation ("Examples of the
    /// complete Signature Version 4 signing process", IAM ListUsers).
    #[test]
    fn matches_the_aws_documentation_example() {
        let secret = SecretValue::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
        let keys = Keys {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: &secret,
            session_token: None,
        };
        let req = Request {
            method: "GET",
            host: "iam.amazonaws.com",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            body: b"",
            amz_date: "20150830T123600Z",
            region: "us-east-1",
            service: "iam",
        };
        let headers = sign(&req, &keys);
        let auth = &headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert!(headers.iter().all(|(k, _)| *k != "host"));
    }

    /// S3 signs the payload's hash as a header too (the empty body's
    /// SHA-256 for a GET).
    #[test]
    fn s3_signs_the_payload_hash() {
        let secret = SecretValue::from("s");
        let keys = Keys {
            access_key_id: "AKID",
            secret_access_key: &secret,
            session_token: None,
        };
        let req = Request {
            method: "GET",
            host: "b.s3.amazonaws.com",
            path: "/",
            query: "list-type=2&max-keys=1",
            body: b"",
            amz_date: "20150830T123600Z",
            region: "us-east-1",
            service: "s3",
        };
        let headers = sign(&req, &keys);
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(headers.contains(&("x-amz-content-sha256", empty.to_owned())));
        let auth = &headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1;
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date,"));
    }

    #[test]
    fn a_session_token_is_signed_too() {
        let secret = SecretValue::from("s");
        let token = SecretValue::from("tok");
        let keys = Keys {
            access_key_id: "ASIA",
            secret_access_key: &secret,
            session_token: Some(&token),
        };
        let req = Request {
            method: "POST",
            host: "127.0.0.1:5000",
            path: "/",
            query: "",
            body: b"Action=GetCallerIdentity&Version=2011-06-15",
            amz_date: "20261123T120000Z",
            region: "us-east-1",
            service: "sts",
        };
        let headers = sign(&req, &keys);
        let auth = &headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1;
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"));
        assert!(format!("{keys:?}").contains("ASIA") && !format!("{keys:?}").contains("tok"));
    }

    /// The URLs botocore's `SigV4QueryAuth` made for the same request
    /// (long-term keys, then a session), as `aws eks get-token` signs it.
    #[test]
    fn presigns_as_botocore_does() {
        let secret = SecretValue::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
        let token = SecretValue::from("session/token+x=");
        let req = Presign {
            host: "sts.eu-west-1.amazonaws.com",
            path: "/",
            params: &[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")],
            headers: &[("x-k8s-aws-id", "demo-cluster")],
            amz_date: "20261205T013000Z",
            expires_secs: 60,
            region: "eu-west-1",
            service: "sts",
        };
        let head = "Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256\
                    &X-Amz-Credential=AKIDEXAMPLE%2F20261205%2Feu-west-1%2Fsts%2Faws4_request\
                    &X-Amz-Date=20261205T013000Z&X-Amz-Expires=60\
                    &X-Amz-SignedHeaders=host%3Bx-k8s-aws-id";
        let long_term = Keys {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: &secret,
            session_token: None,
        };
        assert_eq!(
            presign(&req, &long_term),
            format!(
                "{head}&X-Amz-Signature=\
                 e608790aa800f82c5378036645a595da2b140a1c2d198c520428bd4559e1ab2e"
            )
        );
        let session = Keys {
            session_token: Some(&token),
            ..long_term
        };
        assert_eq!(
            presign(&req, &session),
            format!(
                "{head}&X-Amz-Security-Token=session%2Ftoken%2Bx%3D&X-Amz-Signature=\
                 b9e979e206fb0c28970c40d6b10d531ac42af7d3c516f48d73cca989acc78eae"
            )
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode("arn:aws:iam::1:role/a b+c"),
            "arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fa%20b%2Bc"
        );
    }
}
