//! The HTTP API under `/api/v1`: routing, authentication (access token →
//! JWT), authorization of every call, validation and size limits. Request and
//! response bodies are the types of `vault_protocol::server_api`.
//!
//! Every handler that touches data authenticates through [`Caller`] and then
//! calls [`Caller::require`] before reading anything, so a caller without the
//! permission learns nothing (not even whether a vault exists). Record bodies
//! and identities pass through as opaque bytes.
//!
//! This file holds the routes, the extractors and the service endpoints;
//! the handlers are in submodules by resource: `auth` (token → JWT,
//! whoami), `users` (users and roles), `tokens`, `vaults` (vaults, push,
//! pull).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, OriginalUri, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use serde::de::DeserializeOwned;
use vault_protocol::server_api::{
    Action, ApiErrorCode, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, validate_id,
};
use vault_protocol::timefmt::Timestamp;

use crate::crypto::{JwtError, JwtKey, TOKEN_PREFIX};
use crate::error::ApiFailure;
use crate::ratelimit::LoginLimiter;
use crate::store::gate::CommitGate;
use crate::store::{Principal, SSO_SESSION, Store};

mod auth;
mod tokens;
mod users;
mod vaults;

use auth::*;
use tokens::*;
pub use tokens::{mint_token, token_view};
pub use users::validate_role;
use users::*;
pub use vaults::decode_push;
use vaults::*;

/// The OpenAPI document served at `/api/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Largest body of any call but push.
pub const MAX_BODY_BYTES: usize = 256 << 10;
/// Largest push body: a full batch in base64 plus JSON framing.
pub const MAX_PUSH_BODY_BYTES: usize =
    MAX_BATCH_BYTES / 3 * 4 + MAX_BATCH_RECORDS * 512 + (64 << 10);

/// Server-wide settings the handlers need.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Lifetime of a JWT (never past its access token's expiry).
    pub jwt_ttl: Duration,
    /// Expiry of a token created without `expires_at`.
    pub default_token_ttl: Duration,
    /// How long a request may take before it is answered 503 (and each
    /// database call's bound, `store::open_with`).
    pub request_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            jwt_ttl: Duration::from_secs(10 * 60),
            default_token_ttl: Duration::from_secs(90 * 24 * 3600),
            request_timeout: crate::store::DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState {
    /// Storage backend.
    pub store: Arc<dyn Store>,
    /// JWT signing key.
    pub jwt: JwtKey,
    /// Failed-login limiter.
    pub limiter: LoginLimiter,
    /// Settings.
    pub config: ApiConfig,
    /// The identity provider this server trusts (`--oidc-issuer`), if any.
    pub oidc: Option<crate::oidc::Oidc>,
}

type Shared = Arc<AppState>;

/// Routes plus the (method, path) table they were registered from; the table
/// is what the OpenAPI test compares against.
struct Routes {
    router: Router<Shared>,
    table: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        route: MethodRouter<Shared>,
    ) -> Self {
        self.router = self.router.route(path, route);
        self.table.push((method, path));
        self
    }
}

