//! Storage faults: a store that fails on demand (a fault-injecting wrapper
//! around the real local-disk store). A write cut off by an I/O error, a
//! failed fsync, a failed publication or a failed read is a 500 that tells
//! the client little, leaves the committed offset as it was (a failed
//! publication comes after the commit: its replay publishes), never loses
//! an acknowledged byte, and the session continues once the fault clears —
//! while the other sessions carry on. The real full disk is in
//! crates/torture/tests/full_disk.rs.

mod common;

use common::NoCallbacks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use upline_core::{ChunkRequest, Config, CoreError, Keyring, Node};
use upline_proto::{ObjectPath, PutPolicy, ResumeParams, UploadParams};
use upline_state::EmbeddedStore;
use upline_storage::conformance::body;
use upline_storage::{BlobId, BlobStore, ByteStream, FsStore, StorageError};

/// What the next operation on a blob does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The write stores this many bytes of the body, then fails (EIO).
    WriteCut(usize),
    /// The write stores everything, then its fsync fails.
    Sync,
    Publish,
    Read,
}

/// Wraps the real store; a fault armed for a blob (or for every blob, `*`)
/// fires once, on the first operation it applies to.
struct Faulty {
    inner: FsStore,
    armed: Mutex<HashMap<String, Fault>>,
    fired: AtomicU64,
}

impl Faulty {
    fn new(inner: FsStore) -> Self {
        Self {
            inner,
            armed: Mutex::default(),
            fired: AtomicU64::new(0),
        }
    }

    fn arm(&self, blob: &str, fault: Fault) {
        self.armed.lock().unwrap().insert(blob.to_owned(), fault);
    }

    /// The fault armed for `id` if `applies`, disarmed as it fires.
    fn take(&self, id: &BlobId, applies: impl Fn(Fault) -> bool) -> Option<Fault> {
        let mut armed = self.armed.lock().unwrap();
        for key in [id.as_str(), "*"] {
            if let Some(&f) = armed.get(key)
                && applies(f)
            {
                armed.remove(key);
                self.fired.fetch_add(1, Ordering::SeqCst);
                return Some(f);
            }
        }
        None
    }
}

fn injected(what: &str) -> StorageError {
    StorageError::Io(std::io::Error::other(format!("{what} (injected)")))
}

#[async_trait::async_trait]
impl BlobStore for Faulty {
    async fn write_at(&self, id: &BlobId, offset: u64, body: ByteStream) -> Result<u64, StorageError> {
        match self.take(id, |f| matches!(f, Fault::WriteCut(_) | Fault::Sync)) {
            None => self.inner.write_at(id, offset, body).await,
            Some(Fault::WriteCut(n)) => {
                // Part of the body lands past the offset, then EIO.
                let mut left = n;
                let cut = body
                    .map(move |frame| {
                        frame.map(|mut b| {
                            let keep = b.len().min(left);
                            left -= keep;
                            b.truncate(keep);
                            b
                        })
                    })
                    .boxed();
                self.inner.write_at(id, offset, cut).await?;
                Err(injected("Input/output error"))
            }
            Some(_) => {
                self.inner.write_at(id, offset, body).await?;
                Err(injected("fsync failed"))
            }
        }
    }
    async fn read_at(&self, id: &BlobId, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        if self.take(id, |f| f == Fault::Read).is_some() {
            return Err(injected("read failed"));
        }
        self.inner.read_at(id, offset, len).await
    }
    async fn publish(&self, id: &BlobId, size: u64) -> Result<(), StorageError> {
        if self.take(id, |f| f == Fault::Publish).is_some() {
            return Err(injected("fsync of the directory failed"));
        }
        self.inner.publish(id, size).await
    }
    async fn delete(&self, id: &BlobId) -> Result<(), StorageError> {
        self.inner.delete(id).await
    }
    async fn list_staged(&self) -> Result<Vec<BlobId>, StorageError> {
        self.inner.list_staged().await
    }
}

fn token(object: &str) -> String {
    PutPolicy {
        bucket: "doc".into(),
        object: object.into(),
        expires: Some(2_000),
        ..Default::default()
    }
    .sign("ak", b"sk")
}

fn request(object: &str, offset: u64, complete: bool, context: Option<&str>) -> ChunkRequest {
    ChunkRequest {
        path: ObjectPath::parse(&format!("/doc/{object}")).unwrap(),
        params: UploadParams {
            offset,
            complete,
            context: context.map(str::to_owned),
        },
        token: Some(token(object)),
        content_length: None,
        content_type: None,
        content_md5: None,
        now: 1_000,
    }
}

