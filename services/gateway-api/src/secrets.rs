//! Secret material minted by the API: access keys (shown once, stored as a hash), webhook
//! signing secrets (shown once, stored sealed), order numbers, and the payment-callback
//! signature check.

use base64::Engine;
use sha2::{Digest, Sha256};

/// Characters of an access key shown in lists to recognise it ("sk-" + 8).
const ACCESS_KEY_PREFIX_LEN: usize = 11;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the operating system's random source failed")]
    Random,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| SecretError::Random)?;
    Ok(bytes)
}

/// A freshly minted access key: the secret (shown once), its display prefix and its hash.
pub struct NewAccessKeySecret {
    pub secret: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

/// `sk-` followed by 256 random bits in URL-safe base64.
pub fn generate_access_key() -> Result<NewAccessKeySecret, SecretError> {
    let bytes: [u8; 32] = random_bytes()?;
    let secret = format!(
        "sk-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    Ok(NewAccessKeySecret {
        prefix: secret[..ACCESS_KEY_PREFIX_LEN].to_owned(),
        hash: hash_access_key(&secret),
        secret,
    })
}

/// What is stored and looked up: SHA-256 of the whole key (the key has 256 bits of entropy,
/// so a fast hash is safe here, unlike for passwords).
pub fn hash_access_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A job-webhook signing secret: `whsec_` followed by 256 random bits in URL-safe base64.
pub fn generate_webhook_secret() -> Result<String, SecretError> {
    let bytes: [u8; 32] = random_bytes()?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A random, unguessable order number.
pub fn generate_order_no() -> Result<String, SecretError> {
    let bytes: [u8; 16] = random_bytes()?;
    Ok(format!("ord_{}", hex::encode(bytes)))
}

/// Checks a payment callback's `v1` signature (the scheme of `domain::signature`).
pub fn verify_payment_signature(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    signature_hex: &str,
) -> bool {
    domain::signature::verify(secret, timestamp, body, signature_hex)
}

/// The signature a payment provider sends; used by tests and by operators' tooling.
pub fn sign_payment(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    domain::signature::sign(secret, timestamp, body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn access_keys_are_unique_prefixed_and_hash_stably() {
        let a = generate_access_key().unwrap();
        let b = generate_access_key().unwrap();
        assert!(a.secret.starts_with("sk-"));
        assert_eq!(a.secret.len(), 3 + 43);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.prefix, a.secret[..11]);
        assert_eq!(a.hash, hash_access_key(&a.secret));
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn webhook_secrets_are_random_and_prefixed() {
        let a = generate_webhook_secret().unwrap();
        assert!(a.starts_with("whsec_") && a.len() == 6 + 43, "{a}");
        assert_ne!(a, generate_webhook_secret().unwrap());
    }

    #[test]
    fn order_numbers_are_random() {
        let a = generate_order_no().unwrap();
        assert!(a.starts_with("ord_") && a.len() == 36);
        assert_ne!(a, generate_order_no().unwrap());
    }
}
