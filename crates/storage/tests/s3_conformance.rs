//! The shared BlobStore suite against a real Garage, in both layouts,
//! plus what only a multipart store can show: parts that fill across
//! chunks or one part per chunk, a tail, and another store (another node)
//! finishing what one started.

use futures_util::StreamExt;
use object_store::ObjectStore;
use upline_storage::conformance::{self, body, read};
use upline_storage::s3::{Layout, S3Config, S3Store};
use upline_storage::testing::Garage;
use upline_storage::{BlobId, BlobStore, StorageError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms_in_both_layouts() {
    let garage = Garage::start();
    for layout in [Layout::Parts, Layout::Chunks] {
        let mut n = 0;
        conformance::run_all(|| {
            n += 1;
            let mut cfg = garage.bucket(&format!("conform-{layout:?}-{n}").to_lowercase());
            cfg.layout = layout;
            async move {
                let store = S3Store::open(cfg).await.unwrap();
                assert_eq!(store.layout(), layout);
                store
            }
        })
        .await;
    }
}

/// Two stores on one bucket: two nodes.
async fn two_nodes(garage: &Garage, bucket: &str, layout: Layout) -> (S3Store, S3Store) {
    let mut cfg = garage.bucket(bucket);
    cfg.layout = layout;
    (
        S3Store::open(cfg.clone()).await.unwrap(),
        S3Store::open(cfg).await.unwrap(),
    )
}

/// A store in the parts layout on a new bucket, and that bucket as a plain
/// client sees it.
async fn parts_store(garage: &Garage, bucket: &str) -> (S3Store, object_store::aws::AmazonS3) {
    let mut cfg = garage.bucket(bucket);
    cfg.layout = Layout::Parts;
    (S3Store::open(cfg.clone()).await.unwrap(), raw(&cfg))
}

/// The bucket as a plain client sees it.
fn raw(cfg: &S3Config) -> object_store::aws::AmazonS3 {
    upline_storage::testing::plain_client(cfg).unwrap()
}

/// The names under `staging/<id>/`.
async fn staged_names(s3: &object_store::aws::AmazonS3, id: &str) -> Vec<String> {
    let listing = s3
        .list_with_delimiter(Some(&object_store::path::Path::from(format!("staging/{id}"))))
        .await
        .unwrap();
    let mut names: Vec<String> = listing
        .objects
        .iter()
        .map(|m| m.location.filename().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_coalesce_into_parts_any_node_can_complete() {
    let garage = Garage::start();
    let (node_a, node_b) = two_nodes(&garage, "parts", Layout::Chunks).await;
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

/// Nodes whose part sizes differ (`s3_part_size` changed across a restart,
/// or set otherwise on another node) share a chunks-layout session. The
/// publishing node numbers parts by its own size, and a part of the other
/// size holds another range: it is uploaded again from the chunks. Before,
/// the object came out 15 MiB long for 18 MiB committed (found in review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_of_another_part_size_are_made_again_at_publication() {
    let garage = Garage::start();
    let mut small = garage.bucket("mixed-parts");
    small.layout = Layout::Chunks;
    let mut large = small.clone();
    small.part_size = 5 << 20;
    large.part_size = 8 << 20;
    let (a, b) = (
        S3Store::open(small).await.unwrap(),
        S3Store::open(large).await.unwrap(),
    );
    let id = BlobId::new("mixed").unwrap();
    let data = pattern(18 << 20, 5);
    // A writes 0–12 MiB (its parts 1 and 2: 0–5 and 5–10 MiB), B the rest
    // (its part 2 is 8–16 MiB).
    let mut offset = 0;
    for piece in data.chunks(4 << 20) {
        let store = if offset < 12 << 20 { &a } else { &b };
        offset += store
            .write_at(&id, offset, body(vec![piece.to_vec()]))
            .await
            .unwrap();
    }
    b.publish(&id, data.len() as u64).await.unwrap();
    let got = read(&a, &id, 0, data.len() as u64).await;
    assert!(
        got == data,
        "published {} bytes, {} committed",
        got.len(),
        data.len()
    );
}

/// A node keeps a session's chunks in memory between writes and builds
/// parts from them; a write it was told was not committed must not be
/// used: another node may have written other bytes at the same offset
/// since (here, a client that changed its mind between two nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_forgets_an_abandoned_write_and_parts_hold_the_committed_bytes() {
    let garage = Garage::start();
    let (node_a, node_b) = two_nodes(&garage, "abandoned", Layout::Chunks).await;
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
    let garage = Garage::start();
    let mut cfg = garage.bucket("cleanup");
    cfg.layout = Layout::Chunks;
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
    let s3 = raw(&cfg);
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

fn md5(bytes: &[u8]) -> [u8; 16] {
    fast_md5::digest(bytes)
}

/// Garage takes parts under 5 MiB: `auto` picks the parts layout there,
/// each chunk is one part (no chunk object is written), any node carries
/// a session on from the bucket alone, a retry replaces its part, and
/// publication drops the parts past the published size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_chunk_is_one_part_and_any_node_carries_on() {
    let garage = Garage::start();
    let cfg = garage.bucket("onepart");
    assert_eq!(cfg.layout, Layout::Auto);
    let (node_a, node_b) = (
        S3Store::open(cfg.clone()).await.unwrap(),
        S3Store::open(cfg.clone()).await.unwrap(),
    );
    assert_eq!(node_a.layout(), Layout::Parts, "Garage passes the probe");
    let s3 = raw(&cfg);
    assert!(
        s3.list(Some(&"probe".into())).next().await.is_none(),
        "the probe leaves nothing behind"
    );

    let id = BlobId::new("session-p1").unwrap();
    let data = pattern(11 << 20, 3);
    let pieces: Vec<&[u8]> = data.chunks(3 << 20).collect();
    let mut offset = 0;
    for (i, piece) in pieces.iter().enumerate() {
        let store = if i % 2 == 0 { &node_a } else { &node_b };
        offset += store
            .write_at(&id, offset, body(vec![piece.to_vec()]))
            .await
            .unwrap();
    }
    assert_eq!(
        staged_names(&s3, "session-p1").await,
        vec!["mpu"],
        "no chunk object: the bytes are in the parts"
    );
    assert_eq!(node_b.staged_size(&id).await.unwrap(), Some(data.len() as u64));
    // Each chunk's MD5 is known from its part; nothing else is.
    for (i, piece) in pieces.iter().enumerate() {
        let at = (i as u64) * (3 << 20);
        assert_eq!(
            node_a.stored_md5(&id, at, piece.len() as u64).await.unwrap(),
            Some(md5(piece))
        );
    }
    assert_eq!(
        node_a.stored_md5(&id, 0, 1).await.unwrap(),
        None,
        "no part of 1 byte at 0"
    );
    assert_eq!(node_a.stored_md5(&id, 1, 3 << 20).await.unwrap(), None);

    // A retry of the last chunk with other bytes (its first try was not
    // committed) replaces its part, on the other node.
    let last_at = 9 << 20;
    let other = pattern(1 << 20, 9);
    node_a
        .write_at(&id, last_at, body(vec![other.clone()]))
        .await
        .unwrap();
    assert_eq!(
        node_b.stored_md5(&id, last_at, 1 << 20).await.unwrap(),
        Some(md5(&other))
    );
    // One more chunk, then a publication that leaves it out.
    node_b
        .write_at(&id, 10 << 20, body(vec![pattern(500, 1)]))
        .await
        .unwrap();
    node_b.publish(&id, 10 << 20).await.unwrap();
    let mut want = data[..last_at as usize].to_vec();
    want.extend(&other);
    assert!(read(&node_a, &id, 0, 11 << 20).await == want, "published bytes");
    assert!(node_a.list_staged().await.unwrap().is_empty(), "staging cleared");
    assert_eq!(node_a.staged_size(&id).await.unwrap(), None);
    node_a.publish(&id, 10 << 20).await.unwrap();
}

/// Reading a session in progress assembles its parts into one chunk
/// object; the session then carries on in the chunks layout, and a chunk
/// rewritten inside the assembled bytes overrides them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_assembles_and_the_session_carries_on_in_chunks() {
    let garage = Garage::start();
    let (node_a, node_b) = two_nodes(&garage, "assemble", Layout::Parts).await;
    let s3 = raw(&garage.config_for("assemble"));
    let id = BlobId::new("session-p2").unwrap();
    let (x, y, z) = (pattern(2 << 20, 1), pattern(2 << 20, 2), pattern(2 << 20, 3));
    node_a.write_at(&id, 0, body(vec![x.clone()])).await.unwrap();
    node_a
        .write_at(&id, 2 << 20, body(vec![y.clone()]))
        .await
        .unwrap();
    node_a
        .write_at(&id, 4 << 20, body(vec![z.clone()]))
        .await
        .unwrap();
    // A read of the first bytes assembles every part (the store does not
    // know which are committed).
    assert!(read(&node_b, &id, 0, 1 << 20).await == x[..1 << 20]);
    assert_eq!(staged_names(&s3, "session-p2").await, vec![format!("c{:020}", 0)]);
    assert_eq!(node_a.staged_size(&id).await.unwrap(), Some(6 << 20));
    // The third chunk again, other bytes (its commit had failed), then
    // a fourth: both chunk objects beside the assembled one.
    let z2 = pattern(1 << 20, 4);
    let w = pattern(3 << 20, 5);
    node_a.abandon(&id);
    node_b
        .write_at(&id, 4 << 20, body(vec![z2.clone()]))
        .await
        .unwrap();
    node_a
        .write_at(&id, 5 << 20, body(vec![w.clone()]))
        .await
        .unwrap();
    let want = [x, y, z2, w].concat();
    assert_eq!(node_b.staged_size(&id).await.unwrap(), Some(want.len() as u64));
    assert!(
        read(&node_a, &id, 0, 8 << 20).await == want,
        "staged read across the override"
    );
    node_b.publish(&id, want.len() as u64).await.unwrap();
    assert!(read(&node_a, &id, 0, 8 << 20).await == want, "published");
    assert!(node_a.list_staged().await.unwrap().is_empty());
}

/// A crash between the assembly and the removal of the marker leaves both:
/// the chunk object says which layout the session is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_left_beside_an_assembled_session_is_ignored() {
    let garage = Garage::start();
    let (store, s3) = parts_store(&garage, "leftover").await;
    let id = BlobId::new("session-p3").unwrap();
    let data = pattern(3 << 20, 6);
    store.write_at(&id, 0, body(vec![data.clone()])).await.unwrap();
    let marker = object_store::path::Path::from("staging/session-p3/mpu");
    let kept = s3.get(&marker).await.unwrap().bytes().await.unwrap();
    assert!(read(&store, &id, 0, 3 << 20).await == data);
    s3.put(&marker, kept.into()).await.unwrap();
    assert_eq!(store.staged_size(&id).await.unwrap(), Some(3 << 20));
    store
        .write_at(&id, 3 << 20, body(vec![b"tail".to_vec()]))
        .await
        .unwrap();
    store.publish(&id, (3 << 20) + 4).await.unwrap();
    let mut want = data;
    want.extend(b"tail");
    assert!(read(&store, &id, 0, 4 << 20).await == want);
    assert!(store.list_staged().await.unwrap().is_empty());
}

