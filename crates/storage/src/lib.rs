//! Where upload bytes live.
//!
//! [`BlobStore`] is the narrow contract between the upload rules (`core`)
//! and a storage backend. A *blob* is the byte sequence of one upload
//! session, named by a [`BlobId`] (the session's context, never the object
//! name). It is *staged* while the session is open and *published* once it
//! completes; which object name points at which published blob is the
//! session store's business, not storage's.
//!
//! Every implementation runs the shared [`conformance`] suite.

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

pub mod conformance;
pub mod fs;
pub mod s3;
pub mod testing;

pub use fs::{FsStore, SyncObserver};

/// A stream of body bytes. An `Err` item means the *source* failed (client
/// gone, body too large, ...): the store reports it as [`StorageError::Body`].
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// The name of a blob: URL-safe characters only, so that it is a safe file
/// name and object key in every backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(String);

impl BlobId {
    /// Accepts 1..=128 chars of `[A-Za-z0-9_-]`.
    pub fn new(s: &str) -> Option<Self> {
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No staged (for writes) or staged-or-published (for reads) blob.
    #[error("blob not found")]
    NotFound,
    /// The body stream failed; nothing at or past the write's offset is valid.
    #[error("request body failed: {0}")]
    Body(#[source] io::Error),
    /// The backend failed (disk full, I/O error, unreachable service, ...).
    #[error("storage failed: {0}")]
    Io(#[from] io::Error),
    /// The write passes a limit of the backend (as the 10,000 parts of an
    /// S3 multipart upload); retrying it cannot succeed.
    #[error("{0}")]
    Limit(String),
}

fn unsupported(what: &str) -> StorageError {
    StorageError::Io(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} is not supported by this store"),
    ))
}

/// The storage contract. All methods may be called concurrently for
/// different blobs; callers serialize writes to one blob.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Writes all of `body` at `offset` of the staged blob `id` and returns
    /// the number of bytes written. **Durable when it returns `Ok`.**
    ///
    /// A write at offset 0 creates the blob if it does not exist; a write at
    /// a larger offset of a missing blob is [`StorageError::NotFound`]. On
    /// error, bytes before `offset` are untouched and bytes from `offset` on
    /// are unspecified: the next write at the same offset overwrites them.
    async fn write_at(&self, id: &BlobId, offset: u64, body: ByteStream) -> Result<u64, StorageError>;

    /// Says that the last write to `id` was not committed (its commit
    /// failed or lost a race): a store that keeps anything in memory about
    /// the blob between writes drops it, and reads the blob afresh on the
    /// next one. The bytes themselves stay as after a failed write.
    fn abandon(&self, id: &BlobId) {
        let _ = id;
    }

    /// Streams `len` bytes from `offset` of a staged or published blob. The
    /// stream ends early (fewer bytes) when the blob is shorter. Reading a
    /// staged blob may cost a store more than its bytes (S3 parts of an
    /// upload in progress must be assembled first): where a digest will
    /// do, [`BlobStore::stored_md5`] comes first.
    async fn read_at(&self, id: &BlobId, offset: u64, len: u64) -> Result<ByteStream, StorageError>;

    /// The MD5 of the `len` bytes at `offset` of a staged blob, when the
    /// store has it without reading them: `Some` only if one earlier write
    /// put exactly these `len` bytes at `offset`. Replays of a chunk are
    /// checked with it where the bytes cannot be read back; `None` means
    /// "read them" (the default).
    async fn stored_md5(&self, id: &BlobId, offset: u64, len: u64) -> Result<Option<[u8; 16]>, StorageError> {
        let _ = (id, offset, len);
        Ok(None)
    }

    /// Makes the first `size` bytes of the staged blob its final content
    /// (bytes past `size` are dropped) and moves it out of staging,
    /// durably. Idempotent: publishing a published blob is `Ok`.
    async fn publish(&self, id: &BlobId, size: u64) -> Result<(), StorageError>;

    /// Removes a staged or published blob; a missing one is `Ok`.
    async fn delete(&self, id: &BlobId) -> Result<(), StorageError>;

    /// The staged (unpublished) blobs, for recovery and collection.
    async fn list_staged(&self) -> Result<Vec<BlobId>, StorageError>;

    /// How many bytes the staged blob `id` holds from offset 0 on (bytes
    /// past the committed offset included); `None` when it is not staged.
    /// Recovery compares it with the committed offset: a shorter blob lost
    /// acknowledged bytes.
    async fn staged_size(&self, id: &BlobId) -> Result<Option<u64>, StorageError> {
        let _ = id;
        Err(unsupported("staged_size"))
    }

    /// Removes what a crash left in the store that belongs to no blob and
    /// that no other call would ever find (S3: multipart uploads no record
    /// names), if it is older than `older_than` (younger, another node may
    /// be about to name it). Returns how many things it removed; nothing,
    /// for a store that cannot leave such things (the default).
    async fn sweep_orphans(&self, older_than: std::time::Duration) -> Result<usize, StorageError> {
        let _ = older_than;
        Ok(0)
    }

    /// The published blobs and their sizes, for the scrub that checks
    /// them against the object records.
    async fn list_published(&self) -> Result<Vec<(BlobId, u64)>, StorageError> {
        Err(unsupported("list_published"))
    }

    /// Moves the blob `id` (staged or published) out of service into a
    /// quarantine area, with `note` saying why, for an operator to look
    /// at; it is never read or served again. Returns whether there was a
    /// blob to move.
    async fn quarantine(&self, id: &BlobId, note: &str) -> Result<bool, StorageError> {
        let _ = (id, note);
        Err(unsupported("quarantine"))
    }

    /// Whether the blob `id` was quarantined.
    async fn quarantined(&self, id: &BlobId) -> Result<bool, StorageError> {
        let _ = id;
        Ok(false)
    }

    /// Whether several nodes write to this store at once (then writers of
    /// one session are serialized across nodes by a lease in the session
    /// store, not only by one node's lock).
    fn shared(&self) -> bool {
        false
    }
}
