//! A client that lost its connection mid-chunk retries at once: the retry
//! at the committed offset preempts the stalled request that still holds
//! the session's lock, instead of waiting for the server to notice.

mod common;

use common::{NoCallbacks, req};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use upline_core::{Config, CoreError, Keyring, Node};
use upline_state::EmbeddedStore;
use upline_storage::conformance::body;
use upline_storage::{BlobId, ByteStream, FsStore};

/// A body that sends `first` and then never another byte.
fn stalled(first: Vec<u8>) -> ByteStream {
    let head = futures_util::stream::once(async move { Ok(Bytes::from(first)) });
    Box::pin(futures_util::StreamExt::chain(
        head,
        futures_util::stream::pending(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_at_the_committed_offset_preempts_a_stalled_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(FsStore::open(dir.path().join("blobs")).unwrap());
    let state = Arc::new(EmbeddedStore::open(dir.path().join("state.db")).unwrap());
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    let node = Arc::new(Node::new(
        blobs.clone(),
        state,
        keys,
        Arc::new(NoCallbacks),
        Config::default(),
    ));

    let ctx = node
        .upload_chunk(req(0, None), body(vec![vec![1; 10]]))
        .await
        .unwrap()
        .context;
    let (n, c) = (node.clone(), ctx.clone());
    let stuck = tokio::spawn(async move { n.upload_chunk(req(10, Some(&c)), stalled(vec![2; 5])).await });
    // Let it take the lock and start its body.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stuck.is_finished());

    let retry = node.upload_chunk(req(10, Some(&ctx)), body(vec![vec![3; 20]]));
    let retry = tokio::time::timeout(Duration::from_secs(10), retry)
        .await
        .expect("the retry preempts the stalled chunk instead of waiting for it");
    assert_eq!(retry.unwrap().offset, 30);
    let stuck = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("the stalled chunk gives up")
        .unwrap();
    assert!(matches!(stuck, Err(CoreError::Superseded)), "{stuck:?}");
    let stored = upline_storage::conformance::read(blobs.as_ref(), &BlobId::new(&ctx).unwrap(), 0, 30).await;
    assert_eq!(stored, [vec![1; 10], vec![3; 20]].concat());

    // A request at another offset cannot win, so it does not preempt: it
    // waits for the holder (here, one that stalls again) and is refused.
    let (n, c) = (node.clone(), ctx.clone());
    let stuck = tokio::spawn(async move { n.upload_chunk(req(30, Some(&c)), stalled(vec![4; 5])).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wrong = tokio::time::timeout(
        Duration::from_millis(500),
        node.upload_chunk(req(10, Some(&ctx)), body(vec![vec![5; 20]])),
    )
    .await;
    assert!(wrong.is_err(), "a request at a stale offset waits: {wrong:?}");
    assert!(!stuck.is_finished(), "and does not preempt the holder");
    stuck.abort();
}
