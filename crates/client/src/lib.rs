//! A resumable uploader for the upline protocol (and any server of it).
//!
//! It asks the LBS for upload nodes and fails over between them, retries
//! what may pass (network errors, timeouts, 5xx, 520) with exponential
//! backoff and jitter — safe because the protocol answers an exact replay
//! of an acknowledged chunk with the same 200 — re-syncs from the query
//! endpoint after an offset mismatch, adapts its chunk size to the
//! network, sends the whole file's MD5 with the final chunk, and keeps a
//! journal so that an upload interrupted by a crash, a Ctrl-C or a reboot
//! continues where the server says it stopped.
//!
//! ```no_run
//! use upline_client::{ChunkPolicy, Event, Uploader};
//!
//! # async fn run() -> Result<(), upline_client::UploadError> {
//! let uploader = Uploader::builder()
//!     .lbs("http://127.0.0.1:8080/lbs")
//!     .credentials("my-access-key", "my-secret-key")
//!     .chunk_policy(ChunkPolicy::default()) // adaptive, 256 KiB up to 4 MiB
//!     .on_event(|e| {
//!         if let Event::Progress { acked, total, .. } = e {
//!             eprintln!("{acked}/{total}");
//!         }
//!     })
//!     .build()?;
//! let done = uploader.upload_file("clip.mp4".as_ref(), "videos", "clip.mp4").await?;
//! println!("{} bytes, md5 {}", done.size, done.md5);
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod discovery;
mod error;
pub mod journal;
mod policy;
mod tokens;
mod upload;
mod wire;

pub use discovery::Discovery;
pub use error::UploadError;
pub use journal::Journal;
pub use policy::{ChunkPolicy, RetryPolicy};
pub use tokens::{Credentials, StaticToken, TokenProvider};

/// What an uploader reports while it works.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An upload begins, from 0 or from the server's resume point.
    Started {
        path: PathBuf,
        object: String,
        size: u64,
        resumed_from: u64,
    },
    /// The server acknowledged bytes `[0, acked)`.
    Progress { path: PathBuf, acked: u64, total: u64 },
    /// A failure that will be retried.
    Retry {
        path: PathBuf,
        attempt: u32,
        reason: String,
    },
    /// Something the user should know (an upload starting over, ...).
    Warning { path: PathBuf, message: String },
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Uploaded {
    pub bucket: String,
    pub object: String,
    pub size: u64,
    /// Hex MD5 of the whole file, checked by the server.
    pub md5: String,
    pub context: String,
    pub seconds: f64,
    /// Where this run started (0 unless it resumed).
    pub resumed_from: u64,
    /// The completion callback's answer, base64, as the server sent it.
    pub callback_ret_msg: String,
}

type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Uploads files; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Uploader {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    http: reqwest::Client,
    nodes: discovery::Nodes,
    tokens: Arc<dyn TokenProvider>,
    chunks: ChunkPolicy,
    retry: RetryPolicy,
    journal: Option<Journal>,
    events: Option<EventSink>,
    min_rate: u64,
}

impl Inner {
    fn emit(&self, e: Event) {
        if let Some(sink) = &self.events {
            sink(&e);
        }
    }
}

impl Uploader {
    pub fn builder() -> UploaderBuilder {
        UploaderBuilder::default()
    }

    /// Uploads one file to `bucket/object`, resuming an interrupted upload
    /// of the same file to the same place.
    pub async fn upload_file(
        &self,
        path: &Path,
        bucket: &str,
        object: &str,
    ) -> Result<Uploaded, UploadError> {
        self.inner.upload_file(path, bucket, object).await
    }
}

enum JournalChoice {
    Default,
    Dir(PathBuf),
    Off,
}

/// Configures an [`Uploader`].
pub struct UploaderBuilder {
    discovery: Option<Discovery>,
    tokens: Option<Arc<dyn TokenProvider>>,
    chunks: ChunkPolicy,
    retry: RetryPolicy,
    journal: JournalChoice,
    events: Option<EventSink>,
    min_rate: u64,
}

impl Default for UploaderBuilder {
    fn default() -> Self {
        Self {
            discovery: None,
            tokens: None,
            chunks: ChunkPolicy::default(),
            retry: RetryPolicy::default(),
            journal: JournalChoice::Default,
            events: None,
            min_rate: 100_000,
        }
    }
}

impl UploaderBuilder {
    /// Discover upload nodes from this LBS endpoint (`http://host/lbs`).
    pub fn lbs(mut self, url: impl Into<String>) -> Self {
        self.discovery = Some(Discovery::Lbs(url.into()));
        self
    }

    /// Use these upload nodes, in order, without an LBS.
    pub fn nodes(mut self, urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.discovery = Some(Discovery::Nodes(urls.into_iter().map(Into::into).collect()));
        self
    }

    /// One fixed token (scoped to one object).
    pub fn token(self, token: impl Into<String>) -> Self {
        self.token_provider(StaticToken(token.into()))
    }

    /// Sign a token per object with these credentials (valid one day).
    pub fn credentials(self, access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        self.token_provider(Credentials {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            ttl: Duration::from_secs(24 * 3600),
        })
    }

    pub fn token_provider(mut self, p: impl TokenProvider) -> Self {
        self.tokens = Some(Arc::new(p));
        self
    }

    pub fn chunk_policy(mut self, p: ChunkPolicy) -> Self {
        self.chunks = p;
        self
    }

    pub fn retry_policy(mut self, p: RetryPolicy) -> Self {
        self.retry = p;
        self
    }

    /// Keep the resume journal here instead of the user's cache directory.
    pub fn journal_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.journal = JournalChoice::Dir(dir.into());
        self
    }

    /// Keep no journal: an interrupted upload starts over.
    pub fn no_journal(mut self) -> Self {
        self.journal = JournalChoice::Off;
        self
    }

    /// Called for every [`Event`], from the uploading task: keep it quick.
    pub fn on_event(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(f));
        self
    }

    /// The slowest transfer rate (bytes/s) still taken for a live
    /// connection; request timeouts are derived from it and the chunk size.
    pub fn min_rate(mut self, bytes_per_sec: u64) -> Self {
        self.min_rate = bytes_per_sec.max(1);
        self
    }

    pub fn build(self) -> Result<Uploader, UploadError> {
        let discovery = self
            .discovery
            .ok_or_else(|| UploadError::Config("no LBS or upload node given".into()))?;
        if matches!(&discovery, Discovery::Nodes(n) if n.is_empty()) {
            return Err(UploadError::Config("the node list is empty".into()));
        }
        let tokens = self
            .tokens
            .ok_or_else(|| UploadError::Config("no token or credentials given".into()))?;
        let journal = match self.journal {
            JournalChoice::Off => None,
            JournalChoice::Dir(d) => Some(Journal::new(d)),
            JournalChoice::Default => Journal::default_dir().map(Journal::new),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("upline-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UploadError::Config(e.to_string()))?;
        Ok(Uploader {
            inner: Arc::new(Inner {
                http,
                nodes: discovery::Nodes::new(discovery),
                tokens,
                chunks: self.chunks,
                retry: self.retry,
                journal,
                events: self.events,
                min_rate: self.min_rate,
            }),
        })
    }
}
