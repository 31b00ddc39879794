//! Webhook signatures in the Standard Webhooks scheme (<https://www.standardwebhooks.com/>), so
//! receivers verify conveyor's calls with the existing libraries (`standardwebhooks` for Python,
//! Node, Go, ...).
//!
//! Each call carries three headers:
//! - `webhook-id`: the job's message id, the same on every attempt (receivers dedupe on it);
//! - `webhook-timestamp`: this attempt's time, in Unix seconds (receivers refuse old ones: the
//!   libraries allow 5 minutes either way);
//! - `webhook-signature`: `v1,<base64 of HMAC-SHA256 over "{id}.{timestamp}.{body}">` for each
//!   of the route's secrets, separated by spaces: during a rotation a route holds the new and the
//!   old secret, and a receiver holding either one accepts.
//!
//! Secrets are written `whsec_<base64 of the key>`, as the libraries take them. A
//! [`SigningSecret`] never prints its key: its `Debug` is `SigningSecret(***)`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a secret in the specification's form.
pub const SECRET_PREFIX: &str = "whsec_";

/// The fewest key bytes accepted (the specification recommends 24 to 64).
pub const MIN_KEY_BYTES: usize = 16;

/// The most key bytes accepted.
pub const MAX_KEY_BYTES: usize = 256;

/// A secret that cannot be used; the message never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Not `whsec_` followed by base64.
    #[error("a signing secret must be `whsec_` followed by base64 (e.g. the output of `echo whsec_$(openssl rand -base64 32)`)")]
    Malformed,
    /// The key is too short or too long.
    #[error("a signing secret's key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes (it has {0}); 32 random bytes are recommended: `echo whsec_$(openssl rand -base64 32)`")]
    Length(usize),
}

/// One HMAC-SHA256 key of a route.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

impl SigningSecret {
    /// Parses `whsec_<base64>` (padding optional, as the libraries accept).
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let b64 = s
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Malformed)?;
        let key = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| SecretError::Malformed)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(SigningSecret { key })
    }

    /// `v1,<base64 signature>` of `id`, `timestamp` (Unix seconds) and `body`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let sig = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(sig)
        )
    }

    /// The secret as written (`whsec_<base64>`), to be cut out of texts that might echo it.
    pub(crate) fn written(&self) -> String {
        format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&self.key)
        )
    }
}

/// The `webhook-signature` value: one `v1,<signature>` per secret, separated by spaces.
pub fn signature_header(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: u64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_example_signs_as_published() {
        // the example of the Standard Webhooks specification and its reference libraries' tests
        let s = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert_eq!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjU"),
            Err(SecretError::Malformed)
        );
        assert_eq!(
            SigningSecret::parse("whsec_!!"),
            Err(SecretError::Malformed)
        );
        assert_eq!(
            SigningSecret::parse("whsec_YWJj"),
            Err(SecretError::Length(3))
        );
        let s = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{s:?}"), "SigningSecret(***)");
        assert_eq!(s.written(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let two = signature_header(&[s.clone(), s], "i", 1, b"x");
        assert_eq!(two.split(' ').count(), 2);
    }
}
