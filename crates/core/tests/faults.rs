//! Storage faults: a store that fails on demand. A failed write or fsync
//! is a 500, leaves the committed offset as it was, and the session
//! continues once the fault clears.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use upline_core::{CallbackSender, ChunkRequest, Config, CoreError, Keyring, Node};
use upline_proto::callback::CallbackBody;
use upline_proto::{ObjectPath, PutPolicy, ResumeParams, UploadParams};
use upline_state::EmbeddedStore;
use upline_storage::conformance::body;
use upline_storage::{BlobId, BlobStore, ByteStream, FsStore, StorageError};

/// Wraps a store; while `fail` is set, writes and publications fail the
/// way a full disk or a failing fsync does, after consuming the body.
struct Faulty {
    inner: FsStore,
    fail: AtomicBool,
}

#[async_trait::async_trait]
impl BlobStore for Faulty {
    async fn write_at(&self, id: &BlobId, offset: u64, body: ByteStream) -> Result<u64, StorageError> {
        let n = self.inner.write_at(id, offset, body).await?;
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::Io(std::io::Error::other(
                "No space left on device (injected)",
            )));
        }
        Ok(n)
    }
    async fn read_at(&self, id: &BlobId, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        self.inner.read_at(id, offset, len).await
    }
    async fn publish(&self, id: &BlobId, size: u64) -> Result<(), StorageError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::Io(std::io::Error::other("fsync failed (injected)")));
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

struct NoCallbacks;

#[async_trait::async_trait]
impl CallbackSender for NoCallbacks {
    async fn post(&self, _: &str, _: &CallbackBody, _: Duration) -> Result<Bytes, String> {
        Err("no callbacks in this test".into())
    }
}

fn request(offset: u64, complete: bool, context: Option<&str>, token: &str) -> ChunkRequest {
    ChunkRequest {
        path: ObjectPath::parse("/doc/obj").unwrap(),
        params: UploadParams {
            offset,
            complete,
            context: context.map(str::to_owned),
        },
        token: Some(token.to_owned()),
        content_length: None,
        content_type: None,
        content_md5: None,
        now: 1_000,
    }
}

#[tokio::test]
async fn a_failed_write_is_500_and_leaves_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty {
        inner: FsStore::open(dir.path().join("blobs")).unwrap(),
        fail: AtomicBool::new(false),
    });
    let state = Arc::new(EmbeddedStore::open(dir.path().join("state.db")).unwrap());
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    let node = Node::new(
        store.clone(),
        state,
        keys,
        Arc::new(NoCallbacks),
        Config::default(),
    );
    let token = PutPolicy {
        bucket: "doc".into(),
        object: "obj".into(),
        expires: Some(2_000),
        ..Default::default()
    }
    .sign("ak", b"sk");

    let r = node
        .upload_chunk(request(0, false, None, &token), body(vec![vec![1; 100]]))
        .await
        .unwrap();
    let ctx = r.context;
    store.fail.store(true, Ordering::SeqCst);
    let err = node
        .upload_chunk(request(100, false, Some(&ctx), &token), body(vec![vec![2; 50]]))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::Internal(_)), "{err:?}");
    assert_eq!(err.status(), 500);
    assert_eq!(err.to_string(), "internal error", "the client is told little");
    let resume = |ctx: String| ResumeParams { context: ctx };
    let path = ObjectPath::parse("/doc/obj").unwrap();
    assert_eq!(
        node.resume_point(&path, &resume(ctx.clone()), Some(&token), 1_000)
            .await
            .unwrap(),
        100
    );

    // A failed publication: 500, and the exact replay of the final chunk
    // publishes once the fault is gone.
    store.fail.store(false, Ordering::SeqCst);
    let last = vec![3; 10];
    node.upload_chunk(request(100, false, Some(&ctx), &token), body(vec![vec![2; 50]]))
        .await
        .unwrap();
    store.fail.store(true, Ordering::SeqCst);
    let err = node
        .upload_chunk(request(150, true, Some(&ctx), &token), body(vec![last.clone()]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 500);
    store.fail.store(false, Ordering::SeqCst);
    let r = node
        .upload_chunk(request(150, true, Some(&ctx), &token), body(vec![last]))
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
}
