//! The upload rules of the protocol, over storage and state traits.
//!
//! [`Node`] implements rules 1–9 of the chunk upload, the resume-point
//! query, completion (publication, object MD5, callbacks) and the
//! housekeeping that keeps stores clean (recovery at start, collection of
//! idle sessions). It never sees HTTP: the server crate parses requests
//! into [`ChunkRequest`]s and renders [`CoreError`]s.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use upline_proto::callback::CallbackBody;
use upline_proto::{ObjectPath, PutPolicy, Token, UploadParams};
use upline_state::SessionStore;
use upline_storage::BlobStore;

pub mod body;
mod error;
mod idle;
mod locks;
mod maintenance;
mod upload;

pub use error::CoreError;
pub use locks::{SessionGuard, SessionLocks};
pub use maintenance::{Collected, Scrubbed};
pub use upline_state::ObjectRecord;

/// Tunables of the upload rules.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a write lease on a session lasts (shared stores only).
    pub lease_ms: i64,
    /// Largest chunk body (the protocol's 4 MiB by default).
    pub max_chunk: u64,
    /// Refuse tokens whose policy has no `Expires`.
    pub require_expires: bool,
    /// Seconds after its last chunk that a session (open or complete) is
    /// forgotten; an open session's bytes are collected with it.
    pub session_ttl: i64,
    /// How long a completion callback may take.
    pub callback_timeout: Duration,
    /// How old a multipart upload no record names must be before recovery
    /// aborts it (S3). Another node names the upload it creates within
    /// moments; the default hour also covers clock skew between nodes and
    /// the store. Zero suits a store only one node uses at a time, and
    /// only at start: collection passes, which run beside requests, wait
    /// at least ten minutes.
    pub orphan_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease_ms: 60_000,
            max_chunk: upline_proto::MAX_CHUNK,
            require_expires: true,
            session_ttl: 7 * 24 * 3600,
            callback_timeout: Duration::from_secs(10),
            orphan_grace: Duration::from_secs(3600),
        }
    }
}

/// The credential pairs tokens may be signed with (several, for rotation).
#[derive(Clone, Default)]
pub struct Keyring(HashMap<String, Vec<u8>>);

impl Keyring {
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(pairs.into_iter().map(|(a, s)| (a, s.into_bytes())).collect())
    }

    pub fn secret(&self, access_key: &str) -> Option<Vec<u8>> {
        self.0.get(access_key).cloned()
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Sends completion callbacks (an HTTP client in the server crate).
#[async_trait::async_trait]
pub trait CallbackSender: Send + Sync + 'static {
    /// POSTs `body` to `url`; `Ok` with the answer's body for a 2xx answer
    /// within `timeout`, `Err` with a reason otherwise.
    async fn post(&self, url: &str, body: &CallbackBody, timeout: Duration) -> Result<Bytes, String>;
}

/// One chunk upload, parsed.
#[derive(Debug, Clone)]
pub struct ChunkRequest {
    pub path: ObjectPath,
    pub params: UploadParams,
    /// The `x-nos-token` header, if any.
    pub token: Option<String>,
    /// `None` for a chunked body.
    pub content_length: Option<u64>,
    pub content_type: Option<String>,
    /// The raw `Content-MD5` header.
    pub content_md5: Option<String>,
    /// Unix seconds.
    pub now: i64,
}

/// The answer to an accepted chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkReply {
    pub offset: u64,
    pub context: String,
    /// base64 of the callback's answer, or empty.
    pub callback_ret_msg: String,
}

/// An upload node: the rules over one blob store and one session store.
pub struct Node {
    blobs: Arc<dyn BlobStore>,
    state: Arc<dyn SessionStore>,
    keys: Keyring,
    callbacks: Arc<dyn CallbackSender>,
    cfg: Config,
    locks: SessionLocks,
    in_flight: AtomicUsize,
    received: Arc<AtomicU64>,
    chunks: AtomicU64,
    /// Blobs moved to quarantine since start.
    quarantined: Arc<AtomicU64>,
    /// This node's name in session leases.
    owner: String,
    /// Hashes completed objects in the background.
    idle_md5: Arc<idle::IdleHasher>,
    /// The room all `Content-MD5` taps share.
    md5_taps: body::TapsBudget,
}

impl Node {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        state: Arc<dyn SessionStore>,
        keys: Keyring,
        callbacks: Arc<dyn CallbackSender>,
        cfg: Config,
    ) -> Self {
        Self {
            blobs,
            state,
            keys,
            callbacks,
            cfg,
            locks: SessionLocks::default(),
            in_flight: AtomicUsize::new(0),
            received: Arc::default(),
            chunks: AtomicU64::new(0),
            quarantined: Arc::default(),
            owner: format!("node-{:016x}", rand::random::<u64>()),
            idle_md5: Arc::default(),
            md5_taps: body::TapsBudget::default(),
        }
    }

    /// Names this node in session leases (default: a random name). A node
    /// restarted on the same data passes the same name, so that it takes
    /// back at once the leases its dead process held.
    pub fn with_lease_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The credential pairs this node accepts.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Chunk uploads being served now (the load the LBS reports).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Chunk body bytes received since start, stored or not (a client that
    /// re-sends acknowledged bytes shows up here).
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Chunks accepted (answered 200, replays included) since start.
    pub fn chunks_stored(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }

    /// Blobs this node moved to quarantine since it started (damaged
    /// bytes found at start, by a scrub or by a download).
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Sessions not yet complete, in the whole session store.
    pub async fn sessions_open(&self) -> Result<u64, CoreError> {
        Ok(self.state.count_open().await?)
    }

    /// Rule 2: a valid token whose scope is this bucket and object.
    pub fn authorize(
        &self,
        token: Option<&str>,
        path: &ObjectPath,
        now: i64,
    ) -> Result<PutPolicy, CoreError> {
        let raw = token.ok_or(upline_proto::TokenError::Missing)?;
        let policy = Token::parse(raw)?.verify(|ak| self.keys.secret(ak), now, self.cfg.require_expires)?;
        policy.check_scope(path.bucket.as_str(), path.object.as_str())?;
        Ok(policy)
    }
}

/// Counts a request in [`Node::in_flight`] while it lives.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub(crate) fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// RustCrypto's md-5, the reference the node's MD5 (fast-md5) is compared
/// with in tests.
#[cfg(test)]
pub(crate) fn reference_md5(data: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(data).into()
}
