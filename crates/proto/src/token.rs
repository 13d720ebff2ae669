//! Upload tokens: `UPLOAD {accessKey}:{encodedSign}:{encodedPolicy}`.
//!
//! `encodedSign` is base64(HMAC-SHA256(secretKey, encodedPolicy)) — the MAC
//! covers the policy's base64 *text* as received, so verification never
//! re-encodes anything. Checking accepts the URL-safe alphabet and missing
//! padding, which some token minters produce.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused (always a 403). Messages never carry secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing x-nos-token header")]
    Missing,
    #[error("token must start with 'UPLOAD '")]
    Prefix,
    #[error("token must be accessKey:encodedSign:encodedPolicy")]
    Shape,
    #[error("unknown access key")]
    UnknownAccessKey,
    #[error("token signature is not valid base64")]
    SignBase64,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token policy is not valid base64")]
    PolicyBase64,
    #[error("token policy is not a valid JSON put policy: {0}")]
    PolicyJson(String),
    #[error("token has expired")]
    Expired,
    #[error("token policy has no Expires")]
    NoExpires,
    #[error("token is for another bucket")]
    BucketMismatch,
    #[error("token is for another object")]
    ObjectMismatch,
    #[error("token CallbackUrl must be an http or https URL")]
    CallbackUrl,
}

/// The JSON put policy inside a token. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutPolicy {
    pub bucket: String,
    pub object: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_size_min: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_size_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_limit: Option<String>,
    /// upline's own: opaque data the token's minter attaches to the upload
    /// session (the app API's upload record). Other servers ignore it.
    #[serde(default, rename = "x:upline", skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl PutPolicy {
    /// Parses a put policy: strict JSON, an object, no key twice. (serde
    /// alone would also take an array of the fields in declaration order,
    /// and skip invalid UTF-8 or a lone surrogate inside an ignored field:
    /// text other JSON parsers refuse or read differently.)
    pub fn from_json(json: &[u8]) -> Result<Self, TokenError> {
        let bad = |e: serde_json::Error| TokenError::PolicyJson(e.to_string());
        if !serde_json::from_slice::<serde_json::Value>(json)
            .map_err(bad)?
            .is_object()
        {
            return Err(TokenError::PolicyJson("the policy must be a JSON object".into()));
        }
        // Parsed again into the struct, which refuses duplicate keys.
        serde_json::from_slice(json).map_err(bad)
    }

    /// Refuses a token whose scope is not this bucket and object.
    pub fn check_scope(&self, bucket: &str, object: &str) -> Result<(), TokenError> {
        if self.bucket != bucket {
            Err(TokenError::BucketMismatch)
        } else if self.object != object {
            Err(TokenError::ObjectMismatch)
        } else {
            Ok(())
        }
    }

    /// Whether `content_type` passes `MimeLimit` (`;`-separated, `image/*`
    /// wildcards needing a subtype, `*` and `*/*` for anything, parameters
    /// such as `; charset=` ignored). No limit: yes.
    pub fn allows_mime(&self, content_type: &str) -> bool {
        let Some(limit) = &self.mime_limit else {
            return true;
        };
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        limit
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .any(|pat| {
                let pat = pat.to_ascii_lowercase();
                if pat == "*" || pat == "*/*" {
                    return true;
                }
                match pat.strip_suffix("/*") {
                    Some(top) => essence
                        .split_once('/')
                        .is_some_and(|(t, sub)| t == top && !sub.is_empty()),
                    None => pat == essence,
                }
            })
    }

    /// Signs this policy into a token with one credential pair.
    pub fn sign(&self, access_key: &str, secret_key: &[u8]) -> String {
        let json = serde_json::to_vec(self).expect("a policy always serializes");
        let encoded = base64::engine::general_purpose::STANDARD.encode(json);
        format!("UPLOAD {access_key}:{}:{encoded}", sign(secret_key, &encoded))
    }
}

/// base64(HMAC-SHA256(secret, encoded_policy)) with the standard alphabet.
pub fn sign(secret_key: &[u8], encoded_policy: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret_key).expect("HMAC takes any key length");
    mac.update(encoded_policy.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A token split into its parts, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    pub access_key: &'a str,
    pub encoded_sign: &'a str,
    pub encoded_policy: &'a str,
}

