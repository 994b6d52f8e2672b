//! Provider keys at rest: AES-256-GCM under the master key from the environment.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the operating system's random source failed")]
    Random,
    #[error("a stored secret could not be decrypted (wrong master key or corrupted row)")]
    Decrypt,
}

/// Seals and opens secrets; the stored form is nonce || ciphertext || tag.
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
        let mut nonce_bytes = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce_bytes).map_err(|_| SecretError::Random)?;
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce_bytes), plaintext.as_bytes())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        assert!(SecretBox::new(&[7u8; 32]).open(&sealed[..5]).is_err());
    }

    #[test]
    fn two_seals_of_one_secret_differ() {
        let b = SecretBox::new(&[1u8; 32]);
        assert_ne!(b.seal("same").unwrap(), b.seal("same").unwrap());
    }

    #[test]
    fn hints_show_only_the_last_four_characters() {
        assert_eq!(key_hint("sk-abcdefgh1234"), "1234");
        assert_eq!(key_hint("ab"), "ab");
    }
}
