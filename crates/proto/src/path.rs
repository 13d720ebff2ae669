//! Decoding `/{bucket}/{object}` request paths.
//!
//! Everything after the bucket's slash is the object, whether the client
//! sent `/` literally or as `%2F`. `+` means a space (Java's `URLEncoder`
//! encodes spaces so; a real `+` arrives as `%2B`), and percent-escapes are
//! decoded exactly once, as UTF-8.

use crate::names::{Bucket, NameError, ObjectKey};

/// Why a request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("malformed percent-escape in the path")]
    BadEscape,
    #[error("the path is not valid UTF-8 once decoded")]
    NotUtf8,
    #[error("the path must be /{{bucket}}/{{object}}")]
    Shape,
    #[error(transparent)]
    Name(#[from] NameError),
}

/// A decoded `/{bucket}/{object}` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPath {
    pub bucket: Bucket,
    pub object: ObjectKey,
}

impl ObjectPath {
    /// Parses the raw (still percent-encoded) path of a request URI.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let rest = raw.strip_prefix('/').ok_or(PathError::Shape)?;
        let (bucket, object) = rest.split_once('/').ok_or(PathError::Shape)?;
        let bucket = Bucket::parse(&decode_component(bucket)?)?;
        let object = ObjectKey::parse(&decode_component(object)?)?;
        Ok(Self { bucket, object })
    }

    /// Renders the path a client sends: every byte outside the unreserved
    /// set and `/` percent-encoded, so [`ObjectPath::parse`] gives it back.
    pub fn render(&self) -> String {
        format!(
            "/{}/{}",
            self.bucket,
            percent_encoding::utf8_percent_encode(self.object.as_str(), OBJECT_ESCAPES)
        )
    }
}

/// Bytes a client must escape in an object name (all but unreserved and `/`).
const OBJECT_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Decodes one path component: `+` to space, then `%XX` once, strictly.
pub fn decode_component(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    for (i, _) in raw.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(PathError::BadEscape);
        }
    }
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| PathError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn obj(raw: &str) -> Result<String, PathError> {
        ObjectPath::parse(raw).map(|p| p.object.as_str().to_owned())
    }

    #[test]
    fn slashes_literal_or_escaped() {
        assert_eq!(obj("/doc/a/b/c.mp4").unwrap(), "a/b/c.mp4");
        assert_eq!(obj("/doc/a%2Fb%2fc.mp4").unwrap(), "a/b/c.mp4");
    }

    #[test]
    fn plus_is_space_and_escaped_plus_is_plus() {
        assert_eq!(obj("/doc/a+b%2Bc%20d").unwrap(), "a b+c d");
    }

    #[test]
    fn utf8_names() {
        assert_eq!(obj("/doc/%E8%A7%86%E9%A2%91.mp4").unwrap(), "视频.mp4");
        assert_eq!(obj("/doc/%FF%FE"), Err(PathError::NotUtf8));
    }

    #[test]
    fn decoded_once() {
        assert_eq!(obj("/doc/a%252F").unwrap(), "a%2F");
    }

    #[test]
    fn refusals() {
        assert_eq!(obj("/doc/a%2"), Err(PathError::BadEscape));
        assert_eq!(obj("/doc/a%zz"), Err(PathError::BadEscape));
        assert_eq!(obj("/doc"), Err(PathError::Shape));
        assert_eq!(obj("/doc/"), Err(PathError::Name(NameError::Object)));
        assert_eq!(obj("/Doc/a"), Err(PathError::Name(NameError::Bucket)));
        assert_eq!(obj("/doc/a%0Ab"), Err(PathError::Name(NameError::Object)));
        assert_eq!(obj("doc/a"), Err(PathError::Shape));
    }

    #[test]
    fn traversal_is_just_a_name() {
        assert_eq!(obj("/doc/../../etc/passwd").unwrap(), "../../etc/passwd");
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(name in "[^\\p{Cc}]{1,200}") {
            prop_assume!(name.len() <= 1024);
            let p = ObjectPath { bucket: Bucket::parse("doc").unwrap(), object: ObjectKey::parse(&name).unwrap() };
            prop_assert_eq!(ObjectPath::parse(&p.render()).unwrap(), p);
        }
    }
}
