//! Secret material: access-key generation and hashing, provider-key encryption at rest,
//! payment-callback signatures.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;
/// Characters of an access key shown in lists to recognise it ("sk-" + 8).
const ACCESS_KEY_PREFIX_LEN: usize = 11;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the operating system's random source failed")]
    Random,
    #[error("a stored secret could not be decrypted (wrong master key or corrupted row)")]
    Decrypt,
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

/// A random, unguessable order number.
pub fn generate_order_no() -> Result<String, SecretError> {
    let bytes: [u8; 16] = random_bytes()?;
    Ok(format!("ord_{}", hex::encode(bytes)))
}

/// AES-256-GCM under the master key; the stored form is nonce || ciphertext || tag.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl SecretBox {
    pub fn new(master_key: &[u8; 32]) -> SecretBox {
        SecretBox {
            cipher: Aes256Gcm::new(master_key.into()),
        }
    }

    pub fn seal(&self, plaintext: &str) -> Result<Vec<u8>, SecretError> {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes()?;
        let nonce = Nonce::from(nonce_bytes);
        let ciphertext = self
            .cipher
            .encrypt(&nonce, plaintext.as_bytes())
            .map_err(|_| SecretError::Random)?;
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    pub fn open(&self, sealed: &[u8]) -> Result<String, SecretError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretError::Decrypt);
        }
        let (nonce_bytes, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce_bytes: [u8; NONCE_LEN] =
            nonce_bytes.try_into().map_err(|_| SecretError::Decrypt)?;
        let plaintext = self
            .cipher
            .decrypt(&Nonce::from(nonce_bytes), ciphertext)
            .map_err(|_| SecretError::Decrypt)?;
        String::from_utf8(plaintext).map_err(|_| SecretError::Decrypt)
    }
}

/// The last four characters of a provider key, all that is ever shown again.
pub fn key_hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// Checks `v1` = hex(HMAC-SHA256(secret, "{timestamp}.{body}")) in constant time.
pub fn verify_payment_signature(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    signature_hex: &str,
) -> bool {
    let Ok(signature) = hex::decode(signature_hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// The signature a payment provider sends; used by tests and by operators' tooling.
pub fn sign_payment(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
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
    fn sealed_secrets_open_only_with_the_same_key() {
        let sealed = SecretBox::new(&[7u8; 32])
            .seal("sk-upstream-secret")
            .unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            SecretBox::new(&[7u8; 32]).open(&sealed).unwrap(),
            "sk-upstream-secret"
        );
        assert!(SecretBox::new(&[8u8; 32]).open(&sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(SecretBox::new(&[7u8; 32]).open(&tampered).is_err());
    }

    #[test]
    fn payment_signatures_verify_only_unchanged() {
        let sig = sign_payment(b"whsec-0123456789", "1700000000", b"{\"a\":1}");
        assert!(verify_payment_signature(
            b"whsec-0123456789",
            "1700000000",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify_payment_signature(
            b"whsec-0123456789",
            "1700000001",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify_payment_signature(
            b"whsec-0123456789",
            "1700000000",
            b"{\"a\":2}",
            &sig
        ));
        assert!(!verify_payment_signature(
            b"other-secret-xxxx",
            "1700000000",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify_payment_signature(
            b"whsec-0123456789",
            "1700000000",
            b"{\"a\":1}",
            "zz"
        ));
    }

    #[test]
    fn hints_show_only_the_last_four_characters() {
        assert_eq!(key_hint("sk-abcdefgh1234"), "1234");
        assert_eq!(key_hint("ab"), "ab");
    }
}
