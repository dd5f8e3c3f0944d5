//! `vault-server user|role|token …`: administration straight on the
//! database, for bootstrapping and recovery (no server needs to run). The
//! rules are the API's: the same validation, and a token's roles must be
//! held by its owner.

use std::time::Duration;

use clap::Subcommand;
use vault_protocol::server_api::{
    Action, CreatedToken, Policy, Role, RoleList, TokenList, UserList, validate_id,
};
use vault_protocol::timefmt::{Timestamp, parse_duration};

use crate::api::{mint_token, token_view, validate_role};
use crate::error::StoreError;
use crate::store::Store;

/// Default lifetime of a token made by `token add` without an expiry.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// `vault-server user …`.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user.
    Add {
        /// User name.
        name: String,
        /// Role to grant (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// List users and their roles.
    List,
    /// Delete a user and all of their tokens.
    Rm {
        /// User name.
        name: String,
    },
    /// Grant a role to a user.
    Grant {
        /// User name.
        name: String,
        /// Role name.
        role: String,
    },
    /// Take a role from a user and from all of the user's tokens.
    Revoke {
        /// User name.
        name: String,
        /// Role name.
        role: String,
    },
    /// Move a user to another identity-provider account (a new account of
    /// the same person): its next sign-in through the IdP is as this user.
    Bind {
        /// User name.
        name: String,
        /// The account, as the refused sign-in names it: 'ISSUER SUB'.
        subject: String,
    },
    /// Release a user from its identity-provider account: the next
    /// sign-in under its name binds it again (if it has no access tokens).
    Unbind {
        /// User name.
        name: String,
    },
}

/// `vault-server role …`.
#[derive(Debug, Subcommand)]
pub enum RoleCmd {
    /// Create a role from policies.
    Add {
        /// Role name.
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// A policy: ACTIONS=RESOURCES, each comma-separated, e.g.
        /// 'vault:read,vault:write=team-*' (repeatable). Actions: vault:read,
        /// vault:write, vault:admin, token:create, user:admin.
        #[arg(long = "policy", required = true)]
        policies: Vec<String>,
    },
    /// List roles and their policies.
    List,
    /// Delete a role; users and tokens lose it.
    Rm {
        /// Role name.
        name: String,
    },
}

/// `vault-server token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create an access token; it is printed once, on stdout.
    Add {
        /// Owner.
        #[arg(long)]
        user: String,
        /// Token name (unique per user).
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Expiry, RFC 3339 (default: 90 days from now).
        #[arg(long, conflicts_with = "ttl")]
        expires_at: Option<String>,
        /// Expiry as a duration from now, e.g. 30d.
        #[arg(long)]
        ttl: Option<String>,
        /// Role the token carries (repeatable; default: all of the owner's roles).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke (delete) a token.
    Rm {
        /// Owner.
        #[arg(long)]
        user: String,
        /// Token name.
        name: String,
    },
}

/// A failed admin command: message and exit code (docs/user-guide.md).
#[derive(Debug)]
pub struct AdminError {
    /// What went wrong and what to do.
    pub message: String,
    /// Process exit code.
    pub exit_code: i32,
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        let exit_code = match e {
            StoreError::NotFound(_) => 4,
            StoreError::AlreadyExists(_) | StoreError::IndexConflict { .. } => 5,
            StoreError::Invalid(_) => 2,
            _ => 1,
        };
        AdminError {
            message: e.to_string(),
            exit_code,
        }
    }
}

fn usage(message: impl Into<String>) -> AdminError {
    AdminError {
        message: message.into(),
        exit_code: 2,
    }
}

/// `subject` as `ISSUER SUB`, else a usage error showing the shape.
fn check_subject(subject: &str) -> Result<(), String> {
    crate::oidc::check_account(subject).map_err(|why| {
        format!(
            "the account {subject:?} must be 'ISSUER SUB', as the refused sign-in names it (e.g. \
             'https://idp.example.com 248289761001'): {why}"
        )
    })
}

/// Parses `ACTIONS=RESOURCES`.
pub fn parse_policy(s: &str) -> Result<Policy, String> {
    let (actions, resources) = s.split_once('=').ok_or_else(|| {
        format!("policy '{s}' must be ACTIONS=RESOURCES, e.g. 'vault:read,vault:write=*'")
    })?;
    let actions = actions
        .split(',')
        .map(|a| Action::parse(a.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let resources = resources
        .split(',')
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    Ok(Policy { actions, resources })
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), AdminError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| AdminError {
        message: format!("cannot encode JSON: {e}"),
        exit_code: 1,
    })?;
    println!("{s}");
    Ok(())
}

fn ts(t: Option<i64>) -> String {
    t.map_or_else(|| "never".to_owned(), |t| Timestamp(t).to_string())
}

