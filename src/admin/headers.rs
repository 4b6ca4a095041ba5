//! What every answer of the support page and the API tells the browser: a
//! Content-Security-Policy under which only this answer's own script and style run (a
//! fresh nonce each time; no inline handler, nothing from elsewhere), no framing, no
//! referrer, no guessing of types, and nothing kept in a cache, as the page and the API
//! show partners' answers, which may repeat patient data.

use axum::extract::Request;
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

/// Makes the answer with a fresh nonce and sets the headers on it.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let nonce = STANDARD.encode(rand::random::<[u8; 16]>());
    let mut response = NONCE.scope(nonce.clone(), next.run(request)).await;
    let headers = response.headers_mut();
    // Base64 is a valid header value; the fallback only satisfies the type.
    let policy = HeaderValue::from_str(&policy(&nonce))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
    headers.insert(CONTENT_SECURITY_POLICY, policy);
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn policy(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_answers_own_script_and_style_run_and_nothing_frames_it() {
        let policy = policy("abc");
        assert!(policy.contains("script-src 'nonce-abc';"), "{policy}");
        assert!(policy.contains("style-src 'nonce-abc';"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(nonce(), "", "no nonce outside an answer");
    }
}