impl<'a> Token<'a> {
    /// Splits the header value. Says nothing yet about validity.
    pub fn parse(header: &'a str) -> Result<Self, TokenError> {
        let rest = header.trim().strip_prefix("UPLOAD ").ok_or(TokenError::Prefix)?;
        let mut parts = rest.trim_start().splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(s), Some(p)) if !a.is_empty() && !s.is_empty() && !p.is_empty() => Ok(Self {
                access_key: a,
                encoded_sign: s,
                encoded_policy: p,
            }),
            _ => Err(TokenError::Shape),
        }
    }

    /// Checks the signature (constant time) with the secret that `secret_for`
    /// finds for the access key, then the policy and its expiry at `now`
    /// (unix seconds). `require_expires` refuses policies without `Expires`.
    pub fn verify(
        &self,
        secret_for: impl FnOnce(&str) -> Option<Vec<u8>>,
        now: i64,
        require_expires: bool,
    ) -> Result<PutPolicy, TokenError> {
        let secret = secret_for(self.access_key).ok_or(TokenError::UnknownAccessKey)?;
        let claimed = decode_b64(self.encoded_sign).map_err(|_| TokenError::SignBase64)?;
        let mut mac = HmacSha256::new_from_slice(&secret).expect("HMAC takes any key length");
        mac.update(self.encoded_policy.as_bytes());
        mac.verify_slice(&claimed).map_err(|_| TokenError::BadSignature)?;

        let json = decode_b64(self.encoded_policy).map_err(|_| TokenError::PolicyBase64)?;
        let policy = PutPolicy::from_json(&json)?;
        if let Some(url) = &policy.callback_url {
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(TokenError::CallbackUrl);
            }
        }
        match policy.expires {
            Some(exp) if now >= exp => Err(TokenError::Expired),
            None if require_expires => Err(TokenError::NoExpires),
            _ => Ok(policy),
        }
    }
}