fn setup(dir: &std::path::Path) -> (Arc<Faulty>, Node) {
    let store = Arc::new(Faulty::new(FsStore::open(dir.join("blobs")).unwrap()));
    let state = Arc::new(EmbeddedStore::open(dir.join("state.db")).unwrap());
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    let node = Node::new(
        store.clone(),
        state,
        keys,
        Arc::new(NoCallbacks),
        Config::default(),
    );
    (store, node)
}

async fn resume(node: &Node, object: &str, ctx: &str) -> Result<u64, CoreError> {
    let path = ObjectPath::parse(&format!("/doc/{object}")).unwrap();
    node.resume_point(
        &path,
        &ResumeParams {
            context: ctx.to_owned(),
        },
        Some(&token(object)),
        1_000,
    )
    .await
}

/// Bytes `offset..offset + len` of upload `seed`.
fn bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9).wrapping_add(seed.wrapping_mul(131)) >> 7) as u8)
        .collect()
}

async fn published(node: &Node, object: &str) -> Vec<u8> {
    let rec = node.object("doc", object).await.unwrap().unwrap();
    let mut s = node.read_object(&rec, 0, rec.size).await.unwrap();
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b.unwrap());
    }
    out
}

#[tokio::test]
async fn a_failed_write_is_500_and_leaves_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (store, node) = setup(dir.path());
    let r = node
        .upload_chunk(request("obj", 0, false, None), body(vec![vec![1; 100]]))
        .await
        .unwrap();
    let ctx = r.context;
    for fault in [Fault::Sync, Fault::WriteCut(20)] {
        store.arm(&ctx, fault);
        let err = node
            .upload_chunk(request("obj", 100, false, Some(&ctx)), body(vec![vec![2; 50]]))
            .await
            .unwrap_err();
        assert!(matches!(err, CoreError::Internal(_)), "{fault:?}: {err:?}");
        assert_eq!(err.status(), 500);
        assert_eq!(err.to_string(), "internal error", "the client is told little");
        assert_eq!(resume(&node, "obj", &ctx).await.unwrap(), 100, "{fault:?}");
    }

    // A failed publication: 500, and the exact replay of the final chunk
    // publishes once the fault is gone.
    let last = vec![3; 10];
    node.upload_chunk(request("obj", 100, false, Some(&ctx)), body(vec![vec![2; 50]]))
        .await
        .unwrap();
    store.arm(&ctx, Fault::Publish);
    let err = node
        .upload_chunk(request("obj", 150, true, Some(&ctx)), body(vec![last.clone()]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 500);
    let r = node
        .upload_chunk(request("obj", 150, true, Some(&ctx)), body(vec![last]))
        .await
        .unwrap();
    assert_eq!(r.offset, 160);
    let rec = node.object("doc", "obj").await.unwrap().unwrap();
    assert_eq!(rec.size, 160);
    assert!(
        dir.path()
            .join("blobs/objects")
            .join(&ctx[..2])
            .join(&ctx)
            .is_file(),
        "published after the replay"
    );
    let mut want = vec![1; 100];
    want.extend([2; 50]);
    want.extend([3; 10]);
    assert_eq!(published(&node, "obj").await, want);
}

