//! Two nodes on one shared store: while one writes a chunk of a session,
//! the other's write to that session is refused (400 Busy), not
//! interleaved; afterwards either can continue.

mod common;

use common::{NoCallbacks, req};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use upline_core::{Config, CoreError, Keyring, Node};
use upline_state::{Advance, Advanced, EmbeddedStore, ObjectRecord, Session, SessionStore, StateError};
use upline_storage::conformance::body;
use upline_storage::{BlobId, BlobStore, ByteStream, FsStore, StorageError};

/// The local-disk store, declared shared as an S3 bucket would be.
struct Shared(FsStore);

#[async_trait::async_trait]
impl BlobStore for Shared {
    async fn write_at(&self, id: &BlobId, offset: u64, body: ByteStream) -> Result<u64, StorageError> {
        self.0.write_at(id, offset, body).await
    }
    async fn read_at(&self, id: &BlobId, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        self.0.read_at(id, offset, len).await
    }
    async fn publish(&self, id: &BlobId, size: u64) -> Result<(), StorageError> {
        self.0.publish(id, size).await
    }
    async fn delete(&self, id: &BlobId) -> Result<(), StorageError> {
        self.0.delete(id).await
    }
    async fn list_staged(&self) -> Result<Vec<BlobId>, StorageError> {
        self.0.list_staged().await
    }
    async fn staged_size(&self, id: &BlobId) -> Result<Option<u64>, StorageError> {
        self.0.staged_size(id).await
    }
    async fn quarantine(&self, id: &BlobId, note: &str) -> Result<bool, StorageError> {
        self.0.quarantine(id, note).await
    }
    fn shared(&self) -> bool {
        true
    }
}

fn node(dir: &std::path::Path) -> Node {
    node_with(dir, Config::default())
}

fn node_with(dir: &std::path::Path, cfg: Config) -> Node {
    let blobs = Arc::new(Shared(FsStore::open(dir.join("blobs")).unwrap()));
    let state = Arc::new(EmbeddedStore::open(dir.join("state.db")).unwrap());
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    Node::new(blobs, state, keys, Arc::new(NoCallbacks), cfg)
}

/// A lease term far shorter than the slow bodies below (long enough that
/// a renewal a loaded machine runs late still lands in time).
fn short_lease() -> Config {
    Config {
        lease_ms: 1000,
        ..Config::default()
    }
}

/// Starts a session on `node` with 10 bytes of 1s, then sends it 20 bytes
/// of 2s at offset 10 in a body that arrives `after` the request starts.
async fn session_with_slow_chunk(
    node: &Arc<Node>,
    after: Duration,
) -> (
    String,
    tokio::task::JoinHandle<Result<upline_core::ChunkReply, CoreError>>,
) {
    let ctx = node
        .upload_chunk(req(0, None), body(vec![vec![1; 10]]))
        .await
        .unwrap()
        .context;
    let late: ByteStream = Box::pin(futures_util::stream::unfold(true, move |first| async move {
        if !first {
            return None;
        }
        tokio::time::sleep(after).await;
        Some((Ok(Bytes::from(vec![2u8; 20])), false))
    }));
    let (node, c) = (node.clone(), ctx.clone());
    let slow = tokio::spawn(async move { node.upload_chunk(req(10, Some(&c)), late).await });
    (ctx, slow)
}

/// A body slower than the lease term keeps its lease: another node that
/// comes after the first term has passed is still refused, and the slow
/// chunk's bytes are the ones committed. Without renewal the second node
/// took the expired lease and the first then overwrote its chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_keeps_its_lease_past_one_term() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        Arc::new(node_with(dir.path(), short_lease())),
        Arc::new(node_with(dir.path(), short_lease())),
    );
    let (ctx, slow) = session_with_slow_chunk(&b, Duration::from_millis(3000)).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let busy = a.upload_chunk(req(10, Some(&ctx)), body(vec![vec![3; 20]])).await;
        assert!(matches!(busy, Err(CoreError::Busy)), "{busy:?}");
    }
    assert_eq!(slow.await.unwrap().unwrap().offset, 30);
    let blobs = FsStore::open(dir.path().join("blobs")).unwrap();
    let stored = upline_storage::conformance::read(&blobs, &BlobId::new(&ctx).unwrap(), 10, 20).await;
    assert_eq!(stored, vec![2; 20]);
}

/// A node that loses its lease mid-body (here another owner takes it once
/// it has expired, as if the renewals could not reach the database) stops
/// the chunk: nothing is committed, and the session stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_whose_lease_is_lost_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(node_with(dir.path(), short_lease()));
    let (ctx, slow) = session_with_slow_chunk(&b, Duration::from_millis(3000)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let state = EmbeddedStore::open(dir.path().join("state.db")).unwrap();
    let far = i64::MAX / 4;
    assert!(state.lease(&ctx, "intruder", far, far + 1).await.unwrap());
    let r = slow.await.unwrap();
    assert!(matches!(r, Err(CoreError::Superseded)), "{r:?}");
    assert_eq!(state.get(&ctx).await.unwrap().unwrap().offset, 10);
}

