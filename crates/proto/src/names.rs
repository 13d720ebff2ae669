//! Validated names: buckets, object keys and upload contexts.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid bucket name: 3 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
    )]
    Bucket,
    #[error("invalid object name: 1 to 1024 bytes of UTF-8 without control characters")]
    Object,
    #[error("invalid context")]
    Context,
}

/// A bucket name: 3..=63 chars of `[a-z0-9-]`, alphanumeric at both ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket(String);

impl Bucket {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok_len = (3..=63).contains(&s.len());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ends = |b: Option<u8>| b.is_some_and(|b| b != b'-');
        if ok_len && ok_chars && ends(s.bytes().next()) && ends(s.bytes().last()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Bucket)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An object key: 1..=1024 bytes of UTF-8 without control characters.
///
/// It is a key, never a file-system path: storage must not use it as one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if (1..=1024).contains(&s.len()) && !s.chars().any(char::is_control) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Object)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The opaque handle of an upload session: URL-safe characters only.
///
/// Contexts minted by upline carry 192 random bits; any URL-safe string of
/// up to 128 characters parses, so that a context minted by another
/// server of the protocol is answered 404 rather than 400.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadCtx(String);

impl UploadCtx {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Context)
        }
    }

    /// Builds a context from 24 random bytes (the caller's RNG), base64url.
    pub fn from_random(bytes: [u8; 24]) -> Self {
        use base64::Engine;
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        for ok in ["doc", "vod-k32ywxdf", "a1b", &"a".repeat(63)] {
            assert!(Bucket::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ab", "-ab", "ab-", "Abc", "a_b", "a.b", &"a".repeat(64)] {
            assert_eq!(Bucket::parse(bad), Err(NameError::Bucket), "{bad}");
        }
    }

    #[test]
    fn objects() {
        for ok in [
            "a",
            "dir/sub/file.mp4",
            "../etc/passwd",
            "视频 1+2.mp4",
            &"x".repeat(1024),
        ] {
            assert!(ObjectKey::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a\nb", "a\0b", "\u{7f}", &"x".repeat(1025)] {
            assert_eq!(ObjectKey::parse(bad), Err(NameError::Object), "{bad:?}");
        }
    }

    #[test]
    fn contexts() {
        let c = UploadCtx::from_random([7; 24]);
        assert_eq!(c.as_str().len(), 32);
        assert_eq!(UploadCtx::parse(c.as_str()), Ok(c));
        assert!(UploadCtx::parse("f3e26818-83ab-9ff47af21c7").is_ok());
        for bad in ["", "a b", "a/b", "a%20", &"a".repeat(129)] {
            assert_eq!(UploadCtx::parse(bad), Err(NameError::Context), "{bad}");
        }
    }
}
