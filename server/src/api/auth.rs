//! Authentication: an access token for a JWT, and `whoami`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use vault_protocol::SecretValue;
use vault_protocol::server_api::{ApiErrorCode, JwtResponse, WhoAmI};
use vault_protocol::timefmt::Timestamp;

use crate::crypto::{self, Claims, TOKEN_PREFIX};
use crate::error::ApiFailure;

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

pub(super) async fn whoami(caller: Caller) -> axum::Json<WhoAmI> {
    let p = caller.0;
    axum::Json(WhoAmI {
        user: p.user,
        token: p.token_name,
        roles: p.roles.into_iter().map(|r| r.name).collect(),
    })
}
