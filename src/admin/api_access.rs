//! The API's identity part, for operators: the audit trail (`GET /api/audit`) and
//! personal API tokens (`/api/tokens`). Wire types here, the statements in
//! `store::audit` and `store::tokens`; the routes join the API's in `api.rs`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::access::{json_post, Access};
use super::allowed::{Allowed, Operator};
use super::error::{ApiError, DatabaseUnavailable, ErrorBody};
use super::input;
use super::rejection::{ApiJson, ApiPath, ApiQuery};
use super::state::AdminState;
use crate::config::identity::Role;
use crate::store::audit::{self, action, Outcome};
use crate::store::tokens::{self, ApiToken, TokenError};

pub(crate) fn routes(access: &Arc<Access>) -> Router<AdminState> {
    Router::new()
        .route("/audit", get(read_audit))
        .route(
            "/tokens",
            get(list_tokens).merge(json_post(access, create_token)),
        )
        .route(
            "/tokens/{name_or_id}/revoke",
            json_post(access, revoke_token),
        )
}

#[derive(OpenApi)]
#[openapi(
    paths(read_audit, list_tokens, create_token, revoke_token),
    components(schemas(
        AuditPage,
        AuditEntry,
        TokenView,
        NewToken,
        TokenRole,
        CreatedToken,
        ErrorBody
    ))
)]
pub(crate) struct AccessDoc;

const DEFAULT_ENTRIES: i64 = 100;
const MAX_ENTRIES: i64 = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// Who: a provider user name, `token:<name>`, `cli:<user>`, ...
    #[param(pattern = "^[^\\x00]*$")]
    #[serde(default, deserialize_with = "input::text")]
    actor: Option<String>,
    /// sign_in, sign_out, break_glass, api_authenticate, role_check, deliveries_read,
    /// delivery_read, body_read, resend, cancel, bulk_resend, token_create, token_revoke,
    /// tokens_read, audit_read.
    #[param(pattern = "^[^\\x00]*$")]
    #[serde(default, deserialize_with = "input::text")]
    action: Option<String>,
    /// What was touched: a delivery id, a token name.
    #[param(pattern = "^[^\\x00]*$")]
    #[serde(default, deserialize_with = "input::text")]
    target: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// The `next_before` of the previous page.
    before: Option<i64>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// One entry of the audit trail.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditEntry {
    id: i64,
    at: DateTime<Utc>,
    actor: String,
    subject: Option<String>,
    role: Option<String>,
    /// page, api or cli.
    via: String,
    action: String,
    target: Option<String>,
    /// ok, refused or failed.
    outcome: String,
    reason: Option<String>,
    /// The PostgreSQL role that wrote the entry.
    db_role: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AuditPage {
    entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; absent on the last.
    next_before: Option<i64>,
}

/// The audit trail, newest first (operators). Reading it is itself recorded.
#[utoipa::path(
    get,
    path = "/api/audit",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, description = "A parameter cannot be read", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The caller's role is not operator", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn read_audit(
    Allowed(caller, ..): Allowed<Operator>,
    State(state): State<AdminState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_ENTRIES);
    if !(1..=MAX_ENTRIES).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_ENTRIES}"
        )));
    }
    state
        .audit(&caller, action::AUDIT_READ, None, Outcome::Ok, None)
        .await?;
    let filter = audit::Filter {
        actor: query.actor,
        action: query.action,
        target: query.target,
        since: query.since,
        until: query.until,
        before: query.before,
        limit,
    };
    let client = state.client().await?;
    let entries = audit::read(&client, &filter)
        .await
        .map_err(DatabaseUnavailable::logged)?;
    let next_before = entries
        .last()
        .filter(|_| entries.len() as i64 == limit)
        .map(|last| last.id);
    Ok(Json(AuditPage {
        next_before,
        entries: entries
            .into_iter()
            .map(|entry| AuditEntry {
                id: entry.id,
                at: entry.at,
                actor: entry.actor,
                subject: entry.subject,
                role: entry.role,
                via: entry.via,
                action: entry.action,
                target: entry.target,
                outcome: entry.outcome,
                reason: entry.reason,
                db_role: entry.db_role,
            })
            .collect(),
    }))
}

/// A personal API token as listed: never its secret.
#[derive(Serialize, ToSchema)]
pub(crate) struct TokenView {
    id: Uuid,
    name: String,
    /// viewer, support or operator.
    role: String,
    /// live, expired or revoked.
    status: String,
    created_by: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_by: Option<String>,
    last_used_at: Option<DateTime<Utc>>,
}

impl From<ApiToken> for TokenView {
    fn from(token: ApiToken) -> TokenView {
        TokenView {
            status: token.status(Utc::now()).to_string(),
            id: token.id,
            name: token.name,
            role: token.role.as_str().to_string(),
            created_by: token.created_by,
            created_at: token.created_at,
            expires_at: token.expires_at,
            revoked_at: token.revoked_at,
            revoked_by: token.revoked_by,
            last_used_at: token.last_used_at,
        }
    }
}

