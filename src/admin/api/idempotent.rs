//! The `Idempotency-Key` header of the API's bulk actions, read at the edge: the key
//! (1 to 255 visible ASCII characters), who gives it, and what the request is, for
//! `store::idempotency` to keep the first answer under.

use axum::extract::FromRequestParts;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::admin::caller::Caller;
use crate::admin::error::ApiError;
use crate::store::idempotency::{Answer, Key};

pub(crate) const HEADER: &str = "Idempotency-Key";
const MAX_LEN: usize = 255;

/// The key a request gives, if any.
pub(crate) struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(IdempotencyKey(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|key| (1..=MAX_LEN).contains(&key.len()))
            .filter(|key| key.bytes().all(|byte| byte.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{HEADER}: 1 to {MAX_LEN} visible ASCII characters, such as a UUID"
                ))
            })?;
        Ok(IdempotencyKey(Some(key.to_string())))
    }
}

/// A key as the store keeps it: per caller, with what was asked.
pub(crate) struct Keyed {
    caller: String,
    key: String,
    fingerprint: String,
}

impl Keyed {
    /// `key` given by `caller` for `request` (the operation and its input as read, the
    /// same text for the same request however its JSON was written).
    pub(crate) fn new(caller: &Caller, key: String, request: &str) -> Keyed {
        let who = caller.subject.as_deref().unwrap_or(&caller.actor);
        let digest = Sha256::digest(request.as_bytes());
        Keyed {
            caller: format!("{}:{who}", caller.via.as_str()),
            key,
            fingerprint: digest.iter().map(|byte| format!("{byte:02x}")).collect(),
        }
    }

    pub(crate) fn as_key(&self) -> Key<'_> {
        Key {
            caller: &self.caller,
            key: &self.key,
            fingerprint: &self.fingerprint,
        }
    }
}

/// The refusal of a key used before for another request.
pub(crate) fn reused() -> ApiError {
    ApiError::Rejected(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "this {HEADER} was used for another request in the last 24 hours; \
             use a new key for a new request"
        ),
    )
}

/// An answer as kept, sent as it was first.
pub(crate) fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    (status, [(CONTENT_TYPE, "application/json")], answer.body).into_response()
}
