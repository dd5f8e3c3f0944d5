//! The HTTP API under `/api/v1`: routing, authentication (access token →
//! JWT), authorization of every call, validation and size limits. Request and
//! response bodies are the types of `vault_protocol::server_api`.
//!
//! Every handler that touches data authenticates through [`Caller`] and then
//! calls [`Caller::require`] before reading anything, so a caller without the
//! permission learns nothing (not even whether a vault exists). Record bodies
//! and identities pass through as opaque bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, OriginalUri, Path, Query,
    RawQuery, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::DeserializeOwned;
use vault_protocol::SecretValue;
use vault_protocol::server_api::{
    Action, ApiErrorCode, CreatedToken, DEFAULT_PULL_LIMIT, GrantRole, HeadsResponse, JwtResponse,
    LogRecord, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_IDENTITY_BYTES, MAX_PULL_BYTES,
    MAX_PULL_LIMIT, MAX_RECORD_BYTES, NewToken, NewUser, NewVault, Policy, PullRequest,
    PullResponse, PushRequest, PushResponse, Role, RoleList, TokenInfo, TokenList, User, UserList,
    VaultInfo, WhoAmI, validate_id, validate_key_id,
};
use vault_protocol::timefmt::Timestamp;

use crate::crypto::{self, Claims, JwtError, JwtKey, TOKEN_PREFIX};
use crate::error::ApiFailure;
use crate::ratelimit::LoginLimiter;
use crate::store::{NewRecord, Principal, Store, TokenKind, TokenRow, UserRow, VaultRow};

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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            jwt_ttl: Duration::from_secs(10 * 60),
            default_token_ttl: Duration::from_secs(90 * 24 * 3600),
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
        .add("GET", "/api/v1/openapi.json", get(openapi))
        .add("POST", "/api/v1/auth/token", post(exchange_token))
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
}

/// Every (method, path) the router serves, for the OpenAPI test.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    build().table
}

/// The whole API with `state` applied.
pub fn router(state: Shared) -> Router {
    build()
        .router
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
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
        match axum::Json::<T>::from_request(req, state).await {
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
                "JWT expired; exchange your access token for a new one at POST /api/v1/auth/token",
            ),
            _ if jwt.starts_with(TOKEN_PREFIX) => ApiFailure::unauthorized(
                "this is an access token, not a JWT; exchange it at POST /api/v1/auth/token and send the JWT",
            ),
            _ => ApiFailure::unauthorized(
                "invalid JWT; exchange your access token at POST /api/v1/auth/token",
            ),
        })?;
        let principal = st.store.principal(&claims.tid).await?.ok_or_else(|| {
            ApiFailure::unauthorized(
                "the access token behind this JWT was revoked; log in with another token",
            )
        })?;
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

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

// ---------------------------------------------------------------------------
// Handlers: authentication

