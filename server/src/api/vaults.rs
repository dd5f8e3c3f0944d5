//! Vaults and their logs: create, heads, push, pull; the record log every
//! device syncs, and the audit log segments devices share when they opt in
//! (`/audit/push`, `/audit/pull`: the same rules, their own tables; a
//! device's removal, `DELETE /audit/devices/{device}`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use vault_protocol::server_api::{
    Action, AuditRemoved, DEFAULT_PULL_LIMIT, HeadsResponse, LogRecord, MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS, MAX_IDENTITY_BYTES, MAX_PULL_BYTES, MAX_PULL_LIMIT, MAX_RECORD_BYTES,
    NewVault, PullRequest, PullResponse, PushRequest, PushResponse, VaultInfo, validate_id,
    validate_key_id,
};
use vault_protocol::timefmt::Timestamp;

use crate::error::ApiFailure;
use crate::store::{Log, NewRecord, VaultRow};
use crate::telemetry;

use super::*;

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

pub(super) async fn create_vault(
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

pub(super) async fn get_vault(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<VaultInfo>, ApiFailure> {
    caller.require(Action::VaultRead, &id)?;
    Ok(axum::Json(vault_view(st.store.get_vault(&id).await?)))
}

pub(super) async fn heads(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<HeadsResponse>, ApiFailure> {
    caller.require(Action::VaultRead, &id)?;
    Ok(axum::Json(HeadsResponse {
        heads: st.store.heads(&id, Log::Records).await?,
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

pub(super) async fn push(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PushRequest>,
) -> Result<axum::Json<PushResponse>, ApiFailure> {
    push_to(&st, &caller, &id, Log::Records, req).await
}

pub(super) async fn pull(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PullRequest>,
) -> Result<axum::Json<PullResponse>, ApiFailure> {
    pull_from(&st, &caller, &id, Log::Records, req).await
}

/// Appends sealed audit log segments of one device (`[audit] sync`):
/// `vault:write`, as a record push.
pub(super) async fn audit_push(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PushRequest>,
) -> Result<axum::Json<PushResponse>, ApiFailure> {
    push_to(&st, &caller, &id, Log::Audit, req).await
}

/// Audit log segments past `since`: `vault:read`, as a record pull.
pub(super) async fn audit_pull(
    State(st): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PullRequest>,
) -> Result<axum::Json<PullResponse>, ApiFailure> {
    pull_from(&st, &caller, &id, Log::Audit, req).await
}

async fn push_to(
    st: &Shared,
    caller: &Caller,
    id: &str,
    log: Log,
    req: PushRequest,
) -> Result<axum::Json<PushResponse>, ApiFailure> {
    caller.require(Action::VaultWrite, id)?;
    let device_id = req.device_id.clone();
    let records = decode_push(req)?;
    let count = records.len() as u64;
    let head = st.store.push(id, log, &device_id, records, now()).await?;
    if log == Log::Records {
        metrics::counter!(telemetry::PUSHES).increment(1);
        metrics::counter!(telemetry::PUSHED_RECORDS).increment(count);
    }
    Ok(axum::Json(PushResponse { device_id, head }))
}

async fn pull_from(
    st: &Shared,
    caller: &Caller,
    id: &str,
    log: Log,
    req: PullRequest,
) -> Result<axum::Json<PullResponse>, ApiFailure> {
    caller.require(Action::VaultRead, id)?;
    let limit = match req.limit {
        Some(0) => return Err(ApiFailure::bad_request("limit must be at least 1")),
        Some(n) => n.min(MAX_PULL_LIMIT),
        None => DEFAULT_PULL_LIMIT,
    };
    let page = st
        .store
        .pull(id, log, &req.since, limit as usize, MAX_PULL_BYTES)
        .await?;
    if log == Log::Records {
        metrics::counter!(telemetry::PULLS).increment(1);
        metrics::counter!(telemetry::PULLED_RECORDS).increment(page.records.len() as u64);
    }
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
        pruned: page.pruned,
    }))
}

/// Removes a device's shared audit segments (it stopped sharing, `vault sync
/// unshare-audit`): `vault:write`, as its push. Its numbering stays.
pub(super) async fn audit_remove_device(
    State(st): State<Shared>,
    caller: Caller,
    Path((id, device_id)): Path<(String, String)>,
) -> Result<axum::Json<AuditRemoved>, ApiFailure> {
    caller.require(Action::VaultWrite, &id)?;
    check_id("device id", &device_id)?;
    let (removed, pruned) = st.store.remove_audit_device(&id, &device_id).await?;
    Ok(axum::Json(AuditRemoved {
        device_id,
        removed,
        pruned,
    }))
}
