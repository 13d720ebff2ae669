//! Where upload tokens come from: a fixed token, or credentials that sign
//! one per object (the way an app backend does).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use upline_proto::PutPolicy;

use crate::UploadError;

/// Supplies the `x-nos-token` for an upload of `bucket/object`.
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    async fn token(&self, bucket: &str, object: &str) -> Result<String, UploadError>;
}

/// One token for everything (it is scoped to one object, so this fits a
/// single upload).
#[derive(Clone)]
pub struct StaticToken(pub String);

#[async_trait::async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self, _: &str, _: &str) -> Result<String, UploadError> {
        Ok(self.0.clone())
    }
}

/// Signs a token per object with an access key and secret.
#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    /// Lifetime of each token.
    pub ttl: Duration,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenProvider for Credentials {
    async fn token(&self, bucket: &str, object: &str) -> Result<String, UploadError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let policy = PutPolicy {
            bucket: bucket.to_owned(),
            object: object.to_owned(),
            expires: Some((now + self.ttl.as_secs()) as i64),
            ..Default::default()
        };
        Ok(policy.sign(&self.access_key, self.secret_key.as_bytes()))
    }
}