async fn exchange_token(
    State(st): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<axum::Json<JwtResponse>, ApiFailure> {
    let presented = bearer(&headers)?;
    let prefix = crypto::shown_prefix(presented);
    if let Err(wait) = st.limiter.check(peer.ip(), &prefix) {
        let mut f = ApiFailure::new(
            ApiErrorCode::RateLimited,
            format!(
                "too many failed logins from this address or for this token; retry in {}s",
                wait.as_secs().max(1)
            ),
        );
        f.retry_after = Some(wait.as_secs().max(1));
        return Err(f);
    }
    let token = if presented.starts_with(TOKEN_PREFIX) {
        st.store
            .find_token_by_hash(&crypto::token_hash(presented))
            .await?
    } else {
        // Not an access token: maybe the bootstrap password (slow hash, so
        // off the async runtime).
        let candidates = st.store.password_tokens().await?;
        let presented = zeroize::Zeroizing::new(presented.to_owned());
        tokio::task::spawn_blocking(move || {
            candidates
                .into_iter()
                .find(|t| crypto::password_verify(&presented, &t.hash))
        })
        .await
        .map_err(ApiFailure::internal)?
    };
    let Some(token) = token else {
        st.limiter.record_failure(peer.ip(), &prefix);
        tracing::info!(peer = %peer.ip(), "failed login with an unknown credential");
        return Err(ApiFailure::unauthorized(
            "access token not recognised: it is mistyped or was revoked",
        ));
    };
    let now = now();
    if let Some(exp) = token.expires_at
        && exp <= now
    {
        return Err(ApiFailure::unauthorized(format!(
            "access token '{}' expired at {}; create a new one",
            token.name,
            Timestamp(exp)
        )));
    }
    let ttl = st.config.jwt_ttl.as_secs().max(1) as i64;
    let exp = token
        .expires_at
        .map_or(now + ttl, |e| e.min(now.saturating_add(ttl)));
    let jwt = st
        .jwt
        .sign(&Claims {
            iss: "vault-server".into(),
            sub: token.user.clone(),
            tid: token.id.clone(),
            iat: now,
            exp,
        })
        .map_err(ApiFailure::internal)?;
    Ok(axum::Json(JwtResponse {
        jwt: SecretValue::new(jwt),
        expires_at: Timestamp(exp),
    }))
}

async fn whoami(caller: Caller) -> axum::Json<WhoAmI> {
    let p = caller.0;
    axum::Json(WhoAmI {
        user: p.user,
        token: p.token_name,
        roles: p.roles.into_iter().map(|r| r.name).collect(),
    })
}

// ---------------------------------------------------------------------------
// Handlers: users and roles (user:admin)

fn user_view(u: UserRow) -> User {
    User {
        name: u.name,
        roles: u.roles,
        created_at: Timestamp(u.created_at),
    }
}

async fn list_users(
    State(st): State<Shared>,
    caller: Caller,
) -> Result<axum::Json<UserList>, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    let users = st.store.list_users().await?;
    Ok(axum::Json(UserList {
        users: users.into_iter().map(user_view).collect(),
    }))
}

async fn create_user(
    State(st): State<Shared>,
    caller: Caller,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<(StatusCode, axum::Json<User>), ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    check_id("user name", &req.name)?;
    st.store.create_user(&req.name, &req.roles, now()).await?;
    let user = st.store.get_user(&req.name).await?;
    Ok((StatusCode::CREATED, axum::Json(user_view(user))))
}

async fn delete_user(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    st.store.delete_user(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn grant_role(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<GrantRole>,
) -> Result<axum::Json<User>, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    st.store.grant_role(&name, &req.role).await?;
    Ok(axum::Json(user_view(st.store.get_user(&name).await?)))
}

async fn revoke_role(
    State(st): State<Shared>,
    caller: Caller,
    Path((name, role)): Path<(String, String)>,
) -> Result<StatusCode, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    st.store.revoke_role(&name, &role).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks a role definition: a valid name and at least one policy, each with
/// actions and well-formed resources.
pub fn validate_role(role: &Role) -> Result<(), String> {
    validate_id("role name", &role.name)?;
    if role.policies.is_empty() {
        return Err(format!("role '{}' needs at least one policy", role.name));
    }
    for Policy { actions, resources } in &role.policies {
        if actions.is_empty() || resources.is_empty() {
            return Err(format!(
                "role '{}': every policy needs at least one action and one resource",
                role.name
            ));
        }
        for r in resources {
            let base = r.strip_suffix('*').unwrap_or(r);
            if !(r == "*" || validate_id("resource", base).is_ok()) {
                return Err(format!(
                    "role '{}': resource '{}' must be '*', a vault id, or a vault id prefix ending in '*'",
                    role.name,
                    r.escape_debug()
                ));
            }
        }
    }
    Ok(())
}

async fn list_roles(
    State(st): State<Shared>,
    caller: Caller,
) -> Result<axum::Json<RoleList>, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    Ok(axum::Json(RoleList {
        roles: st.store.list_roles().await?,
    }))
}

async fn create_role(
    State(st): State<Shared>,
    caller: Caller,
    ApiJson(role): ApiJson<Role>,
) -> Result<(StatusCode, axum::Json<Role>), ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    validate_role(&role).map_err(ApiFailure::bad_request)?;
    st.store.create_role(&role, now()).await?;
    Ok((StatusCode::CREATED, axum::Json(role)))
}

