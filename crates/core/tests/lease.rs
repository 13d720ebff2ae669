//! Two nodes on one shared store: while one writes a chunk of a session,
//! the other's write to that session is refused (400 Busy), not
//! interleaved; afterwards either can continue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use upline_core::{CallbackSender, ChunkRequest, Config, CoreError, Keyring, Node};
use upline_proto::callback::CallbackBody;
use upline_proto::{ObjectPath, PutPolicy, UploadParams};
use upline_state::EmbeddedStore;
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
    fn shared(&self) -> bool {
        true
    }
}

struct NoCallbacks;

#[async_trait::async_trait]
impl CallbackSender for NoCallbacks {
    async fn post(&self, _: &str, _: &CallbackBody, _: Duration) -> Result<Bytes, String> {
        Err("none".into())
    }
}

fn node(dir: &std::path::Path) -> Node {
    let blobs = Arc::new(Shared(FsStore::open(dir.join("blobs")).unwrap()));
    let state = Arc::new(EmbeddedStore::open(dir.join("state.db")).unwrap());
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    Node::new(blobs, state, keys, Arc::new(NoCallbacks), Config::default())
}

fn req(offset: u64, ctx: Option<&str>) -> ChunkRequest {
    let token = PutPolicy { bucket: "doc".into(), object: "o".into(), expires: Some(10_000), ..Default::default() }
        .sign("ak", b"sk");
    ChunkRequest {
        path: ObjectPath::parse("/doc/o").unwrap(),
        params: UploadParams { offset, complete: false, context: ctx.map(str::to_owned) },
        token: Some(token),
        content_length: None,
        content_type: None,
        content_md5: None,
        now: 1_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_being_written_on_one_node_is_busy_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Arc::new(node(dir.path())), Arc::new(node(dir.path())));
    let ctx = a.upload_chunk(req(0, None), body(vec![vec![1; 10]])).await.unwrap().context;

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
    let r = a.upload_chunk(req(30, Some(&ctx)), body(vec![vec![4; 5]])).await.unwrap();
    assert_eq!(r.offset, 35);
}