/// S3 numbers parts up to 10,000: a chunk past the store's limit is
/// refused as a limit (not a failure to retry), and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_past_the_part_limit_is_refused() {
    let garage = Garage::start();
    let store = parts_store(&garage, "limit").await.0.with_max_parts(3);
    let id = BlobId::new("session-p4").unwrap();
    for i in 0..3u64 {
        store
            .write_at(&id, i * 10, body(vec![vec![i as u8; 10]]))
            .await
            .unwrap();
    }
    let r = store.write_at(&id, 30, body(vec![vec![9; 10]])).await;
    assert!(
        matches!(&r, Err(StorageError::Limit(m)) if m.contains("3 chunks")),
        "{r:?}"
    );
    // A rewrite of the last part is still in the limit.
    store.write_at(&id, 20, body(vec![vec![7; 5]])).await.unwrap();
    store.publish(&id, 25).await.unwrap();
    let mut want = vec![0u8; 10];
    want.extend([1u8; 10]);
    want.extend([7u8; 5]);
    assert_eq!(read(&store, &id, 0, 100).await, want);
}

/// Deleting a parts-layout session aborts its multipart upload: its parts
/// are nowhere under `staging/`, so nothing else would ever free them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_parts_session_aborts_its_upload() {
    use object_store::multipart::MultipartStore;
    let garage = Garage::start();
    let (store, s3) = parts_store(&garage, "aborted").await;
    let id = BlobId::new("session-p5").unwrap();
    store
        .write_at(&id, 0, body(vec![pattern(1 << 20, 2)]))
        .await
        .unwrap();
    let marker = object_store::path::Path::from("staging/session-p5/mpu");
    let upload = String::from_utf8(s3.get(&marker).await.unwrap().bytes().await.unwrap().to_vec()).unwrap();
    let key = object_store::path::Path::from(format!("staging/session-p5/c{:020}", 0));
    store.delete(&id).await.unwrap();
    assert!(staged_names(&s3, "session-p5").await.is_empty());
    // Aborted, not just forgotten: there is no upload left to abort.
    let gone = s3.abort_multipart(&key, &upload).await;
    assert!(
        matches!(gone, Err(object_store::Error::NotFound { .. })),
        "the multipart upload outlived its session: {gone:?}"
    );
}

