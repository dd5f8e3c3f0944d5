//! TLS to PostgreSQL, with libpq's `sslmode` meanings, over rustls (ring).
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, and
//! no `sslrootcert`; this module takes both out of the `--database` URL and
//! builds the rustls configuration that gives each mode its libpq meaning:
//!
//! | sslmode | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it | not checked |
//! | `require` | always | not checked; checked as `verify-ca` when `sslrootcert` is given (as libpq) |
//! | `verify-ca` | always | signed by `sslrootcert` |
//! | `verify-full` | always | signed by `sslrootcert` and naming the host |
//!
//! `verify-ca` and `verify-full` need `sslrootcert=PATH` (a PEM file of CA
//! certificates): a server has no `~/.postgresql/root.crt` worth trusting.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;

/// What the URL asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// `sslmode=disable`.
    Disable,
    /// `sslmode=prefer` or none: TLS when offered, unchecked.
    Prefer,
    /// `sslmode=require` without `sslrootcert`: TLS, unchecked.
    Require,
    /// `verify-ca` (or `require` with `sslrootcert`): the chain is checked.
    VerifyCa(PathBuf),
    /// `verify-full`: the chain and the host name are checked.
    VerifyFull(PathBuf),
}

impl PgTls {
    /// The mode tokio-postgres should run with.
    pub fn ssl_mode(&self) -> SslMode {
        match self {
            PgTls::Disable => SslMode::Disable,
            PgTls::Prefer => SslMode::Prefer,
            PgTls::Require | PgTls::VerifyCa(_) | PgTls::VerifyFull(_) => SslMode::Require,
        }
    }

    /// The CA file, when certificates are checked.
    pub fn root_cert(&self) -> Option<&std::path::Path> {
        match self {
            PgTls::VerifyCa(p) | PgTls::VerifyFull(p) => Some(p),
            _ => None,
        }
    }
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query and
/// says what they ask for; the rest of the URL is returned for tokio-postgres.
pub fn split_url(url: &str) -> Result<(String, PgTls), String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = Some(percent_decode(v)?),
            "sslrootcert" => root = Some(PathBuf::from(percent_decode(v)?)),
            _ => kept.push(pair),
        }
    }
    let tls = match (mode.as_deref(), root) {
        (Some("disable"), _) => PgTls::Disable,
        (None | Some("prefer"), _) => PgTls::Prefer,
        (Some("require"), None) => PgTls::Require,
        (Some("require" | "verify-ca"), Some(root)) => PgTls::VerifyCa(root),
        (Some("verify-full"), Some(root)) => PgTls::VerifyFull(root),
        (Some(m @ ("verify-ca" | "verify-full")), None) => {
            return Err(format!(
                "sslmode={m} needs sslrootcert=PATH in the --database URL: the PEM file of the CA \
                 that signed the PostgreSQL server's certificate"
            ));
        }
        (Some("allow"), _) => {
            return Err(
                "sslmode=allow is not supported: use prefer, require, verify-ca or verify-full"
                    .into(),
            );
        }
        (Some(other), _) => {
            return Err(format!(
                "unknown sslmode={other:?}: use disable, prefer, require, verify-ca or verify-full"
            ));
        }
    };
    if tls.root_cert().is_some_and(|p| p.as_os_str() == "system") {
        return Err(
            "sslrootcert=system is not supported: give the path of the CA's PEM file".into(),
        );
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in the --database URL near {:?}", &s[i..]))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the --database URL's sslrootcert is not UTF-8".into())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `tls` (None for `disable`).
pub fn client_config(tls: &PgTls) -> Result<Option<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS to PostgreSQL: {e}"))?;
    let webpki = match tls {
        PgTls::Disable => return Ok(None),
        PgTls::Prefer | PgTls::Require => None,
        PgTls::VerifyCa(path) | PgTls::VerifyFull(path) => Some(
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(load_roots(path)?),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| format!("cannot use sslrootcert={}: {e}", path.display()))?,
        ),
    };
    let verifier = Arc::new(Verifier {
        provider,
        webpki,
        check_name: matches!(tls, PgTls::VerifyFull(_)),
    });
    Ok(Some(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

fn load_roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read sslrootcert={shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("sslrootcert={shown} is not a PEM file of certificates: {e}"))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert={shown} holds no usable CA certificate (expected PEM 'BEGIN CERTIFICATE' blocks)"
        ));
    }
    Ok(roots)
}

/// Says what a TLS failure to PostgreSQL means, if `e` is one.
pub fn explain(e: &tokio_postgres::Error, tls: &PgTls) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // An io::Error hides the error it carries from `source()`.
        let carried = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(why)) =
            carried.or_else(|| err.downcast_ref::<rustls::Error>())
        {
            let ca = tls
                .root_cert()
                .map_or_else(String::new, |p| p.display().to_string());
            return Some(match why {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                    "the PostgreSQL server's certificate is not signed by the CA in sslrootcert={ca} \
                     ({why:?}): check that sslrootcert names the CA that issued the server's certificate"
                ),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "the PostgreSQL server's certificate does not name the host in the --database URL \
                     ({why:?}): connect by a name the certificate holds, or use sslmode=verify-ca"
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    format!("the PostgreSQL server's certificate has expired ({why:?})")
                }
                other => format!("the PostgreSQL server's certificate was refused: {other:?}"),
            });
        }
        cur = err.source();
    }
    None
}

/// Checks the server's certificate as the mode asks. The handshake's
/// signatures are always checked; the certificate not at all without
/// `webpki` (`prefer`, `require`, as libpq), its chain only without
/// `check_name` (`verify-ca`), its chain and name otherwise (`verify-full`).
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_leave_the_url() {
        let (rest, tls) = split_url(
            "postgres://u@h:5/db?options=-csearch_path%3Dx&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u@h:5/db?options=-csearch_path%3Dx");
        assert_eq!(tls, PgTls::VerifyFull("/tmp/ca.pem".into()));
        assert_eq!(split_url("postgres://h/db").unwrap().1, PgTls::Prefer);
        assert_eq!(
            split_url("postgres://h/db?sslmode=require").unwrap(),
            ("postgres://h/db".into(), PgTls::Require)
        );
        assert_eq!(
            split_url("postgres://h/db?sslmode=require&sslrootcert=ca")
                .unwrap()
                .1,
            PgTls::VerifyCa("ca".into()),
            "libpq: require with a root certificate checks the chain"
        );
        assert_eq!(
            split_url("postgres://h/db?sslmode=disable").unwrap().1,
            PgTls::Disable
        );
        for bad in [
            "postgres://h/db?sslmode=verify-full",
            "postgres://h/db?sslmode=verify-ca",
            "postgres://h/db?sslmode=allow",
            "postgres://h/db?sslmode=bogus",
            "postgres://h/db?sslmode=verify-full&sslrootcert=system",
            "postgres://h/db?sslmode=verify-full&sslrootcert=%zz",
        ] {
            let err = split_url(bad).unwrap_err();
            assert!(err.contains("ssl") || err.contains('%'), "{bad}: {err}");
        }
    }
}