fn build() -> Routes {
    let routes = Routes {
        router: Router::new(),
        table: Vec::new(),
    };
    routes
        .add("GET", "/api/v1/health", get(health))
        .add("GET", "/api/v1/ready", get(ready))
        .add("GET", "/api/v1/openapi.json", get(openapi))
        .add("POST", "/api/v1/auth/token", post(exchange_token))
        .add("GET", "/api/v1/auth/oidc", get(oidc_info))
        .add("POST", "/api/v1/auth/oidc", post(exchange_id_token))
        .add("GET", "/api/v1/whoami", get(whoami))
        .add("GET", "/api/v1/users", get(list_users))
        .add("POST", "/api/v1/users", post(create_user))
        .add("DELETE", "/api/v1/users/{name}", delete(delete_user))
        .add("POST", "/api/v1/users/{name}/roles", post(grant_role))
        .add(
            "DELETE",
            "/api/v1/users/{name}/roles/{role}",
            delete(revoke_role),
        )
        .add("GET", "/api/v1/roles", get(list_roles))
        .add("POST", "/api/v1/roles", post(create_role))
        .add("DELETE", "/api/v1/roles/{name}", delete(delete_role))
        .add("GET", "/api/v1/tokens", get(list_tokens))
        .add("POST", "/api/v1/tokens", post(create_token))
        .add("DELETE", "/api/v1/tokens/{name}", delete(delete_token))
        .add("POST", "/api/v1/vaults", post(create_vault))
        .add("GET", "/api/v1/vaults/{id}", get(get_vault))
        .add("GET", "/api/v1/vaults/{id}/heads", get(heads))
        .add(
            "POST",
            "/api/v1/vaults/{id}/push",
            post(push).layer(DefaultBodyLimit::max(MAX_PUSH_BODY_BYTES)),
        )
        .add("POST", "/api/v1/vaults/{id}/pull", post(pull))
        .add(
            "POST",
            "/api/v1/vaults/{id}/audit/push",
            post(audit_push).layer(DefaultBodyLimit::max(MAX_PUSH_BODY_BYTES)),
        )
        .add("POST", "/api/v1/vaults/{id}/audit/pull", post(audit_pull))
        .add(
            "DELETE",
            "/api/v1/vaults/{id}/audit/devices/{device}",
            delete(audit_remove_device),
        )
}

/// Every (method, path) the router serves, for the OpenAPI test.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    build().table
}

/// The whole API with `state` applied.
pub fn router(state: Shared) -> Router {
    let limit = state.config.request_timeout;
    build()
        .router
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                within(limit, req, next)
            },
        ))
        .layer(axum::middleware::from_fn(crate::telemetry::track))
        .with_state(state)
}

/// Shortest time a request body may take to arrive, whatever `limit` is: a
/// full push over a slow link is not the server being busy.
const MIN_UPLOAD_TIME: Duration = Duration::from_secs(120);

/// When a request's body finished arriving. [`ApiJson`] sets it once it has
/// read the body (so after the caller was authenticated: an anonymous body
/// is never read); [`within`] counts the request timeout from then.
#[derive(Debug, Clone, Default)]
pub struct BodyClock(Arc<BodyClockInner>);

#[derive(Debug, Default)]
struct BodyClockInner {
    done: std::sync::Mutex<Option<tokio::time::Instant>>,
    changed: tokio::sync::Notify,
}

impl BodyClock {
    fn at(at: Option<tokio::time::Instant>) -> Self {
        let clock = Self::default();
        if let Ok(mut done) = clock.0.done.lock() {
            *done = at;
        }
        clock
    }

    /// Marks the body as read, now.
    pub fn finish(&self) {
        if let Ok(mut done) = self.0.done.lock() {
            done.get_or_insert_with(tokio::time::Instant::now);
        }
        self.0.changed.notify_one();
    }

    fn done(&self) -> Option<tokio::time::Instant> {
        self.0.done.lock().ok().and_then(|d| *d)
    }
}