/// Garbage a cut-off write left past the offset is overwritten by the
/// retry, even one of another length, and a read failing during a replay's
/// comparison is a 500 that changes nothing.
#[tokio::test]
async fn a_cut_off_write_leaves_nothing_the_retry_does_not_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (store, node) = setup(dir.path());
    let first = bytes(9, 0, 70_000);
    let ctx = node
        .upload_chunk(request("cut", 0, false, None), body(vec![first.clone()]))
        .await
        .unwrap()
        .context;
    store.arm(&ctx, Fault::WriteCut(50_000));
    let wrong = vec![0xEE; 90_000];
    let err = node
        .upload_chunk(request("cut", 70_000, false, Some(&ctx)), body(vec![wrong]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 500);
    store.arm(&ctx, Fault::Read);
    let err = node
        .upload_chunk(request("cut", 0, false, Some(&ctx)), body(vec![first.clone()]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 500, "a replay whose comparison cannot read");
    let rest = bytes(9, 70_000, 30_000);
    let r = node
        .upload_chunk(request("cut", 70_000, true, Some(&ctx)), body(vec![rest]))
        .await
        .unwrap();
    assert_eq!(r.offset, 100_000);
    assert_eq!(published(&node, "cut").await, bytes(9, 0, 100_000));
}

/// Many sessions, random chunks, random faults on random sessions: every
/// answer is a 200 that moved the offset by the chunk or a 500 that did
/// not (but for a failed publication, after its commit); a client retries
/// what failed; every object ends byte-exact and staging empty.
#[tokio::test]
async fn random_faults_never_lose_an_acknowledged_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (store, node) = setup(dir.path());
    let seed: u64 = std::env::var("UPLINE_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    struct Up {
        object: String,
        total: u64,
        ctx: Option<String>,
        acked: u64,
        /// The chunk to send again after a 500: (offset, len, complete).
        retry: Option<(u64, u64, bool)>,
        done: bool,
    }
    let mut ups: Vec<Up> = (0..40)
        .map(|i| Up {
            object: format!("f{i}"),
            total: rng.random_range(0..400_000),
            ctx: None,
            acked: 0,
            retry: None,
            done: false,
        })
        .collect();
    let (mut ok, mut failed) = (0u64, 0u64);
    for step in 0..1000 {
        let open: Vec<usize> = (0..ups.len()).filter(|&i| !ups[i].done).collect();
        let Some(&i) = open.get(rng.random_range(0..open.len().max(1))) else {
            break;
        };
        let u = &mut ups[i];
        let (offset, len, complete) = u.retry.unwrap_or_else(|| {
            let len = rng.random_range(0..=80_000u64).min(u.total - u.acked);
            (u.acked, len, u.acked + len == u.total)
        });
        if rng.random_bool(0.35) {
            let fault = match rng.random_range(0..4) {
                0 => Fault::WriteCut(rng.random_range(0..=len as usize)),
                1 => Fault::Sync,
                2 => Fault::Publish,
                _ => Fault::Read,
            };
            store.arm(u.ctx.as_deref().unwrap_or("*"), fault);
        }
        let fired_before = store.fired.load(Ordering::SeqCst);
        let data = bytes(i as u64, offset, len as usize);
        let answer = node
            .upload_chunk(
                request(&u.object, offset, complete, u.ctx.as_deref()),
                body(vec![data]),
            )
            .await;
        let fired = store.fired.load(Ordering::SeqCst) > fired_before;
        match answer {
            Ok(r) => {
                ok += 1;
                assert_eq!(
                    r.offset,
                    offset + len,
                    "seed {seed} step {step}: a 200 moves by the chunk"
                );
                u.ctx = Some(r.context);
                u.acked = r.offset;
                u.retry = None;
                u.done = complete;
            }
            Err(e) => {
                failed += 1;
                assert!(fired, "seed {seed} step {step}: only injected faults fail: {e:?}");
                assert_eq!(e.status(), 500, "seed {seed} step {step}: {e:?}");
                if let Some(ctx) = u.ctx.clone() {
                    let at = resume(&node, &u.object, &ctx).await.unwrap();
                    assert!(
                        at == u.acked || (complete && at == offset + len),
                        "seed {seed} step {step}: resume point {at}, acknowledged {}",
                        u.acked
                    );
                    u.retry = Some((offset, len, complete));
                }
            }
        }
        // The other sessions' acknowledged offsets stand.
        for other in ups.iter().filter(|o| o.ctx.is_some() && !o.done) {
            let at = resume(&node, &other.object, other.ctx.as_deref().unwrap())
                .await
                .unwrap();
            assert!(
                at >= other.acked,
                "seed {seed} step {step}: {} went back",
                other.object
            );
        }
    }
    // Faults clear; every upload finishes.
    store.armed.lock().unwrap().clear();
    for (i, u) in ups.iter_mut().enumerate() {
        while !u.done {
            let (offset, len, complete) = u.retry.take().unwrap_or_else(|| {
                let len = (u.total - u.acked).min(100_000);
                (u.acked, len, u.acked + len == u.total)
            });
            let r = node
                .upload_chunk(
                    request(&u.object, offset, complete, u.ctx.as_deref()),
                    body(vec![bytes(i as u64, offset, len as usize)]),
                )
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: {} after the faults: {e:?}", u.object));
            u.ctx = Some(r.context);
            u.acked = r.offset;
            u.done = complete;
        }
        assert_eq!(
            published(&node, &u.object).await,
            bytes(i as u64, 0, u.total as usize),
            "seed {seed}: {}",
            u.object
        );
    }
    let staged = std::fs::read_dir(dir.path().join("blobs/staging"))
        .unwrap()
        .count();
    assert_eq!(staged, 0, "seed {seed}: staging is empty");
    eprintln!(
        "faults: seed {seed}, {} faults injected, {ok} chunks accepted, {failed} refused with 500",
        store.fired.load(Ordering::SeqCst)
    );
    assert!(store.fired.load(Ordering::SeqCst) > 20, "faults were injected");
}
