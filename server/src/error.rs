//! Errors: what the storage layer reports ([`StoreError`]) and what the HTTP
//! layer answers ([`ApiFailure`], always the JSON error body of
//! `vault_protocol::server_api`). Internal details are logged, not sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use vault_protocol::server_api::{Action, ApiError, ApiErrorCode, ErrorBody};

/// A storage failure, typed where the API must tell the cases apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The named thing does not exist (message names it).
    NotFound(String),
    /// The thing to create exists (message names it).
    AlreadyExists(String),
    /// A push does not continue the device's log.
    IndexConflict {
        /// The index the log continues at.
        expected: u64,
    },
    /// A record's key id is not the vault's.
    KeyMismatch {
        /// The vault's key id.
        vault_key_id: String,
    },
    /// The request refers to something invalid, e.g. an unknown role.
    Invalid(String),
    /// The database cannot be reached.
    Unavailable(String),
    /// The database's disk is full: nothing was stored.
    StorageFull(String),
    /// Anything else: a bug, corruption, an unexpected SQL error.
    Internal(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound(m)
            | StoreError::AlreadyExists(m)
            | StoreError::Invalid(m)
            | StoreError::Unavailable(m)
            | StoreError::StorageFull(m)
            | StoreError::Internal(m) => f.write_str(m),
            StoreError::IndexConflict { expected } => {
                write!(
                    f,
                    "push does not continue the log: expected index {expected}"
                )
            }
            StoreError::KeyMismatch { vault_key_id } => {
                write!(f, "record key id differs from the vault's ({vault_key_id})")
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// Result of a storage call.
pub type StoreResult<T> = Result<T, StoreError>;

/// An error answer of the HTTP API.
#[derive(Debug)]
pub struct ApiFailure {
    /// The typed body.
    pub error: ApiError,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiFailure {
    /// An error with a code and a message and no details.
    pub fn new(code: ApiErrorCode, message: impl Into<String>) -> Self {
        ApiFailure {
            error: ApiError {
                code,
                message: message.into(),
                action: None,
                resource: None,
                expected_index: None,
            },
            retry_after: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::BadRequest, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::Unauthorized, message)
    }

    /// 403 naming the missing action and the resource it was checked on.
    pub fn forbidden(action: Action, resource: &str) -> Self {
        let mut f = Self::new(
            ApiErrorCode::Forbidden,
            format!(
                "permission denied: this token's roles do not allow '{action}' on '{resource}'; ask an administrator for a role that does"
            ),
        );
        f.error.action = Some(action);
        f.error.resource = Some(resource.to_owned());
        f
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::NotFound, message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::TooLarge, message)
    }

    /// 500 with a generic message; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        Self::new(
            ApiErrorCode::Internal,
            "internal server error; the server log has the details",
        )
    }

    /// The HTTP status of this answer.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<StoreError> for ApiFailure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiFailure::not_found(m),
            StoreError::AlreadyExists(m) => ApiFailure::new(ApiErrorCode::AlreadyExists, m),
            StoreError::IndexConflict { expected } => {
                let mut f = ApiFailure::new(
                    ApiErrorCode::IndexConflict,
                    format!(
                        "push does not continue this device's log: the next index is {expected}; pull, then push again from there"
                    ),
                );
                f.error.expected_index = Some(expected);
                f
            }
            StoreError::KeyMismatch { vault_key_id } => ApiFailure::new(
                ApiErrorCode::KeyMismatch,
                format!(
                    "record rejected: its key id is not this vault's ({vault_key_id}); this device holds a different vault key — run 'vault init --join' with the vault's identity"
                ),
            ),
            StoreError::Invalid(m) => ApiFailure::bad_request(m),
            StoreError::Unavailable(m) => {
                tracing::error!("storage unavailable: {m}");
                let mut f = ApiFailure::new(
                    ApiErrorCode::Unavailable,
                    "storage is unavailable or busy; try again later",
                );
                f.retry_after = Some(5);
                f
            }
            StoreError::StorageFull(m) => {
                tracing::error!(
                    "the database's disk is full ({m}): free space on its volume; \
                     the failed call stored nothing"
                );
                let mut f = ApiFailure::new(
                    ApiErrorCode::Unavailable,
                    "the server's storage is full, so nothing was stored; try again later \
                     (its operator must free disk space)",
                );
                f.retry_after = Some(60);
                f
            }
            StoreError::Internal(m) => ApiFailure::internal(m),
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after;
        let mut resp = (status, axum::Json(ErrorBody { error: self.error })).into_response();
        if let Some(secs) = retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vault\""),
            );
        }
        resp
    }
}

/// `e` and what caused it, as one line ("error connecting…: Connection refused").
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cur = c.source();
    }
    text
}