/// Bounds one request. Its body (read by [`ApiJson`] after authentication,
/// within the route's size limit) may take `max(limit, MIN_UPLOAD_TIME)` to
/// arrive; from the moment it is in (at once for a request without a body)
/// the handler gets `limit`. A handler still running then is answered 503
/// with `Retry-After` and dropped, unless it has started committing a change
/// ([`CommitGate`]): then its own answer is awaited, so a 503 always means
/// nothing was applied. Every database call is bounded on its own
/// (`store::open_with`; a PostgreSQL COMMIT by the same limit), which bounds
/// that wait too.
async fn within(
    limit: Duration,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    let started = tokio::time::Instant::now();
    let bodiless = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0")
        || (!req.headers().contains_key(header::CONTENT_LENGTH)
            && !req.headers().contains_key(header::TRANSFER_ENCODING));
    let clock = BodyClock::at(bodiless.then_some(started));
    req.extensions_mut().insert(clock.clone());
    let upload = limit.max(MIN_UPLOAD_TIME);
    let gate = CommitGate::new();
    let handler = gate.clone().scope(next.run(req));
    tokio::pin!(handler);
    loop {
        let deadline = clock.done().map_or(started + upload, |done| done + limit);
        tokio::select! {
            resp = &mut handler => return resp,
            () = tokio::time::sleep_until(deadline) => {
                if clock.done().is_none_or(|done| done + limit <= tokio::time::Instant::now()) {
                    break;
                }
            }
            () = clock.0.changed.notified() => {}
        }
    }
    if clock.done().is_none() {
        return ApiFailure::bad_request(format!(
            "the request body did not arrive within {}s; check the connection and try again",
            upload.as_secs()
        ))
        .into_response();
    }
    if !gate.abandon() {
        tracing::info!(request = %what, "over {}s, but its change is committed: answering it", limit.as_secs_f64());
        return handler.await;
    }
    tracing::warn!(request = %what, "request timed out after {}s", limit.as_secs_f64());
    metrics::counter!(crate::telemetry::TIMEOUTS).increment(1);
    let mut f = ApiFailure::new(
        ApiErrorCode::Unavailable,
        format!(
            "the request took longer than {}s; the server is busy: try again",
            limit.as_secs_f64()
        ),
    );
    f.retry_after = Some(5);
    f.into_response()
}

async fn no_route(method: Method, OriginalUri(uri): OriginalUri) -> ApiFailure {
    ApiFailure::not_found(format!(
        "no route for {method} {}; the API is described at /api/v1/openapi.json",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiFailure {
    ApiFailure::new(
        ApiErrorCode::MethodNotAllowed,
        format!(
            "{method} is not allowed on {}; the API is described at /api/v1/openapi.json",
            uri.path()
        ),
    )
}

// ---------------------------------------------------------------------------
// Extractors

/// A JSON body whose rejections are JSON errors too.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let clock = req.extensions().get::<BodyClock>().cloned();
        let parsed = axum::Json::<T>::from_request(req, state).await;
        // Read (or refused): the request timeout counts from here.
        if let Some(clock) = clock {
            clock.finish();
        }
        match parsed {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiFailure {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiFailure::too_large("request body too large for this call")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiFailure::bad_request("expected a JSON body with Content-Type: application/json")
        }
        _ => ApiFailure::bad_request(format!("bad JSON body: {}", rejection.body_text())),
    }
}

/// `?user=NAME` on token calls.
#[derive(Debug, Default)]
struct UserQuery {
    user: Option<String>,
}

fn user_query(raw: Option<String>) -> Result<UserQuery, ApiFailure> {
    let Some(raw) = raw else {
        return Ok(UserQuery::default());
    };
    let Query(map) = Query::<HashMap<String, String>>::try_from_uri(
        &format!("/?{raw}")
            .parse()
            .map_err(|_| ApiFailure::bad_request("bad query string"))?,
    )
    .map_err(|e| ApiFailure::bad_request(format!("bad query string: {e}")))?;
    Ok(UserQuery {
        user: map.get("user").cloned(),
    })
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiFailure> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiFailure::unauthorized(
                "missing 'Authorization: Bearer ...' header; exchange an access token for a JWT at POST /api/v1/auth/token",
            )
        })?
        .to_str()
        .map_err(|_| ApiFailure::unauthorized("malformed Authorization header"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let credential = rest.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(ApiFailure::unauthorized(
            "the Authorization header must be 'Bearer <credential>'",
        ));
    }
    Ok(credential)
}

fn now() -> i64 {
    Timestamp::now().unix()
}

/// The authenticated caller of a call: who the JWT speaks for, as of now.
#[derive(Debug)]
pub struct Caller(pub Principal);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, st: &Shared) -> Result<Self, Self::Rejection> {
        let jwt = bearer(&parts.headers)?;
        let now = now();
        let claims = st.jwt.verify(jwt, now).map_err(|e| match e {
            JwtError::Expired => ApiFailure::unauthorized(
                "JWT expired; exchange your access token (POST /api/v1/auth/token) or ID token (POST /api/v1/auth/oidc) for a new one",
            ),
            _ if jwt.starts_with(TOKEN_PREFIX) => ApiFailure::unauthorized(
                "this is an access token, not a JWT; exchange it at POST /api/v1/auth/token and send the JWT",
            ),
            _ => ApiFailure::unauthorized(
                "invalid JWT; exchange your access token at POST /api/v1/auth/token",
            ),
        })?;
        let principal =
            if claims.tid == SSO_SESSION {
                st.store.user_principal(&claims.sub).await?.ok_or_else(|| {
                    ApiFailure::unauthorized(
                        "the user this JWT was issued to was deleted; ask an admin",
                    )
                })?
            } else {
                // Roles mapped from the IdP are a lease the owner's sign-ins
                // renew; without an IdP trusted they count not at all.
                let mapped_since = st.oidc.as_ref().map_or(i64::MAX, |o| {
                    now.saturating_sub(o.config().role_ttl.as_secs() as i64)
                });
                st.store.principal(&claims.tid, mapped_since).await?.ok_or_else(|| {
                ApiFailure::unauthorized(
                    "the access token behind this JWT was revoked; log in with another token",
                )
            })?
            };
        if principal.user != claims.sub {
            return Err(ApiFailure::unauthorized("invalid JWT subject"));
        }
        if principal.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiFailure::unauthorized(
                "the access token behind this JWT has expired; create a new access token",
            ));
        }
        Ok(Caller(principal))
    }
}

