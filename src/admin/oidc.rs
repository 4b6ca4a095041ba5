//! Sign-in with the company's identity provider (`[admin.oidc]`): OpenID Connect's
//! authorization code flow with PKCE, through the `openidconnect` crate over our own
//! reqwest client (rustls, no redirects followed).
//!
//! The provider's discovery document and keys (JWKS) are fetched when the first sign-in
//! needs them and kept for [`METADATA_TTL`], so the daemon starts and delivers whether
//! the provider answers or not. The ID token is checked by `openidconnect`: its
//! signature against the provider's keys, its issuer, that its audience is our client
//! (and no one we do not trust), that it has not expired, and its nonce. The groups are
//! then read from the checked token's claim that `groups_claim` names.
//!
//! Plain logic and HTTP to the provider only: the callback's handler, its cookies and the
//! sessions are `session.rs`'s.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreClient, CoreProviderMetadata, CoreResponseType};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenResponse,
};
use secrecy::ExposeSecret;
use tokio::sync::Mutex;
use url::Url;

use crate::config::identity::{OidcConfig, Role};
use crate::store::sessions::SignInRequest;

/// How long the provider's discovery document and keys are trusted before they are
/// fetched again (a provider rotates keys with notice).
const METADATA_TTL: Duration = Duration::from_secs(10 * 60);
/// A provider that takes longer than this is treated as down.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

type ProviderClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in did not succeed: said to the person (without detail that helps an
/// attacker) and written to the audit trail (with it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignInError {
    #[error("the identity provider could not be reached or answered wrongly: {0}")]
    ProviderUnavailable(String),
    #[error("the identity provider refused the sign-in: {0}")]
    ProviderRefused(String),
    #[error("the ID token was refused: {0}")]
    BadIdToken(String),
    #[error("the identity provider sent no ID token")]
    NoIdToken,
}

/// A person the provider vouched for.
#[derive(Debug, Clone)]
pub(crate) struct SignedIn {
    /// The name the record shows: `preferred_username`, else `email`, else the subject.
    pub actor: String,
    pub subject: String,
    pub groups: Vec<String>,
}

/// The provider and the client registered with it.
pub(crate) struct Oidc {
    pub(crate) config: OidcConfig,
    http: reqwest::Client,
    metadata: Mutex<Option<(CoreProviderMetadata, Instant)>>,
}

impl Oidc {
    pub(crate) fn new(config: OidcConfig) -> Result<Oidc, reqwest::Error> {
        let http = reqwest::Client::builder()
            // A redirect from the provider's endpoints is not followed (no SSRF).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .build()?;
        Ok(Oidc {
            config,
            http,
            metadata: Mutex::new(None),
        })
    }

    /// The highest role the person's groups hold, if any.
    pub(crate) fn role_of(&self, signed_in: &SignedIn) -> Option<Role> {
        self.config
            .role_of(signed_in.groups.iter().map(String::as_str))
    }

    async fn client(&self) -> Result<ProviderClient, SignInError> {
        let metadata = {
            let mut cached = self.metadata.lock().await;
            match &*cached {
                Some((metadata, fetched)) if fetched.elapsed() < METADATA_TTL => metadata.clone(),
                _ => {
                    let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|error| {
                        SignInError::ProviderUnavailable(format!("issuer: {error}"))
                    })?;
                    let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
                        .await
                        .map_err(|error| {
                            SignInError::ProviderUnavailable(format!("discovery: {error}"))
                        })?;
                    *cached = Some((metadata.clone(), Instant::now()));
                    metadata
                }
            }
        };
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose_secret().to_string(),
            )),
        )
        .set_redirect_uri(RedirectUrl::from_url(self.config.redirect_url.clone())))
    }

    /// Where to send the browser, the `state` it will come back with, and what the
    /// callback needs to finish (kept server-side under the state).
    pub(crate) async fn start(&self) -> Result<(Url, String, SignInRequest), SignInError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.config.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .url();
        Ok((
            url,
            state.secret().clone(),
            SignInRequest {
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
            },
        ))
    }

    /// Exchanges the code (with the PKCE verifier) and checks the ID token.
    pub(crate) async fn finish(
        &self,
        code: &str,
        request: SignInRequest,
    ) -> Result<SignedIn, SignInError> {
        let client = self.client().await?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|error| SignInError::ProviderUnavailable(error.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(request.pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|error| match error {
                openidconnect::RequestTokenError::ServerResponse(answer) => {
                    SignInError::ProviderRefused(answer.error().to_string())
                }
                other => SignInError::ProviderUnavailable(format!("token endpoint: {other}")),
            })?;
        let id_token = response.id_token().ok_or(SignInError::NoIdToken)?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(request.nonce))
            .map_err(|error| SignInError::BadIdToken(error.to_string()))?;
        let subject = claims.subject().as_str().to_string();
        let actor = claims
            .preferred_username()
            .map(|name| name.as_str().to_string())
            .or_else(|| claims.email().map(|email| email.as_str().to_string()))
            .unwrap_or_else(|| subject.clone());
        // The token's signature was checked above: its payload is the provider's word.
        let groups = claim_strings(&id_token.to_string(), &self.config.groups_claim);
        Ok(SignedIn {
            actor,
            subject,
            groups,
        })
    }
}

/// The strings of claim `name` in a compact JWT's payload: a list of strings, or one
/// string; nothing if absent or of another kind.
fn claim_strings(jwt: &str, name: &str) -> Vec<String> {
    let payload = jwt
        .split('.')
        .nth(1)
        .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    match payload.as_ref().and_then(|claims| claims.get(name)) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_string))
            .collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "e30.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn groups_are_read_from_a_list_or_a_single_string() {
        let token = jwt(serde_json::json!({"groups": ["ops", 7, "support"], "role": "viewer"}));
        assert_eq!(claim_strings(&token, "groups"), ["ops", "support"]);
        assert_eq!(claim_strings(&token, "role"), ["viewer"]);
        assert!(claim_strings(&token, "missing").is_empty());
        assert!(claim_strings("not-a-jwt", "groups").is_empty());
    }
}
