//! Authentication: an access token for a JWT, and `whoami`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use vault_protocol::SecretValue;
use vault_protocol::server_api::{ApiErrorCode, JwtResponse, OidcInfo, WhoAmI};
use vault_protocol::timefmt::Timestamp;

use crate::crypto::{self, Claims, TOKEN_PREFIX};
use crate::error::{ApiFailure, StoreError};
use crate::oidc::{Oidc, OidcError};
use crate::store::{SSO_SESSION, SsoSignIn};

use super::*;

pub(super) async fn exchange_token(
    State(st): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<axum::Json<JwtResponse>, ApiFailure> {
    let presented = bearer(&headers)?;
    let prefix = crypto::shown_prefix(presented);
    let at = now();
    if let Err(wait) = st.limiter.check(&*st.store, peer.ip(), &prefix, at).await? {
        let mut f = ApiFailure::new(
            ApiErrorCode::RateLimited,
            format!(
                "too many failed logins from this address or for this token; retry in {}s",
                wait.as_secs().max(1)
            ),
        );
        f.retry_after = Some(wait.as_secs().max(1));
        metrics::counter!(crate::telemetry::RATE_LIMITED_LOGINS).increment(1);
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
        // Counted in a task of its own: outside the request's commit gate
        // (a guess answered 503 still counts, so a busy server is no way
        // around the limit) and finished even if this request is dropped.
        let (shared, ip) = (Arc::clone(&st), peer.ip());
        let counted = tokio::spawn(async move {
            shared
                .limiter
                .record_failure(&*shared.store, ip, &prefix, at)
                .await
        });
        match counted.await {
            Ok(Ok(())) => {}
            // Still a 401; the count is lost, which the log says.
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot count a failed login"),
            Err(e) => tracing::warn!(error = %e, "cannot count a failed login"),
        }
        tracing::info!(peer = %peer.ip(), "failed login with an unknown credential");
        metrics::counter!(crate::telemetry::FAILED_LOGINS).increment(1);
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
    note_login(&st, &token.user, token.kind.as_str(), now).await;
    issue_jwt(&st, &token.user, &token.id, token.expires_at, now)
}

/// Signs this server's JWT for `user` (`tid` names the access token, or
/// [`SSO_SESSION`]), living `--jwt-ttl` and never past `until`.
fn issue_jwt(
    st: &AppState,
    user: &str,
    tid: &str,
    until: Option<i64>,
    now: i64,
) -> Result<axum::Json<JwtResponse>, ApiFailure> {
    let ttl = st.config.jwt_ttl.as_secs().max(1) as i64;
    let exp = until.map_or(now + ttl, |e| e.min(now.saturating_add(ttl)));
    let jwt = st
        .jwt
        .sign(&Claims {
            iss: "vault-server".into(),
            sub: user.to_owned(),
            tid: tid.to_owned(),
            iat: now,
            exp,
        })
        .map_err(ApiFailure::internal)?;
    Ok(axum::Json(JwtResponse {
        jwt: SecretValue::new(jwt),
        expires_at: Timestamp(exp),
    }))
}

/// Notes a login for `vault-server user list`; a failure to note it is
/// logged, never a failed login.
async fn note_login(st: &AppState, user: &str, via: &str, now: i64) {
    if let Err(e) = st.store.note_login(user, via, now).await {
        tracing::warn!(error = %e, user, "cannot note the login");
    }
}

fn oidc_of(st: &AppState) -> Result<&Oidc, ApiFailure> {
    st.oidc.as_ref().ok_or_else(|| {
        ApiFailure::not_found(
            "this server does not accept sign-in through an identity provider; sign in with an access token (an admin enables it with --oidc-issuer)",
        )
    })
}

/// `GET /auth/oidc`: what a device needs to sign in through the identity
/// provider. Public, like discovery itself.
pub(super) async fn oidc_info(
    State(st): State<Shared>,
) -> Result<axum::Json<OidcInfo>, ApiFailure> {
    let c = oidc_of(&st)?.config();
    Ok(axum::Json(OidcInfo {
        issuer: c.issuer.clone(),
        client_id: c.client_ids.first().cloned().unwrap_or_default(),
        scopes: c.scopes.clone(),
    }))
}

/// `POST /auth/oidc`: the identity provider's ID token (as the bearer) for
/// this server's JWT. The user is the one bound to the token's subject (or
/// bound now, or created when `--oidc-create-users`); the roles its claims
/// map to replace those of its last sign-in.
pub(super) async fn exchange_id_token(
    State(st): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<axum::Json<JwtResponse>, ApiFailure> {
    let oidc = oidc_of(&st)?;
    let presented = bearer(&headers)?;
    let now = now();
    let identity = match oidc.verify(presented, now).await {
        Ok(identity) => identity,
        Err(OidcError::Refused(why)) => {
            tracing::info!(peer = %peer.ip(), reason = %why, "refused an ID token");
            metrics::counter!(crate::telemetry::FAILED_LOGINS).increment(1);
            return Err(ApiFailure::unauthorized(format!("ID token refused: {why}")));
        }
        Err(OidcError::KeyNotYetFetched(why)) => {
            tracing::info!(peer = %peer.ip(), reason = %why, "an ID token names a key not fetched yet");
            metrics::counter!(crate::telemetry::FAILED_LOGINS).increment(1);
            let mut f = ApiFailure::new(ApiErrorCode::Unavailable, why);
            f.retry_after = Some(crate::oidc::REFETCH_COOLDOWN.as_secs());
            return Err(f);
        }
        Err(OidcError::IdpUnavailable(why)) => {
            tracing::warn!(reason = %why, "cannot check an ID token");
            let mut f = ApiFailure::new(ApiErrorCode::Unavailable, why);
            f.retry_after = Some(30);
            return Err(f);
        }
    };
    let config = oidc.config();
    let roles = config.mapped_roles(&identity.groups);
    let signed = st
        .store
        .sso_sign_in(&SsoSignIn {
            subject: identity.subject.clone(),
            user: identity.user.clone(),
            roles: roles.clone(),
            create: config.create_users,
            now,
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound(m) | StoreError::Invalid(m) => {
                tracing::info!(user = %identity.user, reason = %m, "refused a sign-in");
                ApiFailure::unauthorized(m)
            }
            other => other.into(),
        })?;
    if signed.created {
        tracing::info!(user = %identity.user, "created a user at its first sign-in");
    }
    if !signed.unknown_roles.is_empty() {
        tracing::warn!(
            user = %identity.user,
            roles = ?signed.unknown_roles,
            "--oidc-role-map names roles this database does not have; create them or fix the mapping"
        );
    }
    if signed.user != identity.user {
        // The IdP renamed the person: the binding, not the claim, decides.
        tracing::info!(user = %signed.user, claimed = %identity.user, "signed in as the user bound to this identity-provider account");
    }
    tracing::info!(user = %signed.user, roles = ?roles, "signed in through the identity provider");
    // Never already expired when issued (a token within the clock skew).
    let until = identity
        .expires_at
        .max(now.saturating_add(crate::oidc::CLOCK_SKEW));
    issue_jwt(&st, &signed.user, SSO_SESSION, Some(until), now)
}

pub(super) async fn whoami(caller: Caller) -> axum::Json<WhoAmI> {
    let p = caller.0;
    axum::Json(WhoAmI {
        user: p.user,
        token: p.token_name,
        roles: p.roles.into_iter().map(|r| r.name).collect(),
    })
}