impl Caller {
    /// Ok when one of the caller's effective roles allows `action` on
    /// `resource`; else 403 naming the action.
    pub fn require(&self, action: Action, resource: &str) -> Result<(), ApiFailure> {
        let allowed = self
            .0
            .roles
            .iter()
            .flat_map(|r| &r.policies)
            .any(|p| p.allows(action, resource));
        if allowed {
            Ok(())
        } else {
            Err(ApiFailure::forbidden(action, resource))
        }
    }
}

fn check_id(what: &str, s: &str) -> Result<(), ApiFailure> {
    validate_id(what, s).map_err(ApiFailure::bad_request)
}

// ---------------------------------------------------------------------------
// Handlers: service

async fn health(State(st): State<Shared>) -> Response {
    axum::Json(serde_json::json!({"status": "ok", "backend": st.store.backend()})).into_response()
}

/// How long the readiness check waits for the database.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Readiness: the database answers within [`READY_TIMEOUT`] and its schema
/// is the one this server migrates to. 503 with `Retry-After` otherwise,
/// saying which of the two failed and nothing more (the detail goes to the
/// log): a load balancer or a Kubernetes probe reads it without a token.
async fn ready(State(st): State<Shared>) -> Response {
    let not_ready = |reason: String| {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            axum::Json(serde_json::json!({"status": "not ready", "reason": reason})),
        )
            .into_response()
    };
    match tokio::time::timeout(READY_TIMEOUT, st.store.schema_version()).await {
        Ok(Ok((version, known))) if version == known => {
            axum::Json(serde_json::json!({"status": "ready"})).into_response()
        }
        Ok(Ok((version, known))) => {
            tracing::warn!(version, known, "not ready: database schema version differs");
            not_ready(format!(
                "the database schema is at version {version}, this server needs {known}"
            ))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the database check failed");
            not_ready("the database did not answer the readiness check".to_owned())
        }
        Err(_) => {
            tracing::warn!("not ready: the database did not answer within 2 s");
            not_ready("the database did not answer within 2 s".to_owned())
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}