/// Every personal API token, live, expired or revoked (operators).
#[utoipa::path(
    get,
    path = "/api/tokens",
    responses(
        (status = 200, body = [TokenView]),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The caller's role is not operator", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn list_tokens(
    Allowed(caller, ..): Allowed<Operator>,
    State(state): State<AdminState>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    state
        .audit(&caller, action::TOKENS_READ, None, Outcome::Ok, None)
        .await?;
    let client = state.client().await?;
    let tokens = tokens::list(&client)
        .await
        .map_err(DatabaseUnavailable::logged)?;
    Ok(Json(tokens.into_iter().map(TokenView::from).collect()))
}

/// A token to create. The document's patterns are the server's own checks
/// (`tokens::valid_name`, and [`lifetime`] before `tokens::expires_at`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    /// Unique among live tokens, e.g. the script's name: 1 to 64 characters, no control
    /// character, not only spaces.
    #[schema(
        max_length = 64,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
    #[schema(value_type = TokenRole)]
    role: String,
    /// How long it lives, in days or hours, at most a year (366 days): "90d", "12h".
    #[schema(
        pattern = "^(?:(?:[1-9]|[1-9][0-9]|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d|(?:[1-9]|[1-9][0-9]{1,2}|[1-7][0-9]{3}|8[0-6][0-9]{2}|87[0-7][0-9]|878[0-4])h)$"
    )]
    expires: String,
}

/// The roles a token can carry, as the OpenAPI document lists them (the server reads the
/// text: `Role`'s `FromStr`).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum TokenRole {
    Viewer,
    Support,
    Operator,
}

/// Whether `expires` is a lifetime as the API writes it: a whole number of days (`d`) or
/// hours (`h`), no leading zero; its length is `tokens::expires_at`'s to judge.
fn lifetime(expires: &str) -> bool {
    let number = expires
        .strip_suffix('d')
        .or_else(|| expires.strip_suffix('h'))
        .unwrap_or_default();
    !number.is_empty()
        && !number.starts_with('0')
        && number.bytes().all(|byte| byte.is_ascii_digit())
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedToken {
    /// The token: shown this once, kept by the dispatcher only as its SHA-256.
    token: String,
    #[serde(flatten)]
    about: TokenView,
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Database(error) => DatabaseUnavailable::logged(error).into(),
            TokenError::NameTaken(_) => ApiError::Conflict(error.to_string()),
            TokenError::BadName | TokenError::BadExpiry => ApiError::BadRequest(error.to_string()),
        }
    }
}

/// Creates a personal API token (operators). The answer holds the token, once.
#[utoipa::path(
    post,
    path = "/api/tokens",
    request_body = NewToken,
    responses(
        (status = 200, body = CreatedToken),
        (status = 400, description = "A body that is not JSON, a name, role or lifetime refused", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Sent from another site's page, or the caller's role is not operator", body = ErrorBody),
        (status = 409, description = "A live token has this name", body = ErrorBody),
        (status = 415, description = "Not sent as application/json", body = ErrorBody),
        (status = 422, description = "A field missing, unknown or of the wrong type", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn create_token(
    Allowed(caller, ..): Allowed<Operator>,
    State(state): State<AdminState>,
    ApiJson(new): ApiJson<NewToken>,
) -> Result<Json<CreatedToken>, ApiError> {
    let result = async {
        let role: Role =
            new.role
                .parse()
                .map_err(|error: crate::config::identity::UnknownRole| {
                    ApiError::BadRequest(format!("role: {error}"))
                })?;
        if !lifetime(&new.expires) {
            return Err(TokenError::BadExpiry.into());
        }
        let expires_at = tokens::expires_at(&new.expires)?;
        let client = state.client().await?;
        Ok::<_, ApiError>(
            tokens::create(
                &client,
                &new.name,
                role,
                expires_at,
                &caller.support_actor(),
            )
            .await?,
        )
    }
    .await;
    state
        .audited(&caller, action::TOKEN_CREATE, &new.name, &result)
        .await?;
    let created = result?;
    Ok(Json(CreatedToken {
        token: created.secret,
        about: created.token.into(),
    }))
}

/// Revokes the live token with this name or id (operators).
#[utoipa::path(
    post,
    path = "/api/tokens/{name_or_id}/revoke",
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "Ignored: send `{}`. Only the `Content-Type: application/json` matters (the API's guard against other sites' pages)."
    ),
    params(("name_or_id" = String, Path, description = "The token's name or id")),
    responses(
        (status = 200, body = TokenView),
        (status = 400, description = "The path cannot be read", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Sent from another site's page, or the caller's role is not operator", body = ErrorBody),
        (status = 404, description = "No live token has this name or id", body = ErrorBody),
        (status = 415, description = "Not sent as application/json", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    )
)]
pub(crate) async fn revoke_token(
    Allowed(caller, ..): Allowed<Operator>,
    State(state): State<AdminState>,
    ApiPath(token): ApiPath<String>,
) -> Result<Json<TokenView>, ApiError> {
    let result = async {
        if token.contains('\0') {
            // No name can hold one (PostgreSQL's text cannot): no such token.
            return Err(ApiError::Missing(format!("no live token named {token:?}")));
        }
        let client = state.client().await?;
        tokens::revoke(&client, &token, &caller.support_actor())
            .await
            .map_err(DatabaseUnavailable::logged)?
            .ok_or_else(|| ApiError::Missing(format!("no live token named {token}")))
    }
    .await;
    state
        .audited(&caller, action::TOKEN_REVOKE, &token, &result)
        .await?;
    Ok(Json(result?.into()))
}
