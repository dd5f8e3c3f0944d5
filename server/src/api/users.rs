//! Users and roles (`user:admin`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use vault_protocol::server_api::{
    Action, GrantRole, NewUser, Policy, Role, RoleList, User, UserList, validate_id,
};

use crate::error::ApiFailure;
use crate::store::UserRow;

use super::*;

fn user_view(u: UserRow) -> User {
    u.view()
}

pub(super) async fn list_users(
    State(st): State<Shared>,
    caller: Caller,
) -> Result<axum::Json<UserList>, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    let users = st.store.list_users().await?;
    Ok(axum::Json(UserList {
        users: users.into_iter().map(user_view).collect(),
    }))
}

pub(super) async fn create_user(
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

pub(super) async fn delete_user(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    st.store.delete_user(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn grant_role(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<GrantRole>,
) -> Result<axum::Json<User>, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    st.store.grant_role(&name, &req.role).await?;
    Ok(axum::Json(user_view(st.store.get_user(&name).await?)))
}

pub(super) async fn revoke_role(
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

pub(super) async fn list_roles(
    State(st): State<Shared>,
    caller: Caller,
) -> Result<axum::Json<RoleList>, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    Ok(axum::Json(RoleList {
        roles: st.store.list_roles().await?,
    }))
}

pub(super) async fn create_role(
    State(st): State<Shared>,
    caller: Caller,
    ApiJson(role): ApiJson<Role>,
) -> Result<(StatusCode, axum::Json<Role>), ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    validate_role(&role).map_err(ApiFailure::bad_request)?;
    st.store.create_role(&role, now()).await?;
    Ok((StatusCode::CREATED, axum::Json(role)))
}

pub(super) async fn delete_role(
    State(st): State<Shared>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    caller.require(Action::UserAdmin, "*")?;
    st.store.delete_role(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
