//! The one HMAC signature scheme of the platform, for payment callbacks we receive and job
//! webhooks we send: `v1 = hex(HMAC-SHA256(secret, "{timestamp}.{body}"))`, sent as
//! `X-Signature: t=<unix seconds>,v1=<hex>`; the timestamp inside the MAC stops replays.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    mac(secret, timestamp, body)
        .map_or_else(String::new, |m| hex::encode(m.finalize().into_bytes()))
}

/// Constant-time check of a hex signature.
pub fn verify(secret: &[u8], timestamp: &str, body: &[u8], signature_hex: &str) -> bool {
    let (Ok(signature), Some(mac)) = (hex::decode(signature_hex), mac(secret, timestamp, body))
    else {
        return false;
    };
    mac.verify_slice(&signature).is_ok()
}

/// The `X-Signature` header value for `body` signed now.
pub fn header(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    format!("t={t},v1={}", sign(secret, &t, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_unchanged() {
        let sig = sign(b"whsec-0123456789", "1700000000", b"{\"a\":1}");
        assert_eq!(sig.len(), 64);
        assert!(verify(
            b"whsec-0123456789",
            "1700000000",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify(
            b"whsec-0123456789",
            "1700000001",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify(
            b"whsec-0123456789",
            "1700000000",
            b"{\"a\":2}",
            &sig
        ));
        assert!(!verify(
            b"other-secret-xxxx",
            "1700000000",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify(
            b"whsec-0123456789",
            "1700000000",
            b"{\"a\":1}",
            "zz"
        ));
        assert_eq!(
            header(b"k", 5, b"x"),
            format!("t=5,v1={}", sign(b"k", "5", b"x"))
        );
    }
}
