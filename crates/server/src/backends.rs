//! Choosing and opening the storage and state backends from their URLs.
//!
//! Typed, so an impossible combination cannot be written; a bad URL stops
//! the start with a message that says what to write instead.

use std::path::PathBuf;
use std::sync::Arc;

use upline_state::{AppStore, EmbeddedStore, NodeRegistry, PgStore, SessionStore};
use upline_storage::{BlobStore, FsStore, SyncObserver};

use crate::ServerConfig;

/// Where blobs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    Fs { root: PathBuf },
    S3(upline_storage::s3::S3Config),
}

/// Where session state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateBackend {
    Embedded { path: PathBuf },
    Postgres { url: String },
}

/// Why a backend URL was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendUrlError(pub String);

impl StorageBackend {
    pub fn from_config(cfg: &ServerConfig) -> Result<Self, BackendUrlError> {
        let Some(url) = cfg.storage.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(StorageBackend::Fs {
                root: cfg.data_dir.join("blobs"),
            });
        };
        if let Some(path) = url.strip_prefix("fs://") {
            if path.is_empty() {
                return Err(BackendUrlError(format!(
                    "storage {url:?} has no path: write fs:///var/lib/upline/blobs"
                )));
            }
            return Ok(StorageBackend::Fs {
                root: PathBuf::from(path),
            });
        }
        if url.starts_with("s3://") {
            let access = cfg
                .s3_access_key
                .clone()
                .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
            let secret = cfg
                .s3_secret_key
                .as_ref()
                .map(|s| s.0.clone())
                .or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok());
            let layout = cfg.s3_layout.parse().map_err(BackendUrlError)?;
            return upline_storage::s3::S3Config::parse(url, access, secret, cfg.s3_part_size)
                .map(|c| StorageBackend::S3(upline_storage::s3::S3Config { layout, ..c }))
                .map_err(BackendUrlError);
        }
        Err(BackendUrlError(format!(
            "unknown storage {:?}: write fs://PATH or s3://BUCKET?endpoint=http://HOST:PORT&region=REGION",
            redact(url)
        )))
    }

    pub async fn open(&self) -> Result<Arc<dyn BlobStore>, BackendUrlError> {
        self.open_observed(SyncObserver::default()).await
    }

    /// Opens the store; a local-disk store reports its syncs to `syncs`.
    pub async fn open_observed(&self, syncs: SyncObserver) -> Result<Arc<dyn BlobStore>, BackendUrlError> {
        match self {
            StorageBackend::Fs { root } => FsStore::open(root)
                .map(|s| Arc::new(s.with_sync_observer(syncs)) as Arc<dyn BlobStore>)
                .map_err(|e| BackendUrlError(format!("cannot use {}: {e}", root.display()))),
            StorageBackend::S3(c) => upline_storage::s3::S3Store::open(c.clone())
                .await
                .map(|s| Arc::new(s) as Arc<dyn BlobStore>)
                .map_err(|e| BackendUrlError(format!("cannot use S3 bucket {}: {e}", c.bucket))),
        }
    }
}

impl StateBackend {
    pub fn from_config(cfg: &ServerConfig) -> Result<Self, BackendUrlError> {
        match cfg.state.as_deref() {
            None | Some("") | Some("embedded") => Ok(StateBackend::Embedded {
                path: cfg.data_dir.join("state.db"),
            }),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StateBackend::Postgres { url: url.to_owned() })
            }
            // A mistyped scheme must not print the password it carries.
            Some(other) => Err(BackendUrlError(format!(
                "unknown state {:?}: write embedded or postgres://USER@HOST/DATABASE",
                redact(other)
            ))),
        }
    }
}

/// The three views of one state store.
#[derive(Clone)]
pub struct StateStores {
    pub sessions: Arc<dyn SessionStore>,
    pub apps: Arc<dyn AppStore>,
    pub nodes: Arc<dyn NodeRegistry>,
}

impl StateBackend {
    pub async fn open(&self) -> Result<StateStores, BackendUrlError> {
        match self {
            StateBackend::Embedded { path } => {
                let s = Arc::new(
                    EmbeddedStore::open(path)
                        .map_err(|e| BackendUrlError(format!("cannot open {}: {e}", path.display())))?,
                );
                Ok(StateStores {
                    sessions: s.clone(),
                    apps: s.clone(),
                    nodes: s,
                })
            }
            StateBackend::Postgres { url } => {
                let s = Arc::new(PgStore::connect(url).await.map_err(|e| {
                    BackendUrlError(format!("cannot use PostgreSQL at {}: {e}", redact(url)))
                })?);
                Ok(StateStores {
                    sessions: s.clone(),
                    apps: s.clone(),
                    nodes: s,
                })
            }
        }
    }
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_what_to_write() {
        let cfg = |storage: Option<&str>, state: Option<&str>| ServerConfig {
            storage: storage.map(str::to_owned),
            state: state.map(str::to_owned),
            ..Default::default()
        };
        assert_eq!(
            StorageBackend::from_config(&cfg(None, None)).unwrap(),
            StorageBackend::Fs {
                root: PathBuf::from("./upline-data/blobs")
            }
        );
        assert_eq!(
            StorageBackend::from_config(&cfg(Some("fs:///srv/blobs"), None)).unwrap(),
            StorageBackend::Fs {
                root: PathBuf::from("/srv/blobs")
            }
        );
        let e = StorageBackend::from_config(&cfg(Some("gcs://b"), None)).unwrap_err();
        assert!(e.0.contains("write fs://PATH or s3://"), "{e}");
        assert!(StorageBackend::from_config(&cfg(Some("fs://"), None)).is_err());
        assert!(matches!(
            StateBackend::from_config(&cfg(None, Some("embedded"))).unwrap(),
            StateBackend::Embedded { .. }
        ));
        assert!(matches!(
            StateBackend::from_config(&cfg(None, Some("postgres://u@h/db"))).unwrap(),
            StateBackend::Postgres { .. }
        ));
        let e = StateBackend::from_config(&cfg(None, Some("mysql://x"))).unwrap_err();
        assert!(e.0.contains("postgres://"), "{e}");
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u@h/db");
    }

    /// A mistyped scheme was echoed whole at start, password and all.
    #[test]
    fn regression_unknown_urls_are_echoed_without_their_password() {
        let cfg = |storage: Option<&str>, state: Option<&str>| ServerConfig {
            storage: storage.map(str::to_owned),
            state: state.map(str::to_owned),
            ..Default::default()
        };
        let e = StateBackend::from_config(&cfg(None, Some("pg://upline:hunter2@db/upline"))).unwrap_err();
        assert!(
            !e.0.contains("hunter2") && e.0.contains("pg://upline@db/upline"),
            "{e}"
        );
        let e = StorageBackend::from_config(&cfg(Some("gcs://key:hunter2@b"), None)).unwrap_err();
        assert!(!e.0.contains("hunter2"), "{e}");
    }
}
