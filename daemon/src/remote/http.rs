//! What every worker that talks HTTP shares: one client (sync, publish and
//! STS), the way a failed call is told, and the cache of a JWT exchanged for
//! an access token (sync and publish). docs/architecture.md says why there
//! is one of each.

use std::future::Future;
use std::time::{Duration, Instant};

use vault_protocol::SecretValue;
use vault_protocol::timefmt::Timestamp;

/// Every call's limit, unless the call sets its own.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// A kept-alive connection left idle this long is closed. Below the
/// shortest keep-alive servers commonly keep (uvicorn's 5 s), so a request
/// never goes out on a connection the server is closing: that costs a lost
/// answer, or a timeout.
pub const POOL_IDLE: Duration = Duration::from_secs(4);
/// Most redirects followed, all within the origin the user gave.
const REDIRECTS: usize = 5;
/// A JWT is renewed this share of its life before it runs out...
const RENEW_SHARE: u32 = 5;
/// ...or this long before, whichever is later (the smaller margin).
const RENEW_MARGIN: Duration = Duration::from_secs(60);

/// The daemon's HTTP client: [`TIMEOUT`], redirects only within the origin
/// asked (a remote never chooses where vault goes), and connections kept
/// alive to HTTPS servers only.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Default for Http {
    fn default() -> Self {
        Self::trusting(&[])
    }
}

impl Http {
    /// The client, trusting `roots` besides the built-in roots (`[tls] ca`).
    pub fn trusting(roots: &[reqwest::Certificate]) -> Self {
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .pool_idle_timeout(POOL_IDLE)
            .redirect(reqwest::redirect::Policy::custom(same_origin));
        for root in roots {
            builder = builder.add_root_certificate(root.clone());
        }
        let client = builder
            .build()
            // Fails only when the TLS backend cannot start (rustls with
            // its own roots: no system state), which every test would show.
            // Never a fallback client: it would follow redirects anywhere.
            .unwrap_or_else(|e| panic!("cannot build the HTTP client: {e}"));
        Self { client }
    }
}

impl Http {
    /// A request to `url`. Plain `http://` is only ever loopback
    /// ([`crate::remote::syncer::check_url`]), where a new connection costs
    /// nothing, so each request there asks for its own: no call waits on a
    /// connection the server keeps but has stopped serving, or on a server
    /// that holds back the end of its answer on a kept connection (Nagle's
    /// algorithm with the ACK delayed: 40 ms a call with the OSMO gateway
    /// here). Over HTTPS, where a new connection costs a TCP and a TLS
    /// handshake, connections are kept for [`POOL_IDLE`].
    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, url);
        if url.starts_with("http://") {
            req.header(reqwest::header::CONNECTION, "close")
        } else {
            req
        }
    }

    /// A GET.
    pub fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, url)
    }

    /// A POST.
    pub fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, url)
    }
}

fn same_origin(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let asked = attempt.previous().first().map(|u| u.origin());
    if Some(attempt.url().origin()) != asked {
        let to = attempt.url().origin().ascii_serialization();
        return attempt.error(format!(
            "the server redirected to {to}; vault follows redirects only within the URL it \
             was given: use the URL the server points at"
        ));
    }
    if attempt.previous().len() > REDIRECTS {
        return attempt.error("the server redirected more than 5 times");
    }
    attempt.follow()
}

/// Why [`read_capped`] has no body.
#[derive(Debug)]
pub enum ReadError {
    /// The connection broke off (a transport failure).
    Broken(String),
    /// More than the limit came: a broken or hostile remote.
    TooLong(usize),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Broken(why) => write!(f, "the answer broke off: {why}"),
            ReadError::TooLong(max) => write!(f, "the answer is longer than {max} bytes"),
        }
    }
}

