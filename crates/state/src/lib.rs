//! Upload session state and the object index.
//!
//! [`SessionStore`] keeps, per upload session, the committed offset and
//! what the replay and completion rules need; and, per object name, which
//! published blob holds it. Its one write, [`SessionStore::advance`], is a
//! compare-and-swap: that is what serializes racing writers — across tasks
//! of one node and, with a shared database, across nodes.
//!
//! Every implementation runs the shared [`conformance`] suite.

use serde::{Deserialize, Serialize};

pub mod apps;
pub mod conformance;
pub mod embedded;
pub mod nodes;
pub mod postgres;
pub mod testing;

pub use apps::{AppRecord, AppStore, NewVideo, Notification, Video};
pub use embedded::EmbeddedStore;
pub use nodes::{NodeInfo, NodeRegistry};
pub use postgres::PgStore;

/// One upload session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub ctx: String,
    pub bucket: String,
    pub object: String,
    /// Kept from the first chunk; empty when it had none.
    pub content_type: String,
    /// Committed offset: bytes `[0, offset)` are durable.
    pub offset: u64,
    /// Length of the last acknowledged chunk, `[offset - len, offset)`, for
    /// the exact-replay rule. `None` before the first chunk.
    pub last_chunk_len: Option<u64>,
    /// The latest whole-object MD5 claim (hex), checked at completion.
    pub md5_claim: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last commit; idle sessions are collected by it.
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    /// Opaque data the creator attached (the app API's upload record);
    /// completions of tagged sessions are logged for [`SessionStore::completions`].
    pub tag: Option<String>,
}

/// A published object: which blob holds `bucket/object`, and its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub bucket: String,
    pub object: String,
    /// The blob (the completing session's context).
    pub blob: String,
    pub size: u64,
    pub content_type: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Hex MD5; `None` until computed (off the upload's hot path).
    pub md5: Option<String>,
}

/// Where an [`Advance`] starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Create the session; fails with [`StateError::Exists`] if the context is taken.
    New {
        bucket: String,
        object: String,
        content_type: String,
        /// See [`Session::tag`].
        tag: Option<String>,
    },
    /// The committed offset the caller saw; the swap fails if it moved.
    At(u64),
}

/// One commit of one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub start: Start,
    /// Length of the chunk: the new offset is the old one plus this.
    pub chunk_len: u64,
    /// A new whole-object MD5 claim (hex), if the chunk carried one.
    pub md5_claim: Option<String>,
    /// Finish the session and point its object name at its blob.
    pub complete: Option<Completion>,
    /// Unix seconds.
    pub now: i64,
    /// Commit only while this writer holds the session's lease (shared
    /// stores; `None` where no lease is taken).
    pub lease: Option<Fence>,
}

/// A writer's claim to a session's lease ([`SessionStore::lease`]), checked
/// in the same transaction as the advance it guards: a writer whose lease
/// lapsed while its chunk was stored (and that another node may have taken
/// since) cannot commit. Leases alone only keep writers apart while each
/// keeps to its term; this makes the commit itself refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    /// Wall-clock milliseconds, as given to [`SessionStore::lease`].
    pub now_ms: i64,
}

/// What a completing [`Advance`] records about the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Hex MD5 when already known (a client claim was checked).
    pub md5: Option<String>,
}

/// The result of a successful [`SessionStore::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advanced {
    pub session: Session,
    /// On completion: the record this one replaced, whose blob is now garbage.
    pub replaced: Option<ObjectRecord>,
}

/// What can go wrong in a session store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("unknown session")]
    NotFound,
    #[error("session already exists")]
    Exists,
    #[error("offset moved: committed offset is {committed}")]
    Conflict { committed: u64 },
    #[error("session is already complete")]
    Completed,
    #[error("the session's lease is no longer this writer's")]
    LeaseLost,
    #[error("state backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The session-state contract. Every method is atomic; [`advance`] is the
/// only way an offset moves.
///
/// [`advance`]: SessionStore::advance
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Reads one session.
    async fn get(&self, ctx: &str) -> Result<Option<Session>, StateError>;

    /// Compare-and-swap of the committed offset, durable when it returns.
    ///
    /// With [`Start::At`]`(expected)`: fails with `NotFound`, `Completed`, or
    /// `Conflict { committed }` when `expected` is stale; otherwise moves the
    /// offset by `chunk_len`, records the chunk for replay, the claim if any,
    /// and — with `complete` — finishes the session and upserts its object
    /// record in the same transaction (returning the replaced record).
    async fn advance(&self, ctx: &str, change: Advance) -> Result<Advanced, StateError>;

    /// The record of a published object.
    async fn get_object(&self, bucket: &str, object: &str) -> Result<Option<ObjectRecord>, StateError>;

    /// Sets the MD5 of `bucket/object` if it is still held by `blob`;
    /// returns whether it did.
    async fn set_object_md5(
        &self,
        bucket: &str,
        object: &str,
        blob: &str,
        md5: &str,
    ) -> Result<bool, StateError>;

    /// Sessions (open or complete) whose last commit is before `before`,
    /// but for those a pending completion keeps ([`Self::delete_session`]
    /// would not forget them: the collector looped on them).
    async fn idle_sessions(&self, before: i64, limit: usize) -> Result<Vec<Session>, StateError>;

    /// Forgets a session (never its object record); a missing one is `Ok`.
    /// A session whose completion is still in the log is kept.
    async fn delete_session(&self, ctx: &str) -> Result<(), StateError>;

    /// Sessions not yet complete, oldest first (administration).
    async fn open_sessions(&self, limit: usize) -> Result<Vec<Session>, StateError>;

    /// How many sessions are not yet complete (the metrics' gauge).
    async fn count_open(&self) -> Result<u64, StateError>;

    /// Published objects, by bucket and name (administration).
    async fn list_objects(&self, bucket: Option<&str>, limit: usize)
    -> Result<Vec<ObjectRecord>, StateError>;

    /// Removes an object's record and returns it (its blob is the caller's).
    async fn delete_object(&self, bucket: &str, object: &str) -> Result<Option<ObjectRecord>, StateError>;

    /// Completions of tagged sessions not yet acknowledged, in order, with
    /// their sequence numbers. The log entry is written in the same
    /// transaction that completes the session, so none is ever lost.
    async fn completions(&self, limit: usize) -> Result<Vec<(i64, Session)>, StateError>;

    /// Removes one entry of the completion log.
    async fn ack_completion(&self, seq: i64) -> Result<(), StateError>;

    /// Takes or renews the session's write lease for `owner` until
    /// `until_ms`, unless another owner holds one that has not expired at
    /// `now_ms`. This serializes writers on *different nodes* of a shared
    /// store (one node serializes its own requests with a lock). Returns
    /// whether the lease is `owner`'s; a missing session is `NotFound`.
    async fn lease(&self, ctx: &str, owner: &str, now_ms: i64, until_ms: i64) -> Result<bool, StateError>;

    /// Gives the lease back if `owner` holds it.
    async fn release(&self, ctx: &str, owner: &str) -> Result<(), StateError>;
}

/// Whether a session whose lease is `owner` until `until` is still held by
/// the writer of `fence` (the same rule [`SessionStore::lease`] grants by).
pub(crate) fn holds(fence: &Fence, owner: Option<&str>, until: Option<i64>) -> bool {
    owner == Some(fence.owner.as_str()) && until.is_some_and(|u| u >= fence.now_ms)
}