/// A node starting up does not judge a session whose lease another node
/// holds: that node may be halfway through publishing it, and staging
/// seen then looks short (on S3, chunk objects already cleared), so
/// recovery quarantined a live upload and forgot its session (found in
/// review). Once the lease is free, a session whose bytes really are short
/// is quarantined as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_leaves_alone_a_session_another_node_holds() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path());
    let ctx = a
        .upload_chunk(req(0, None), body(vec![vec![1; 10]]))
        .await
        .unwrap()
        .context;
    let other = EmbeddedStore::open(dir.path().join("state.db")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(other.lease(&ctx, "node-b", now, now + 60_000).await.unwrap());
    let staged = dir.path().join("blobs/staging").join(&ctx);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_len(5)
        .unwrap();
    assert_eq!(a.recover().await.unwrap(), 0);
    assert!(staged.exists(), "not quarantined while node-b holds the session");
    assert!(other.get(&ctx).await.unwrap().is_some());

    other.release(&ctx, "node-b").await.unwrap();
    assert_eq!(a.recover().await.unwrap(), 1);
    assert!(!staged.exists(), "short bytes are quarantined");
    assert!(
        other.get(&ctx).await.unwrap().is_none(),
        "and the open session forgotten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_being_written_on_one_node_is_busy_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Arc::new(node(dir.path())), Arc::new(node(dir.path())));
    let ctx = a
        .upload_chunk(req(0, None), body(vec![vec![1; 10]]))
        .await
        .unwrap()
        .context;

    // B starts a chunk whose body is slow to arrive.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let slow: ByteStream = Box::pin(futures_util::stream::unfold(Some(rx), |rx| async move {
        let rx = rx?;
        let _ = rx.await;
        Some((Ok(Bytes::from(vec![2u8; 20])), None))
    }));
    let writer = {
        let (b, ctx) = (b.clone(), ctx.clone());
        tokio::spawn(async move { b.upload_chunk(req(10, Some(&ctx)), slow).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let busy = a.upload_chunk(req(10, Some(&ctx)), body(vec![vec![3; 20]])).await;
    assert!(matches!(busy, Err(CoreError::Busy)), "{busy:?}");
    tx.send(()).unwrap();
    assert_eq!(writer.await.unwrap().unwrap().offset, 30, "the lease holder wins");
    // The lease was given back: A continues the session.
    let r = a
        .upload_chunk(req(30, Some(&ctx)), body(vec![vec![4; 5]]))
        .await
        .unwrap();
    assert_eq!(r.offset, 35);
}

/// Delegates to a real store, but holds `lease` until the gate opens: the
/// moment between a node's read of the session and its lease.
struct GatedLease {
    inner: Arc<EmbeddedStore>,
    gate: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    /// Another owner takes the lease just before every leased advance.
    steal_before_commit: bool,
    /// Every lease call after the first (the renewals) reaches the store
    /// this long after it was made, even if its caller stops waiting.
    slow_renewals: Option<Duration>,
    leases: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl SessionStore for GatedLease {
    async fn get(&self, ctx: &str) -> Result<Option<Session>, StateError> {
        self.inner.get(ctx).await
    }
    async fn advance(&self, ctx: &str, change: Advance) -> Result<Advanced, StateError> {
        if self.steal_before_commit && change.lease.is_some() {
            let far = i64::MAX / 4;
            assert!(self.inner.lease(ctx, "intruder", far, far + 1).await?);
        }
        self.inner.advance(ctx, change).await
    }
    async fn get_object(&self, b: &str, o: &str) -> Result<Option<ObjectRecord>, StateError> {
        self.inner.get_object(b, o).await
    }
    async fn set_object_md5(&self, b: &str, o: &str, blob: &str, md5: &str) -> Result<bool, StateError> {
        self.inner.set_object_md5(b, o, blob, md5).await
    }
    async fn idle_sessions(&self, before: i64, limit: usize) -> Result<Vec<Session>, StateError> {
        self.inner.idle_sessions(before, limit).await
    }
    async fn delete_session(&self, ctx: &str) -> Result<(), StateError> {
        self.inner.delete_session(ctx).await
    }
    async fn open_sessions(&self, limit: usize) -> Result<Vec<Session>, StateError> {
        self.inner.open_sessions(limit).await
    }
    async fn count_open(&self) -> Result<u64, StateError> {
        self.inner.count_open().await
    }
    async fn list_objects(&self, b: Option<&str>, limit: usize) -> Result<Vec<ObjectRecord>, StateError> {
        self.inner.list_objects(b, limit).await
    }
    async fn delete_object(&self, b: &str, o: &str) -> Result<Option<ObjectRecord>, StateError> {
        self.inner.delete_object(b, o).await
    }
    async fn completions(&self, limit: usize) -> Result<Vec<(i64, Session)>, StateError> {
        self.inner.completions(limit).await
    }
    async fn ack_completion(&self, seq: i64) -> Result<(), StateError> {
        self.inner.ack_completion(seq).await
    }
    async fn lease(&self, ctx: &str, owner: &str, now_ms: i64, until_ms: i64) -> Result<bool, StateError> {
        if let Some(gate) = self.gate.lock().await.take() {
            let _ = gate.await;
        }
        let earlier = self.leases.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let (Some(delay), 1..) = (self.slow_renewals, earlier) {
            // Sent: it lands whether or not the caller still waits for it.
            let (inner, ctx, owner) = (self.inner.clone(), ctx.to_owned(), owner.to_owned());
            let on_its_way = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                inner.lease(&ctx, &owner, now_ms, until_ms).await
            });
            return on_its_way.await.expect("the renewal task");
        }
        self.inner.lease(ctx, owner, now_ms, until_ms).await
    }
    async fn release(&self, ctx: &str, owner: &str) -> Result<(), StateError> {
        self.inner.release(ctx, owner).await
    }
}

/// Regression: a node that read the session before another node committed
/// the same offset took the lease afterwards and overwrote the committed
/// chunk's staged bytes (seen with S3: a byte-exactness failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_after_another_nodes_commit_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(node(dir.path()));
    let (open, gate) = tokio::sync::oneshot::channel();
    let gated = Arc::new(GatedLease {
        inner: Arc::new(EmbeddedStore::open(dir.path().join("state.db")).unwrap()),
        gate: tokio::sync::Mutex::new(Some(gate)),
        steal_before_commit: false,
        slow_renewals: None,
        leases: Default::default(),
    });
    let blobs = Arc::new(Shared(FsStore::open(dir.path().join("blobs")).unwrap()));
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    let b = Arc::new(Node::new(
        blobs.clone(),
        gated,
        keys,
        Arc::new(NoCallbacks),
        Config::default(),
    ));

    let ctx = a
        .upload_chunk(req(0, None), body(vec![vec![1; 10]]))
        .await
        .unwrap()
        .context;
    let late = {
        let (b, ctx) = (b.clone(), ctx.clone());
        tokio::spawn(async move { b.upload_chunk(req(10, Some(&ctx)), body(vec![vec![9; 20]])).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // b waits at its lease
    assert_eq!(
        a.upload_chunk(req(10, Some(&ctx)), body(vec![vec![2; 20]]))
            .await
            .unwrap()
            .offset,
        30
    );
    open.send(()).unwrap();
    let r = late.await.unwrap();
    assert!(
        matches!(r, Err(CoreError::OffsetMismatch { committed: 30 })),
        "{r:?}"
    );
    let stored = upline_storage::conformance::read(blobs.as_ref(), &BlobId::new(&ctx).unwrap(), 10, 20).await;
    assert_eq!(stored, vec![2; 20], "the committed chunk's bytes are intact");
}

/// A lease lost after the chunk's bytes are stored (here taken by another
/// owner right before the commit, as when renewals stalled and the term
/// ran out) fails the commit itself: the chunk is not acknowledged and
/// the session stays where it was. Before the fence, the commit went
/// through on the offset check alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_after_the_lease_was_lost_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(GatedLease {
        inner: Arc::new(EmbeddedStore::open(dir.path().join("state.db")).unwrap()),
        gate: tokio::sync::Mutex::new(None),
        steal_before_commit: true,
        slow_renewals: None,
        leases: Default::default(),
    });
    let blobs = Arc::new(Shared(FsStore::open(dir.path().join("blobs")).unwrap()));
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    let b = Node::new(
        blobs,
        state.clone(),
        keys,
        Arc::new(NoCallbacks),
        Config::default(),
    );
    let ctx = b
        .upload_chunk(req(0, None), body(vec![vec![1; 10]]))
        .await
        .unwrap()
        .context;
    let r = b.upload_chunk(req(10, Some(&ctx)), body(vec![vec![2; 20]])).await;
    assert!(matches!(r, Err(CoreError::Superseded)), "{r:?}");
    assert_eq!(state.get(&ctx).await.unwrap().unwrap().offset, 10);
}

/// A renewal still on its way when the chunk ends is awaited before the
/// lease is released: dropped, it reached the store after the release and
/// held the lease for another term, and every other node answered Busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_in_flight_as_the_chunk_ends_does_not_outlive_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(GatedLease {
        inner: Arc::new(EmbeddedStore::open(dir.path().join("state.db")).unwrap()),
        gate: tokio::sync::Mutex::new(None),
        steal_before_commit: false,
        slow_renewals: Some(Duration::from_millis(300)),
        leases: Default::default(),
    });
    let blobs = Arc::new(Shared(FsStore::open(dir.path().join("blobs")).unwrap()));
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    // Term 1 s: the renewal leaves at ~333 ms and lands at ~633 ms; the
    // body ends at 400 ms, while it is on its way.
    let b = Arc::new(Node::new(
        blobs,
        state.clone(),
        keys,
        Arc::new(NoCallbacks),
        short_lease(),
    ));
    let (ctx, slow) = session_with_slow_chunk(&b, Duration::from_millis(400)).await;
    assert_eq!(slow.await.unwrap().unwrap().offset, 30);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        state
            .inner
            .lease(&ctx, "another-node", now, now + 1000)
            .await
            .unwrap(),
        "the lease is free after the chunk"
    );
}
