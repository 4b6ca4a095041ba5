//! What every answer of the support page and the API tells the browser: a
//! Content-Security-Policy under which only this answer's own script and style run (a
//! fresh nonce each time; no inline handler, nothing from elsewhere), no framing, no
//! referrer, no guessing of types, and nothing kept in a cache, as the page and the API
//! show partners' answers, which may repeat patient data.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

tokio::task_local! {
    /// The nonce of the answer being made, for the page's `<script>` and `<style>`.
    static NONCE: String;
}

/// The nonce the page's own script and style carry in this answer (empty outside one:
/// then the browser runs neither, which is the safe side).
pub(crate) fn nonce() -> String {
    NONCE.try_with(Clone::clone).unwrap_or_default()
}

/// Where the page's forms may lead besides this server: with sign-in through the identity
/// provider, its origin, as the sign-in form's answer redirects there and a browser holds
/// `form-action` to redirects too.
#[derive(Clone, Default)]
pub(crate) struct FormTargets(Arc<str>);

impl FormTargets {
    /// The origin of the provider's issuer URL (its authorization endpoint is on it), or
    /// none without sign-in.
    pub(crate) fn signing_in_at(issuer: Option<&str>) -> FormTargets {
        let origin = issuer
            .and_then(|issuer| url::Url::parse(issuer).ok())
            .map(|url| url.origin().ascii_serialization())
            .filter(|origin| origin != "null");
        FormTargets(origin.unwrap_or_default().into())
    }
}

/// Makes the answer with a fresh nonce and sets the headers on it.
pub(crate) async fn security_headers(
    State(targets): State<FormTargets>,
    request: Request,
    next: Next,
) -> Response {
    let nonce = STANDARD.encode(rand::random::<[u8; 16]>());
    let mut response = NONCE.scope(nonce.clone(), next.run(request)).await;
    let headers = response.headers_mut();
    // Base64 is a valid header value; the fallback only satisfies the type.
    let policy = HeaderValue::from_str(&policy(&nonce, &targets))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
    headers.insert(CONTENT_SECURITY_POLICY, policy);
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn policy(nonce: &str, targets: &FormTargets) -> String {
    let provider = if targets.0.is_empty() {
        String::new()
    } else {
        format!(" {}", targets.0)
    };
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         img-src 'self'; form-action 'self'{provider}; frame-ancestors 'none'; base-uri 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_answers_own_script_and_style_run_and_nothing_frames_it() {
        let policy = policy("abc", &FormTargets::default());
        assert!(policy.contains("script-src 'nonce-abc';"), "{policy}");
        assert!(policy.contains("style-src 'nonce-abc';"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(nonce(), "", "no nonce outside an answer");
        assert!(policy.contains("form-action 'self';"), "{policy}");
    }

    #[test]
    fn with_sign_in_the_forms_may_lead_to_the_identity_provider_and_nowhere_else() {
        let targets = FormTargets::signing_in_at(Some("https://id.example.com:8443/realms/staff"));
        let policy = policy("abc", &targets);
        assert!(
            policy.contains("form-action 'self' https://id.example.com:8443;"),
            "{policy}"
        );
    }
}
