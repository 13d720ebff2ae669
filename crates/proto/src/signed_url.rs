//! Signed download URLs: `?AccessKey=..&Expires=..&Signature=..`, where the
//! signature is base64url(HMAC-SHA256(secretKey, "GET\n{bucket}\n{object}\n{expires}")).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::TokenError;
use crate::query::Pairs;

fn mac(secret: &[u8], bucket: &str, object: &str, expires: i64) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(format!("GET\n{bucket}\n{object}\n{expires}").as_bytes());
    m
}

/// The query string that grants `GET` of `bucket/object` until `expires`.
pub fn sign(access_key: &str, secret: &[u8], bucket: &str, object: &str, expires: i64) -> String {
    let sig = mac(secret, bucket, object, expires).finalize().into_bytes();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
    let ak: String = form_urlencoded::byte_serialize(access_key.as_bytes()).collect();
    format!("AccessKey={ak}&Expires={expires}&Signature={sig}")
}

/// Whether a raw query string carries a signature at all.
pub fn is_signed(raw_query: &str) -> bool {
    Pairs::parse(raw_query).is_ok_and(|q| q.has("Signature"))
}

/// Checks a signed query for `bucket/object` at `now` (constant time).
pub fn verify(
    raw_query: &str,
    bucket: &str,
    object: &str,
    secret_for: impl FnOnce(&str) -> Option<Vec<u8>>,
    now: i64,
) -> Result<(), TokenError> {
    let q = Pairs::parse(raw_query).map_err(|_| TokenError::Shape)?;
    let (Some(ak), Some(exp), Some(sig)) = (q.get("AccessKey"), q.get("Expires"), q.get("Signature")) else {
        return Err(TokenError::Shape);
    };
    let expires: i64 = exp.parse().map_err(|_| TokenError::Shape)?;
    let secret = secret_for(ak).ok_or(TokenError::UnknownAccessKey)?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::SignBase64)?;
    mac(&secret, bucket, object, expires)
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    if now >= expires {
        Err(TokenError::Expired)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_every_refusal() {
        let keys = |ak: &str| (ak == "ak").then(|| b"sk".to_vec());
        let q = sign("ak", b"sk", "doc", "a/b c.mp4", 1000);
        assert!(is_signed(&q));
        assert_eq!(verify(&q, "doc", "a/b c.mp4", keys, 999), Ok(()));
        assert_eq!(
            verify(&q, "doc", "a/b c.mp4", keys, 1000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&q, "doc", "other", keys, 999),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(
                &q.replace("Expires=1000", "Expires=2000"),
                "doc",
                "a/b c.mp4",
                keys,
                999
            ),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(
                &q.replace("AccessKey=ak", "AccessKey=zz"),
                "doc",
                "a/b c.mp4",
                keys,
                999
            ),
            Err(TokenError::UnknownAccessKey)
        );
        assert_eq!(verify("Expires=1", "doc", "x", keys, 0), Err(TokenError::Shape));
        assert!(!is_signed("uploadContext"));
    }
}
