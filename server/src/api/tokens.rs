//! Access tokens.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use vault_protocol::SecretValue;
use vault_protocol::server_api::{
    Action, ApiErrorCode, CreatedToken, NewToken, TokenInfo, TokenList,
};
use vault_protocol::timefmt::Timestamp;

use crate::crypto;
use crate::error::ApiFailure;
use crate::store::{TokenKind, TokenRow};

use super::*;

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

pub(super) async fn create_token(
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

pub(super) async fn list_tokens(
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

pub(super) async fn delete_token(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<StatusCode, ApiFailure> {
    let user = token_owner(&caller, user_query(raw)?)?;
    st.store.delete_token(&user, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
