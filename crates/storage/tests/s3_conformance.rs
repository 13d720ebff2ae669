//! The shared BlobStore suite against a real Garage, plus what only a
//! multipart store can show: parts that fill across chunks, a tail, and
//! another store (another node) finishing what one started.

use upline_storage::conformance::{self, body, read};
use upline_storage::s3::S3Store;
use upline_storage::testing::Garage;
use upline_storage::{BlobId, BlobStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms() {
    let garage = Garage::start();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let cfg = garage.bucket(&format!("conform-{n}"));
        async move { S3Store::open(cfg).await.unwrap() }
    })
    .await;
}

/// Two stores on one bucket: two nodes.
async fn two_nodes(garage: &Garage, bucket: &str) -> (S3Store, S3Store) {
    let cfg = garage.bucket(bucket);
    (
        S3Store::open(cfg.clone()).await.unwrap(),
        S3Store::open(cfg).await.unwrap(),
    )
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_coalesce_into_parts_any_node_can_complete() {
    let garage = Garage::start();
    let (node_a, node_b) = two_nodes(&garage, "parts").await;
    let id = BlobId::new("session-1").unwrap();
    // 3 MiB chunks, alternating nodes: parts of 5 MiB fill across chunks.
    let chunk = 3 << 20;
    let data = pattern(17 << 20, 7);
    let mut offset = 0;
    for (i, piece) in data.chunks(chunk).enumerate() {
        let store = if i % 2 == 0 { &node_a } else { &node_b };
        let n = store
            .write_at(&id, offset, body(vec![piece.to_vec()]))
            .await
            .unwrap();
        offset += n;
    }
    assert_eq!(
        read(&node_b, &id, 4 << 20, 2 << 20).await,
        data[4 << 20..6 << 20],
        "staged reads cross parts"
    );
    node_b.publish(&id, data.len() as u64).await.unwrap();
    assert_eq!(read(&node_a, &id, 0, data.len() as u64).await, data);
    assert!(node_a.list_staged().await.unwrap().is_empty(), "staging cleared");

    // A retried chunk that filled a part replaces the part's bytes.
    let id = BlobId::new("session-2").unwrap();
    node_a
        .write_at(&id, 0, body(vec![pattern(4 << 20, 1)]))
        .await
        .unwrap();
    node_a
        .write_at(&id, 4 << 20, body(vec![pattern(2 << 20, 2)]))
        .await
        .unwrap();
    node_b
        .write_at(&id, 4 << 20, body(vec![pattern(2 << 20, 3)]))
        .await
        .unwrap();
    node_b.publish(&id, 6 << 20).await.unwrap();
    let mut want = pattern(4 << 20, 1);
    want.extend(pattern(2 << 20, 3));
    assert_eq!(read(&node_a, &id, 0, 6 << 20).await, want);
}

/// A node keeps a session's chunks in memory between writes and builds
/// parts from them; a write it was told was not committed must not be
/// used: another node may have written other bytes at the same offset
/// since (here, a client that changed its mind between two nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_forgets_an_abandoned_write_and_parts_hold_the_committed_bytes() {
    let garage = Garage::start();
    let (node_a, node_b) = two_nodes(&garage, "abandoned").await;
    let id = BlobId::new("session-4").unwrap();
    let (x, y, z) = (pattern(3 << 20, 1), pattern(3 << 20, 2), pattern(3 << 20, 3));
    node_a.write_at(&id, 0, body(vec![x])).await.unwrap();
    // Its commit failed; the client went to node B with other bytes.
    node_a.abandon(&id);
    node_b.write_at(&id, 0, body(vec![y.clone()])).await.unwrap();
    // The next chunk reaches node A again and fills the first 5 MiB part.
    node_a
        .write_at(&id, 3 << 20, body(vec![z.clone()]))
        .await
        .unwrap();
    node_a.publish(&id, 6 << 20).await.unwrap();
    let mut want = y;
    want.extend(z);
    assert!(
        read(&node_b, &id, 0, 6 << 20).await == want,
        "the part holds B's committed bytes"
    );
}

/// Regression (found by the crash loop): a crash while publication cleared
/// staging left some staged objects (not the first chunk) behind; the
/// publication recovery then retried failed ("staged bytes at 0 are
/// missing") and recovery's staged-size check read the blob as truncated.
/// Published means published: the rest is cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_whose_cleanup_a_crash_cut_short_is_finished() {
    use object_store::ObjectStore;
    let garage = Garage::start();
    let cfg = garage.bucket("cleanup");
    let store = S3Store::open(cfg.clone()).await.unwrap();
    let id = BlobId::new("session-3").unwrap();
    let data = pattern(7 << 20, 5);
    store
        .write_at(&id, 0, body(vec![data[..3 << 20].to_vec()]))
        .await
        .unwrap();
    store
        .write_at(&id, 3 << 20, body(vec![data[3 << 20..].to_vec()]))
        .await
        .unwrap();
    // Keep a copy of a staged object the cleanup will delete, publish, and
    // put it back: what a crash in the middle of the cleanup leaves.
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_access_key_id(&cfg.access_key)
        .with_secret_access_key(&cfg.secret_key)
        .with_endpoint(cfg.endpoint.clone().unwrap())
        .with_allow_http(true)
        .build()
        .unwrap();
    let left = object_store::path::Path::from(format!("staging/session-3/c{:020}", 3u64 << 20));
    let kept = s3.get(&left).await.unwrap().bytes().await.unwrap();
    store.publish(&id, data.len() as u64).await.unwrap();
    s3.put(&left, kept.into()).await.unwrap();
    assert_eq!(store.list_staged().await.unwrap(), vec![id.clone()]);

    assert_eq!(
        store.staged_size(&id).await.unwrap(),
        None,
        "published, not staged"
    );
    store.publish(&id, data.len() as u64).await.unwrap();
    assert!(
        store.list_staged().await.unwrap().is_empty(),
        "the cleanup finished"
    );
    assert_eq!(read(&store, &id, 0, data.len() as u64).await, data);
}