/// Multipart uploads a crash left unnamed are aborted once old enough;
/// the upload a live session's marker names, a young orphan and an upload
/// under a key upline does not use are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_aborts_uploads_no_record_names() {
    use object_store::multipart::{MultipartStore, PartId};
    use object_store::path::Path;
    use std::time::Duration;
    let garage = Garage::start();
    let (store, s3) = parts_store(&garage, "orphans").await;
    let live = BlobId::new("live-1").unwrap();
    let first = pattern(1 << 20, 3);
    store.write_at(&live, 0, body(vec![first.clone()])).await.unwrap();
    let c0 = |id: &str| Path::from(format!("staging/{id}/c{:020}", 0));
    // A session whose node died before its marker, holding a part.
    let dead = s3.create_multipart(&c0("dead-1")).await.unwrap();
    let part: PartId = s3
        .put_part(&c0("dead-1"), &dead, 0, vec![7u8; 1 << 20].into())
        .await
        .unwrap();
    drop(part);
    // A chunks-layout publication cut short before its record, a probe cut
    // short, and a second upload of the live session its marker does not name.
    let publication = s3.create_multipart(&Path::from("blobs/dead-2")).await.unwrap();
    let probe = s3.create_multipart(&Path::from("probe/dead-3")).await.unwrap();
    let stray = s3.create_multipart(&c0("live-1")).await.unwrap();
    let foreign = s3.create_multipart(&Path::from("other/x")).await.unwrap();

    assert_eq!(
        store.sweep_orphans(Duration::from_secs(3600)).await.unwrap(),
        0,
        "all are young"
    );
    assert_eq!(store.sweep_orphans(Duration::ZERO).await.unwrap(), 4);
    for (key, upload) in [
        (c0("dead-1"), &dead),
        (Path::from("blobs/dead-2"), &publication),
        (Path::from("probe/dead-3"), &probe),
        (c0("live-1"), &stray),
    ] {
        let gone = s3.abort_multipart(&key, upload).await;
        assert!(
            matches!(gone, Err(object_store::Error::NotFound { .. })),
            "{key} was not aborted: {gone:?}"
        );
    }
    s3.abort_multipart(&Path::from("other/x"), &foreign)
        .await
        .expect("an upload under a key upline does not use is left alone");
    // The live session goes on and publishes every byte.
    let second = pattern(1 << 20, 4);
    store
        .write_at(&live, 1 << 20, body(vec![second.clone()]))
        .await
        .unwrap();
    store.publish(&live, 2 << 20).await.unwrap();
    assert_eq!(read(&store, &live, 0, 2 << 20).await, [first, second].concat());
    assert_eq!(store.sweep_orphans(Duration::ZERO).await.unwrap(), 0);
}
