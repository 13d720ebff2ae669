//! App secrets at rest: sealed with XChaCha20-Poly1305 under the node's
//! master key. The CheckSum scheme needs the secret itself, so it cannot
//! be stored hashed; sealed, a copy of the database alone reveals nothing.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Seals and opens small secrets.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub fn new(master_key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(master_key.into()),
        }
    }

    /// A random 24-byte nonce, then the ciphertext and tag.
    pub fn seal(&self, secret: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(XNonce::from_slice(&nonce), secret)
                .expect("encryption cannot fail"),
        );
        out
    }

    /// The secret, or `None` if the data was not sealed with this key.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        self.cipher.decrypt(XNonce::from_slice(nonce), ct).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let s = Sealer::new(&[1; 32]);
        let sealed = s.seal(b"app-secret");
        assert!(!sealed.windows(10).any(|w| w == b"app-secret"), "not in clear");
        assert_eq!(s.open(&sealed).unwrap(), b"app-secret");
        assert_ne!(s.seal(b"app-secret"), sealed, "fresh nonce each time");
        assert!(Sealer::new(&[2; 32]).open(&sealed).is_none());
        assert!(s.open(&sealed[..10]).is_none());
    }
}
