//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>), so a partner can
//! check that a request came from HelpAround and was not replayed or altered.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error)]
pub enum SigningSecretError {
    #[error("must start with `whsec_` followed by base64")]
    MissingPrefix,
    #[error("the part after `whsec_` is not valid base64")]
    NotBase64,
    #[error("the key after `whsec_` is empty")]
    Empty,
}

/// A partner's `whsec_…` secret, keyed into HMAC-SHA256 once, when the configuration is
/// read: each signature starts from a copy of the keyed state instead of hashing the key
/// again. Never printed.
#[derive(Clone)]
pub struct SigningSecret(Hmac<Sha256>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

impl SigningSecret {
    pub fn parse(text: &str) -> Result<Self, SigningSecretError> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or(SigningSecretError::MissingPrefix)?;
        let key = SecretSlice::from(
            BASE64
                .decode(encoded)
                .map_err(|_| SigningSecretError::NotBase64)?,
        );
        if key.expose_secret().is_empty() {
            return Err(SigningSecretError::Empty);
        }
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed = Hmac::<Sha256>::new_from_slice(key.expose_secret())
            .expect("HMAC-SHA256 takes keys of any length");
        Ok(SigningSecret(keyed))
    }

    /// The `webhook-signature` header value: `v1,` + base64(HMAC-SHA256(`id.timestamp.body`)).
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut signature = String::with_capacity(SIGNATURE_LEN);
        self.sign_into(&mut signature, webhook_id, &timestamp.to_string(), body);
        signature
    }

    fn sign_into(&self, out: &mut String, webhook_id: &str, timestamp: &str, body: &[u8]) {
        let mut mac = self.0.clone();
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        out.push_str("v1,");
        BASE64.encode_string(mac.finalize().into_bytes(), out);
    }
}

/// `v1,` and the base64 of 32 bytes.
const SIGNATURE_LEN: usize = 3 + 44;

/// The `webhook-signature` header for a partner with several secrets: one signature per
/// secret, space-separated. While a partner rotates its secret both are configured, and
/// a request verifies with either, so neither side has to switch at the same moment.
pub fn signature_header(
    secrets: &[SigningSecret],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let timestamp = timestamp.to_string();
    let mut header = String::with_capacity(secrets.len() * (SIGNATURE_LEN + 1));
    for (n, secret) in secrets.iter().enumerate() {
        if n > 0 {
            header.push(' ');
        }
        secret.sign_into(&mut header, webhook_id, &timestamp, body);
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification.
    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotating_partner_gets_one_signature_per_secret() {
        let old = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let new = SigningSecret::parse("whsec_bmV3LXNlY3JldC1rZXktZm9yLXJvdGF0aW9u").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let header = signature_header(
            &[old.clone(), new.clone()],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        );
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            entries,
            [
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                new.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
                    .as_str()
            ]
        );
        assert_ne!(entries[0], entries[1]);
    }

    #[test]
    fn malformed_secrets_are_refused_without_echoing_them() {
        for bad in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_***", "whsec_"] {
            let error = SigningSecret::parse(bad).unwrap_err().to_string();
            assert!(
                !error.contains("MfKQ9r8G") && !error.contains("***"),
                "{error}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{secret:?}"), "SigningSecret([redacted])");
    }
}