async fn delete_role(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    st.store.delete_role(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Handlers: access tokens

/// The API view of a token row.
pub fn token_view(t: TokenRow) -> TokenInfo {
    TokenInfo {
        name: t.name,
        user: t.user,
        description: t.description,
        prefix: t.prefix,
        roles: t.roles,
        created_at: Timestamp(t.created_at),
        expires_at: t.expires_at.map(Timestamp),
    }
}

/// Mints a new access token row for `user`; returns the secret (shown once)
/// and the row to store.
pub fn mint_token(
    user: &str,
    name: &str,
    description: &str,
    roles: Vec<String>,
    expires_at: i64,
    now: i64,
) -> Result<(SecretValue, TokenRow), String> {
    let secret = crypto::new_access_token()?;
    let row = TokenRow {
        id: crypto::random_id()?,
        user: user.to_owned(),
        name: name.to_owned(),
        description: description.to_owned(),
        prefix: crypto::shown_prefix(secret.expose_secret()),
        hash: crypto::token_hash(secret.expose_secret()),
        kind: TokenKind::Token,
        roles,
        created_at: now,
        expires_at: Some(expires_at),
    };
    Ok((secret, row))
}

async fn create_token(
    State(st): State<Shared>,
    caller: Caller,
    ApiJson(req): ApiJson<NewToken>,
) -> Result<(StatusCode, axum::Json<CreatedToken>), ApiFailure> {
    caller.require(Action::TokenCreate, "*")?;
    check_id("token name", &req.name)?;
    let held: Vec<String> = caller.0.roles.iter().map(|r| r.name.clone()).collect();
    let mut roles = req.roles.unwrap_or_else(|| held.clone());
    roles.sort();
    roles.dedup();
    // A token can only narrow what the calling token carries, never widen it.
    if let Some(missing) = roles.iter().find(|r| !held.contains(r)) {
        return Err(ApiFailure::new(
            ApiErrorCode::RoleNotHeld,
            format!(
                "cannot give the new token role '{missing}': the calling token does not carry it (it carries: {})",
                if held.is_empty() {
                    "no roles".to_owned()
                } else {
                    held.join(", ")
                }
            ),
        ));
    }
    let now = now();
    let expires_at = match req.expires_at {
        Some(t) if t.unix() <= now => {
            return Err(ApiFailure::bad_request(format!(
                "expires_at {t} is in the past"
            )));
        }
        Some(t) => t.unix(),
        None => now.saturating_add(st.config.default_token_ttl.as_secs() as i64),
    };
    let (secret, row) = mint_token(
        &caller.0.user,
        &req.name,
        &req.description,
        roles,
        expires_at,
        now,
    )
    .map_err(ApiFailure::internal)?;
    st.store.create_token(&row).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            token: secret,
            info: token_view(row),
        }),
    ))
}

fn token_owner(caller: &Caller, query: UserQuery) -> Result<String, ApiFailure> {
    match query.user {
        Some(user) if user != caller.0.user => {
            caller.require(Action::UserAdmin, "*")?;
            Ok(user)
        }
        _ => Ok(caller.0.user.clone()),
    }
}