/// Decodes base64 in the standard or URL-safe alphabet, padded or not.
pub(crate) fn decode_b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let std: String = s
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    LENIENT.decode(std)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: &str = "eyJCdWNrZXQiOiJkb2MiLCJPYmplY3QiOiJhbm5lLmpwZyIsIkV4cGlyZXMiOjE0NTE0OTEyMDB9";
    const AK: &str = "b6ff5ed65d1041e9a56e2257a2672990";
    const SK: &str = "ae0208eea57c4bc9bc5754368c06a542";
    const TOKEN: &str = "UPLOAD b6ff5ed65d1041e9a56e2257a2672990:+SL08gyotpanS0qQdqugiWVdDSlsfrQr6YXUNw0Nkz4=:eyJCdWNrZXQiOiJkb2MiLCJPYmplY3QiOiJhbm5lLmpwZyIsIkV4cGlyZXMiOjE0NTE0OTEyMDB9";

    fn keys(ak: &str) -> Option<Vec<u8>> {
        (ak == AK).then(|| SK.as_bytes().to_vec())
    }

    #[test]
    fn documented_vectors() {
        assert_eq!(
            sign(b"SecretKey", POLICY),
            "v8Q5BNIJuEoi6zckOzPuC5hADL4t/zNaecakkk8STuE="
        );
        assert_eq!(
            format!("UPLOAD {AK}:{}:{POLICY}", sign(SK.as_bytes(), POLICY)),
            TOKEN
        );
        let p = Token::parse(TOKEN)
            .unwrap()
            .verify(keys, 1_451_491_199, true)
            .unwrap();
        assert_eq!(
            p,
            PutPolicy {
                bucket: "doc".into(),
                object: "anne.jpg".into(),
                expires: Some(1_451_491_200),
                ..Default::default()
            }
        );
    }

    #[test]
    fn expiry_is_refused_at_the_second() {
        let t = Token::parse(TOKEN).unwrap();
        assert_eq!(t.verify(keys, 1_451_491_200, true), Err(TokenError::Expired));
    }

    #[test]
    fn every_failure_has_its_error() {
        use TokenError::*;
        let now = 1_451_491_000;
        let check = |s: &str| Token::parse(s).and_then(|t| t.verify(keys, now, true));
        assert_eq!(check("UPLOAD"), Err(Prefix));
        assert_eq!(check("Bearer x:y:z"), Err(Prefix));
        assert_eq!(check("UPLOAD a:b"), Err(Shape));
        assert_eq!(check("UPLOAD ::"), Err(Shape));
        assert_eq!(check(&TOKEN.replace(AK, "other")), Err(UnknownAccessKey));
        assert_eq!(check(&TOKEN.replace("+SL08", "!SL08")), Err(SignBase64));
        assert_eq!(check(&TOKEN.replace("+SL08", "+SL09")), Err(BadSignature));
        let bad_b64 = format!("UPLOAD {AK}:{}:a!b", sign(SK.as_bytes(), "a!b"));
        assert_eq!(check(&bad_b64), Err(PolicyBase64));
        let enc = base64::engine::general_purpose::STANDARD.encode("{\"Bucket\":1}");
        let bad_json = format!("UPLOAD {AK}:{}:{enc}", sign(SK.as_bytes(), &enc));
        assert!(matches!(check(&bad_json), Err(PolicyJson(_))));
        let no_exp = PutPolicy {
            bucket: "doc".into(),
            object: "a".into(),
            ..Default::default()
        }
        .sign(AK, SK.as_bytes());
        assert_eq!(check(&no_exp), Err(NoExpires));
        assert!(Token::parse(&no_exp).unwrap().verify(keys, now, false).is_ok());
        let bad_cb = PutPolicy {
            bucket: "doc".into(),
            object: "a".into(),
            expires: Some(now + 60),
            callback_url: Some("file:///etc/passwd".into()),
            ..Default::default()
        }
        .sign(AK, SK.as_bytes());
        assert_eq!(check(&bad_cb), Err(CallbackUrl));
    }

    #[test]
    fn url_safe_unpadded_and_escaped_slashes_accepted() {
        let json = r#"{"Bucket":"doc","Object":"a\/b.mp4","Expires":9999999999,"Extra":[1]}"#;
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let sig = sign(SK.as_bytes(), &enc).replace('+', "-").replace('/', "_");
        let sig = sig.trim_end_matches('=');
        let p = Token::parse(&format!("UPLOAD {AK}:{sig}:{enc}"))
            .unwrap()
            .verify(keys, 0, true)
            .unwrap();
        assert_eq!(p.object, "a/b.mp4");
    }

    #[test]
    fn scope_and_mime() {
        let p = PutPolicy {
            bucket: "doc".into(),
            object: "a".into(),
            mime_limit: Some("image/*; video/mp4".into()),
            ..Default::default()
        };
        assert_eq!(p.check_scope("doc", "a"), Ok(()));
        assert_eq!(p.check_scope("doc2", "a"), Err(TokenError::BucketMismatch));
        assert_eq!(p.check_scope("doc", "b"), Err(TokenError::ObjectMismatch));
        assert!(p.allows_mime("image/png"));
        assert!(p.allows_mime("VIDEO/MP4; codecs=avc1"));
        assert!(!p.allows_mime("video/webm"));
        assert!(!p.allows_mime("imagex/png"));
        assert!(PutPolicy::default().allows_mime("anything"));
    }

    /// Found by the `policy` fuzz target: a JSON array of the fields in
    /// order was taken for a policy (serde's sequence form of a struct).
    #[test]
    fn regression_fuzz_policy_must_be_a_json_object() {
        let enc = base64::engine::general_purpose::STANDARD.encode(r#"["doc","a",9999999999]"#);
        let tok = format!("UPLOAD {AK}:{}:{enc}", sign(SK.as_bytes(), &enc));
        let got = Token::parse(&tok).unwrap().verify(keys, 0, true);
        assert!(matches!(got, Err(TokenError::PolicyJson(_))), "{got:?}");
        assert!(PutPolicy::from_json(b" \n{\"Bucket\":\"doc\",\"Object\":\"a\"}").is_ok());
    }

    /// Found by the `token_parse` fuzz target: invalid UTF-8 (or a lone
    /// surrogate escape) inside an unknown field's string was skipped, so
    /// a policy that is not JSON verified.
    #[test]
    fn regression_fuzz_policy_must_be_strict_json() {
        let json = b"{\"Bucket\":\"doc\",\"Object\":\"a\",\"X\":\"ht\x7f\xb0\"}";
        assert!(matches!(
            PutPolicy::from_json(json),
            Err(TokenError::PolicyJson(_))
        ));
        let json = br#"{"Bucket":"doc","Object":"a","X":"\ud800"}"#;
        assert!(matches!(
            PutPolicy::from_json(json),
            Err(TokenError::PolicyJson(_))
        ));
        let json = br#"{"Bucket":"doc","Object":"a","Bucket":"other"}"#;
        assert!(matches!(
            PutPolicy::from_json(json),
            Err(TokenError::PolicyJson(_))
        ));
    }

    /// Found by the `policy` fuzz target: `*/*` was taken for the type
    /// `*` with any subtype, so it refused every real content type.
    #[test]
    fn regression_fuzz_mime_star_slash_star_allows_anything() {
        let p = PutPolicy {
            mime_limit: Some("*/*".into()),
            ..Default::default()
        };
        assert!(p.allows_mime("video/mp4"));
        assert!(p.allows_mime(""));
    }

    /// Found by the `policy` fuzz target: `image/*` let through a content
    /// type with no subtype (`image`, `image/`).
    #[test]
    fn regression_fuzz_mime_wildcard_needs_a_subtype() {
        let p = PutPolicy {
            mime_limit: Some("image/*".into()),
            ..Default::default()
        };
        assert!(p.allows_mime("image/png"));
        assert!(!p.allows_mime("image"));
        assert!(!p.allows_mime("image/"));
        assert!(!p.allows_mime("image; charset=x"));
    }

    proptest! {
        #[test]
        fn sign_verify_round_trip(bucket in "[a-z0-9]{3,20}", object in "\\PC{1,80}", exp in 1i64..i64::MAX, secret in proptest::collection::vec(any::<u8>(), 1..64)) {
            let p = PutPolicy { bucket, object, expires: Some(exp), ..Default::default() };
            let tok = p.sign("ak", &secret);
            let got = Token::parse(&tok).unwrap().verify(|_| Some(secret.clone()), exp - 1, true).unwrap();
            prop_assert_eq!(got, p);
        }
    }
}
