//! Query strings of the three endpoints, in any parameter order.

use crate::names::{Bucket, NameError};

/// Why a query string was refused (always a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("missing parameter '{0}'")]
    Missing(&'static str),
    #[error("parameter '{0}' appears more than once")]
    Duplicate(String),
    #[error("unsupported version: only version=1.0 is known")]
    Version,
    #[error("offset must be a non-negative integer")]
    Offset,
    #[error("complete must be true, false, 1 or 0")]
    Complete,
    #[error("missing or empty context")]
    Context,
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Parameters of `POST /{bucket}/{object}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadParams {
    pub offset: u64,
    pub complete: bool,
    /// `None` when absent or empty: a new session.
    pub context: Option<String>,
}

/// Parameters of `GET /{bucket}/{object}?uploadContext`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeParams {
    pub context: String,
}

/// Parameters of `GET /lbs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbsParams {
    pub bucket: Bucket,
}

/// Decoded `key[=value]` pairs; `key` alone has the value `None`.
#[derive(Debug, Default)]
pub struct Pairs(Vec<(String, Option<String>)>);

impl Pairs {
    /// Splits and form-decodes a raw query string. Duplicate keys are refused:
    /// two different offsets in one request can only be a client bug or an
    /// attack, and picking one silently would hide either.
    pub fn parse(raw: &str) -> Result<Self, QueryError> {
        let mut pairs: Vec<(String, Option<String>)> = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (decode(k), Some(decode(v))),
                None => (decode(part), None),
            };
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(QueryError::Duplicate(k));
            }
            pairs.push((k, v));
        }
        Ok(Self(pairs))
    }

    /// Whether `key` is present, with or without a value.
    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// The value of `key`; a bare `key` reads as the empty string.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    fn version(&self) -> Result<(), QueryError> {
        match self.get("version") {
            None => Err(QueryError::Missing("version")),
            Some(crate::VERSION) => Ok(()),
            Some(_) => Err(QueryError::Version),
        }
    }
}

fn decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl UploadParams {
    pub fn parse(raw: &str) -> Result<Self, QueryError> {
        let q = Pairs::parse(raw)?;
        q.version()?;
        let offset = q.get("offset").ok_or(QueryError::Missing("offset"))?;
        let offset = parse_u64(offset).ok_or(QueryError::Offset)?;
        let complete = match q.get("complete").ok_or(QueryError::Missing("complete"))? {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(QueryError::Complete),
        };
        let context = q.get("context").filter(|c| !c.is_empty()).map(str::to_owned);
        Ok(Self {
            offset,
            complete,
            context,
        })
    }

    /// Renders the query string a client sends.
    pub fn render(&self) -> String {
        let mut s = format!("offset={}&complete={}&version=1.0", self.offset, self.complete);
        if let Some(ctx) = &self.context {
            s.push_str("&context=");
            s.extend(form_urlencoded::byte_serialize(ctx.as_bytes()));
        }
        s
    }
}

impl ResumeParams {
    pub fn parse(raw: &str) -> Result<Self, QueryError> {
        let q = Pairs::parse(raw)?;
        q.version()?;
        match q.get("context") {
            Some(c) if !c.is_empty() => Ok(Self {
                context: c.to_owned(),
            }),
            _ => Err(QueryError::Context),
        }
    }
}

impl LbsParams {
    pub fn parse(raw: &str) -> Result<Self, QueryError> {
        let q = Pairs::parse(raw)?;
        q.version()?;
        let bucket = q.get("bucketname").ok_or(QueryError::Missing("bucketname"))?;
        Ok(Self {
            bucket: Bucket::parse(bucket)?,
        })
    }
}

/// Digits only: no sign, no spaces, no overflow.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn upload_any_order_and_forms() {
        let p = UploadParams::parse("complete=1&context=abc&version=1.0&offset=42").unwrap();
        assert_eq!(
            p,
            UploadParams {
                offset: 42,
                complete: true,
                context: Some("abc".into())
            }
        );
        let p = UploadParams::parse("offset=0&complete=false&version=1.0&context=").unwrap();
        assert_eq!(p.context, None);
        assert!(!p.complete);
    }

    #[test]
    fn upload_refusals() {
        use QueryError::*;
        let cases = [
            ("offset=0&complete=true", Missing("version")),
            ("offset=0&complete=true&version=2.0", Version),
            ("complete=true&version=1.0", Missing("offset")),
            ("offset=-1&complete=true&version=1.0", Offset),
            ("offset=+1&complete=true&version=1.0", Offset),
            ("offset=18446744073709551616&complete=true&version=1.0", Offset),
            ("offset=0&version=1.0", Missing("complete")),
            ("offset=0&complete=yes&version=1.0", Complete),
            (
                "offset=0&offset=1&complete=true&version=1.0",
                Duplicate("offset".into()),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(UploadParams::parse(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn resume_query() {
        let p = ResumeParams::parse("uploadContext&context=f3e2&version=1.0").unwrap();
        assert_eq!(p.context, "f3e2");
        assert_eq!(
            ResumeParams::parse("uploadContext&version=1.0"),
            Err(QueryError::Context)
        );
        assert_eq!(
            ResumeParams::parse("uploadContext&context=&version=1.0"),
            Err(QueryError::Context)
        );
        assert_eq!(
            ResumeParams::parse("uploadContext&context=a"),
            Err(QueryError::Missing("version"))
        );
    }

    #[test]
    fn lbs_query() {
        assert_eq!(
            LbsParams::parse("version=1.0&bucketname=doc")
                .unwrap()
                .bucket
                .as_str(),
            "doc"
        );
        assert_eq!(
            LbsParams::parse("bucketname=doc"),
            Err(QueryError::Missing("version"))
        );
        assert_eq!(
            LbsParams::parse("version=1.0"),
            Err(QueryError::Missing("bucketname"))
        );
        assert!(matches!(
            LbsParams::parse("version=1.0&bucketname=A"),
            Err(QueryError::Name(_))
        ));
    }

    proptest! {
        #[test]
        fn upload_render_parse(offset in any::<u64>(), complete in any::<bool>(), ctx in proptest::option::of("[A-Za-z0-9_-]{1,64}")) {
            let p = UploadParams { offset, complete, context: ctx };
            prop_assert_eq!(UploadParams::parse(&p.render()).unwrap(), p);
        }
    }
}