async fn list_tokens(
    State(st): State<Shared>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<axum::Json<TokenList>, ApiFailure> {
    let user = token_owner(&caller, user_query(raw)?)?;
    let tokens = st.store.list_tokens(Some(&user)).await?;
    Ok(axum::Json(TokenList {
        tokens: tokens.into_iter().map(token_view).collect(),
    }))
}

async fn delete_token(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<StatusCode, ApiFailure> {
    let user = token_owner(&caller, user_query(raw)?)?;
    st.store.delete_token(&user, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Handlers: vaults and records

fn decode_b64(what: &str, s: &str) -> Result<Vec<u8>, ApiFailure> {
    B64.decode(s)
        .map_err(|_| ApiFailure::bad_request(format!("{what} is not valid base64")))
}

fn vault_view(v: VaultRow) -> VaultInfo {
    VaultInfo {
        id: v.id,
        key_id: v.key_id,
        identity: B64.encode(v.identity),
        created_at: Timestamp(v.created_at),
    }
}

async fn create_vault(
    State(st): State<Shared>,
    caller: Caller,
    ApiJson(req): ApiJson<NewVault>,
) -> Result<(StatusCode, axum::Json<VaultInfo>), ApiFailure> {
    check_id("vault id", &req.id)?;
    caller.require(Action::VaultAdmin, &req.id)?;
    validate_key_id(&req.key_id).map_err(ApiFailure::bad_request)?;
    let identity = decode_b64("identity", &req.identity)?;
    if identity.is_empty() {
        return Err(ApiFailure::bad_request("identity is empty"));
    }
    if identity.len() > MAX_IDENTITY_BYTES {
        return Err(ApiFailure::too_large(format!(
            "identity is {} bytes; the limit is {MAX_IDENTITY_BYTES}",
            identity.len()
        )));
    }
    let row = VaultRow {
        id: req.id,
        key_id: req.key_id,
        identity,
        created_by: caller.0.user.clone(),
        created_at: now(),
    };
    st.store.create_vault(&row).await?;
    Ok((StatusCode::CREATED, axum::Json(vault_view(row))))
}

async fn get_vault(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<VaultInfo>, ApiFailure> {
    caller.require(Action::VaultRead, &id)?;
    Ok(axum::Json(vault_view(st.store.get_vault(&id).await?)))
}

async fn heads(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<HeadsResponse>, ApiFailure> {
    caller.require(Action::VaultRead, &id)?;
    Ok(axum::Json(HeadsResponse {
        heads: st.store.heads(&id).await?,
    }))
}

/// Checks a push batch and decodes it: 1..=MAX records, consecutive indexes
/// from ≥ 1, valid key ids, base64 bodies within the size limits.
pub fn decode_push(req: PushRequest) -> Result<Vec<NewRecord>, ApiFailure> {
    validate_id("device id", &req.device_id).map_err(ApiFailure::bad_request)?;
    if req.records.is_empty() {
        return Err(ApiFailure::bad_request("a push needs at least one record"));
    }
    if req.records.len() > MAX_BATCH_RECORDS {
        return Err(ApiFailure::too_large(format!(
            "a push holds at most {MAX_BATCH_RECORDS} records; this one has {}",
            req.records.len()
        )));
    }
    let first = req.records[0].index;
    if first == 0 {
        return Err(ApiFailure::bad_request("record indexes start at 1"));
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(req.records.len());
    for (i, r) in req.records.into_iter().enumerate() {
        if r.index != first + i as u64 {
            return Err(ApiFailure::bad_request(format!(
                "record indexes in a push must be consecutive: expected {} at position {i}, got {}",
                first + i as u64,
                r.index
            )));
        }
        validate_key_id(&r.key_id).map_err(ApiFailure::bad_request)?;
        let data = decode_b64("record data", &r.data)?;
        if data.len() > MAX_RECORD_BYTES {
            return Err(ApiFailure::too_large(format!(
                "record {} is {} bytes; the limit is {MAX_RECORD_BYTES}",
                r.index,
                data.len()
            )));
        }
        total += data.len();
        if total > MAX_BATCH_BYTES {
            return Err(ApiFailure::too_large(format!(
                "a push holds at most {MAX_BATCH_BYTES} bytes of records; split the batch"
            )));
        }
        out.push(NewRecord {
            index: r.index,
            key_id: r.key_id,
            data,
        });
    }
    Ok(out)
}

async fn push(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PushRequest>,
) -> Result<axum::Json<PushResponse>, ApiFailure> {
    caller.require(Action::VaultWrite, &id)?;
    let device_id = req.device_id.clone();
    let records = decode_push(req)?;
    let head = st.store.push(&id, &device_id, records, now()).await?;
    Ok(axum::Json(PushResponse { device_id, head }))
}

async fn pull(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PullRequest>,
) -> Result<axum::Json<PullResponse>, ApiFailure> {
    caller.require(Action::VaultRead, &id)?;
    let limit = match req.limit {
        Some(0) => return Err(ApiFailure::bad_request("limit must be at least 1")),
        Some(n) => n.min(MAX_PULL_LIMIT),
        None => DEFAULT_PULL_LIMIT,
    };
    let page = st
        .store
        .pull(&id, &req.since, limit as usize, MAX_PULL_BYTES)
        .await?;
    Ok(axum::Json(PullResponse {
        records: page
            .records
            .into_iter()
            .map(|r| LogRecord {
                device_id: r.device_id,
                index: r.index,
                key_id: r.key_id,
                data: B64.encode(r.data),
                received_at: Timestamp(r.received_at),
            })
            .collect(),
        heads: page.heads,
        more: page.more,
    }))
}