/// Reads an answer's body, refusing one longer than `max` bytes: a
/// remote's answer is hostile input, and memory is not its to take.
pub async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ReadError::Broken(describe(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(ReadError::TooLong(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a call got no answer, without its URL: a publisher's URL names a
/// credential, and the caller says which server it was.
pub fn describe(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    if e.is_timeout() {
        parts.push("timed out".to_owned());
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        parts.push("the request failed".to_owned());
    }
    parts.join(": ")
}

/// What a token exchange gives.
#[derive(Debug)]
pub struct Issued {
    /// The JWT.
    pub jwt: SecretValue,
    /// When it expires (Unix seconds, the server's clock).
    pub expires_at: i64,
}

#[derive(Debug)]
struct Cached {
    /// SHA-256 of the server URL and the access token it was issued for.
    key: [u8; 32],
    jwt: SecretValue,
    renew_at: Instant,
}

/// The JWT for one server: exchanged at most once at a time, renewed before
/// it runs out, or when the server refuses it.
#[derive(Debug, Default)]
pub struct JwtCache {
    /// Held across an exchange: the single flight.
    slot: tokio::sync::Mutex<Option<Cached>>,
}

impl JwtCache {
    /// A JWT for `token` at `url` with time left. `refused` is a JWT the
    /// server has just refused: it is renewed, unless another caller has
    /// renewed it meanwhile. `exchange` runs only when a new one is needed.
    pub async fn get<E, F, Fut>(
        &self,
        url: &str,
        token: &SecretValue,
        refused: Option<&SecretValue>,
        exchange: F,
    ) -> Result<SecretValue, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Issued, E>>,
    {
        self.obtain(url, token, refused, false, exchange).await
    }

    /// A new JWT for `token` at `url`, whatever is cached: checks that the
    /// server takes the token now.
    pub async fn fresh<E, F, Fut>(
        &self,
        url: &str,
        token: &SecretValue,
        exchange: F,
    ) -> Result<SecretValue, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Issued, E>>,
    {
        self.obtain(url, token, None, true, exchange).await
    }

    async fn obtain<E, F, Fut>(
        &self,
        url: &str,
        token: &SecretValue,
        refused: Option<&SecretValue>,
        force: bool,
        exchange: F,
    ) -> Result<SecretValue, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Issued, E>>,
    {
        let key = key(url, token);
        let mut slot = self.slot.lock().await;
        if !force
            && let Some(c) = slot.as_ref()
            && c.key == key
            && c.renew_at > Instant::now()
            && refused.is_none_or(|r| r.expose_secret() != c.jwt.expose_secret())
        {
            return Ok(SecretValue::from(c.jwt.expose_secret()));
        }
        let sent = Instant::now();
        let issued = exchange().await?;
        let jwt = SecretValue::from(issued.jwt.expose_secret());
        *slot = Some(Cached {
            key,
            renew_at: sent + use_for(issued.expires_at, Timestamp::now().unix()),
            jwt: issued.jwt,
        });
        Ok(jwt)
    }

    /// Drops the cached JWT (a new token, or the server removed).
    pub async fn forget(&self) {
        *self.slot.lock().await = None;
    }

    /// Takes the JWT `other` holds (a check made before the server was
    /// kept).
    pub async fn adopt(&self, other: &JwtCache) {
        let taken = other.slot.lock().await.take();
        *self.slot.lock().await = taken;
    }
}

fn key(url: &str, token: &SecretValue) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(url.as_bytes());
    ctx.update(&[0]);
    ctx.update(token.expose_secret().as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// How long a JWT expiring at `expires_at` is used, from when it was asked
/// for (`now`, Unix seconds): its life less a fifth, or less a minute,
/// whichever leaves more; never nothing, so a server whose clock is behind
/// costs an exchange per call, not a loop.
fn use_for(expires_at: i64, now: i64) -> Duration {
    let life = Duration::from_secs(expires_at.saturating_sub(now).max(1) as u64);
    life - (life / RENEW_SHARE).min(RENEW_MARGIN)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn a_jwt_is_renewed_a_fifth_of_its_life_or_a_minute_early() {
        assert_eq!(use_for(1006, 1000), Duration::from_millis(4800));
        assert_eq!(use_for(1300, 1000), Duration::from_secs(240));
        assert_eq!(use_for(1000 + 900, 1000), Duration::from_secs(840));
        // Already expired by the server's clock: used for 0.8 s.
        assert_eq!(use_for(900, 1000), Duration::from_millis(800));
    }

    fn issued(n: u32) -> Result<Issued, String> {
        Ok(Issued {
            jwt: SecretValue::from(format!("jwt-{n}").as_str()),
            expires_at: Timestamp::now().unix() + 600,
        })
    }

    #[tokio::test]
    async fn one_exchange_per_token_and_a_refused_jwt_is_renewed_once() {
        let cache = JwtCache::default();
        let count = AtomicU32::new(0);
        let exchange = || async { issued(count.fetch_add(1, Ordering::SeqCst)) };
        let token = SecretValue::from("tok");
        let first = cache.get("u", &token, None, exchange).await.unwrap();
        let again = cache.get("u", &token, None, exchange).await.unwrap();
        assert_eq!(again.expose_secret(), first.expose_secret());
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Refused: renewed. Refused again with the old one (a caller that
        // raced): the new one stands.
        let renewed = cache
            .get("u", &token, Some(&first), exchange)
            .await
            .unwrap();
        assert_ne!(renewed.expose_secret(), first.expose_secret());
        let raced = cache
            .get("u", &token, Some(&first), exchange)
            .await
            .unwrap();
        assert_eq!(raced.expose_secret(), renewed.expose_secret());
        assert_eq!(count.load(Ordering::SeqCst), 2);
        // Another token, or another server: another exchange.
        let other = SecretValue::from("tok2");
        cache.get("u", &other, None, exchange).await.unwrap();
        cache.get("v", &other, None, exchange).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 4);
        cache.fresh("v", &other, exchange).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 5);
        // A failed exchange keeps nothing and says why.
        cache.forget().await;
        let failed = cache
            .get("v", &other, None, || async {
                Err::<Issued, _>("refused".to_owned())
            })
            .await;
        assert_eq!(failed.unwrap_err(), "refused");
        let probe = JwtCache::default();
        probe.get("w", &token, None, exchange).await.unwrap();
        cache.adopt(&probe).await;
        cache.get("w", &token, None, exchange).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 6);
    }

    #[test]
    fn connections_are_kept_to_https_servers_only() {
        let http = Http::default();
        let close = |url: &str| {
            let req = http.get(url).build().unwrap();
            req.headers()
                .get(reqwest::header::CONNECTION)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(close("http://127.0.0.1:8080/api").as_deref(), Some("close"));
        assert_eq!(close("https://vault.example.com/api"), None);
    }

    #[tokio::test]
    async fn a_redirect_to_another_origin_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for location in [
                format!("http://{addr}/here"),
                "http://127.0.0.2:9/".to_owned(),
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0; 4096];
                let _ = s.read(&mut buf).await.unwrap();
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let err = Http::default()
            .get(&format!("http://{addr}/start"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_redirect(), "{err:?}");
        let text = describe(&err);
        assert!(text.contains("redirected to http://127.0.0.2:9"), "{text}");
        server.await.unwrap();
    }
}
