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

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_coalesce_into_parts_any_node_can_complete() {
    let garage = Garage::start();
    let cfg = garage.bucket("parts");
    let (node_a, node_b) = (
        S3Store::open(cfg.clone()).await.unwrap(),
        S3Store::open(cfg).await.unwrap(),
    );
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