/// Runs `vault-server user …`.
pub async fn user(store: &dyn Store, cmd: UserCmd, json: bool) -> Result<(), AdminError> {
    let now = Timestamp::now().unix();
    match cmd {
        UserCmd::Add { name, roles } => {
            validate_id("user name", &name).map_err(usage)?;
            store.create_user(&name, &roles, now).await?;
            eprintln!("created user '{name}'");
        }
        UserCmd::List => {
            let users = store.list_users().await?;
            if json {
                return print_json(&UserList {
                    users: users.into_iter().map(crate::store::UserRow::view).collect(),
                });
            }
            println!(
                "{:<24} {:<8} {:<21} {:<21} ROLES",
                "NAME", "SIGN-IN", "LAST LOGIN", "CREATED"
            );
            for u in users {
                let u = u.view();
                let mut roles = u.roles.join(",");
                for r in &u.sso_roles {
                    if !roles.is_empty() {
                        roles.push(',');
                    }
                    roles.push_str(r);
                    roles.push_str("(sso)");
                }
                let last = u
                    .last_login
                    .as_ref()
                    .map_or("never".to_owned(), |l| format!("{} {}", l.at, l.via));
                println!(
                    "{:<24} {:<8} {:<21} {:<21} {}",
                    u.name,
                    if u.sso { "sso" } else { "token" },
                    last,
                    u.created_at,
                    roles
                );
            }
        }
        UserCmd::Rm { name } => {
            store.delete_user(&name).await?;
            eprintln!("deleted user '{name}' and their tokens");
        }
        UserCmd::Grant { name, role } => {
            store.grant_role(&name, &role).await?;
            eprintln!("granted role '{role}' to '{name}'");
        }
        UserCmd::Revoke { name, role } => {
            store.revoke_role(&name, &role).await?;
            eprintln!("took role '{role}' from '{name}' and their tokens");
        }
        UserCmd::Bind { name, subject } => {
            check_subject(&subject).map_err(usage)?;
            store.bind_sso(&name, Some(&subject)).await?;
            eprintln!(
                "bound '{name}' to the identity-provider account {subject:?}; roles mapped at its \
                 last sign-in are gone until the next"
            );
        }
        UserCmd::Unbind { name } => {
            store.bind_sso(&name, None).await?;
            eprintln!(
                "released '{name}' from its identity-provider account; roles mapped at its last \
                 sign-in are gone"
            );
        }
    }
    Ok(())
}

/// Runs `vault-server role …`.
pub async fn role(store: &dyn Store, cmd: RoleCmd, json: bool) -> Result<(), AdminError> {
    match cmd {
        RoleCmd::Add {
            name,
            description,
            policies,
        } => {
            let policies = policies
                .iter()
                .map(|p| parse_policy(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(usage)?;
            let role = Role {
                name,
                description,
                policies,
            };
            validate_role(&role).map_err(usage)?;
            store.create_role(&role, Timestamp::now().unix()).await?;
            eprintln!("created role '{}'", role.name);
        }
        RoleCmd::List => {
            let roles = store.list_roles().await?;
            if json {
                return print_json(&RoleList { roles });
            }
            println!("{:<24} POLICIES", "NAME");
            for r in roles {
                let policies: Vec<String> = r
                    .policies
                    .iter()
                    .map(|p| {
                        let actions: Vec<&str> = p.actions.iter().map(|a| a.as_str()).collect();
                        format!("{}={}", actions.join(","), p.resources.join(","))
                    })
                    .collect();
                println!("{:<24} {}", r.name, policies.join(" "));
            }
        }
        RoleCmd::Rm { name } => {
            store.delete_role(&name).await?;
            eprintln!("deleted role '{name}'");
        }
    }
    Ok(())
}

/// Runs `vault-server token …`.
pub async fn token(store: &dyn Store, cmd: TokenCmd, json: bool) -> Result<(), AdminError> {
    let now = Timestamp::now().unix();
    match cmd {
        TokenCmd::Add {
            user,
            name,
            description,
            expires_at,
            ttl,
            roles,
        } => {
            validate_id("token name", &name).map_err(usage)?;
            let expires_at = match (expires_at, ttl) {
                (Some(t), _) => Timestamp::parse(&t).map_err(usage)?.unix(),
                (None, Some(d)) => {
                    now.saturating_add(parse_duration(&d).map_err(usage)?.as_secs() as i64)
                }
                (None, None) => now.saturating_add(DEFAULT_TOKEN_TTL.as_secs() as i64),
            };
            if expires_at <= now {
                return Err(usage("the expiry is in the past"));
            }
            let mut roles = if roles.is_empty() {
                store.get_user(&user).await?.roles
            } else {
                roles
            };
            roles.sort();
            roles.dedup();
            let (secret, row) = mint_token(&user, &name, &description, roles, expires_at, now)
                .map_err(|m| AdminError {
                    message: m,
                    exit_code: 1,
                })?;
            store.create_token(&row).await?;
            if json {
                return print_json(&CreatedToken {
                    token: secret,
                    info: token_view(row),
                });
            }
            println!("{}", secret.expose_secret());
            eprintln!(
                "created token '{name}' for '{user}' (roles: {}; expires {}); it is shown only this once",
                row.roles.join(","),
                ts(row.expires_at)
            );
        }
        TokenCmd::List { user } => {
            let tokens = store.list_tokens(user.as_deref()).await?;
            if json {
                return print_json(&TokenList {
                    tokens: tokens.into_iter().map(token_view).collect(),
                });
            }
            println!(
                "{:<16} {:<24} {:<13} {:<21} ROLES",
                "USER", "NAME", "PREFIX", "EXPIRES"
            );
            for t in tokens {
                println!(
                    "{:<16} {:<24} {:<13} {:<21} {}",
                    t.user,
                    t.name,
                    t.prefix,
                    ts(t.expires_at),
                    t.roles.join(",")
                );
            }
        }
        TokenCmd::Rm { user, name } => {
            store.delete_token(&user, &name).await?;
            eprintln!("revoked token '{name}' of '{user}'");
        }
    }
    Ok(())
}
