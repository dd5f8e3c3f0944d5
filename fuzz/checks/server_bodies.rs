//! `server_bodies`: the JSON bodies of the remote service's API
//! (`vault_protocol::server_api`), decoded with serde_json as the server
//! (axum's `Json`) and the daemon's sync client do.
//!
//! Checked: no panic; whatever decodes serializes, decodes again to an equal
//! value (or, for the types holding secrets, serializes to the same text);
//! the checks the server runs on the decoded values (ids, key ids, actions,
//! policies, error statuses) do not panic and agree with each other.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use vault_protocol::server_api::{
    Action, ApiErrorCode, CreatedToken, ErrorBody, GrantRole, HeadsResponse, JwtResponse, NewToken,
    NewUser, NewVault, Policy, PullRequest, PullResponse, PushRequest, PushResponse, Role,
    RoleList, TokenList, UserList, VaultInfo, WhoAmI, resource_matches, validate_id,
    validate_key_id,
};

/// The whole check of one input.
pub fn check(data: &[u8]) {
    // Requests the server decodes.
    if let Some(u) = equal_round_trip::<NewUser>(data) {
        ids(&[&u.name]);
        ids(&u.roles.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if let Some(g) = equal_round_trip::<GrantRole>(data) {
        ids(&[&g.role]);
    }
    if let Some(r) = equal_round_trip::<Role>(data) {
        ids(&[&r.name]);
        policies(&r.policies);
    }
    if let Some(t) = equal_round_trip::<NewToken>(data) {
        ids(&[&t.name]);
    }
    if let Some(v) = equal_round_trip::<NewVault>(data) {
        ids(&[&v.id]);
        let _ = validate_key_id(&v.key_id);
    }
    if let Some(p) = equal_round_trip::<PushRequest>(data) {
        ids(&[&p.device_id]);
        for r in &p.records {
            let _ = validate_key_id(&r.key_id);
        }
    }
    if let Some(p) = equal_round_trip::<PullRequest>(data) {
        ids(&p.since.keys().map(String::as_str).collect::<Vec<_>>());
    }

    // Answers the daemon's sync client decodes.
    if let Some(e) = equal_round_trip::<ErrorBody>(data) {
        let status = e.error.code.http_status();
        assert!(
            (400..600).contains(&status),
            "{:?} -> {status}",
            e.error.code
        );
        let server_side = matches!(e.error.code, ApiErrorCode::Internal | ApiErrorCode::Unknown);
        assert_eq!(status == 500, server_side, "{:?} -> {status}", e.error.code);
    }
    if let Some(roles) = equal_round_trip::<RoleList>(data) {
        for r in &roles.roles {
            policies(&r.policies);
        }
    }
    equal_round_trip::<UserList>(data);
    equal_round_trip::<TokenList>(data);
    equal_round_trip::<WhoAmI>(data);
    equal_round_trip::<VaultInfo>(data);
    equal_round_trip::<PushResponse>(data);
    equal_round_trip::<PullResponse>(data);
    equal_round_trip::<HeadsResponse>(data);
    text_round_trip::<CreatedToken>(data);
    text_round_trip::<JwtResponse>(data);
    if let Ok(a) = serde_json::from_slice::<Action>(data) {
        assert_eq!(Action::parse(a.as_str()), Ok(a));
    }
}

/// The server's id checks: no panic, and an accepted id is what the rule
/// says.
fn ids(names: &[&str]) {
    for name in names {
        if validate_id("id", name).is_ok() {
            assert!(
                !name.is_empty() && name.len() <= 64 && name.is_ascii(),
                "{name:?}"
            );
        }
    }
}

/// Every action on a few resources, against each policy.
fn policies(policies: &[Policy]) {
    for p in policies {
        for a in Action::ALL {
            for resource in ["*", "v1", "team-a", ""] {
                let allowed = p.allows(a, resource);
                let by_hand = p.actions.contains(&a)
                    && p.resources.iter().any(|r| resource_matches(r, resource));
                assert_eq!(allowed, by_hand);
            }
        }
        for r in &p.resources {
            assert!(resource_matches(r, r), "{r:?} does not match itself");
        }
    }
}

/// Decodes `T`; when it decodes, it serializes and decodes to an equal value.
fn equal_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    let text = serde_json::to_string(&value).expect("a decoded body serializes");
    match serde_json::from_str::<T>(&text) {
        Ok(again) => assert_eq!(again, value, "a body changed through serialize + decode"),
        Err(e) => panic!("{e}: a serialized body does not decode: {text}"),
    }
    Some(value)
}

/// Decodes `T` (which holds secrets and has no `PartialEq`); when it decodes,
/// serialize, decode, serialize gives the same text.
fn text_round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let text = serde_json::to_string(&value).expect("a decoded body serializes");
    match serde_json::from_str::<T>(&text) {
        Ok(again) => assert_eq!(serde_json::to_string(&again).ok(), Some(text)),
        Err(e) => panic!("{e}: a serialized body does not decode: {text}"),
    }
}
