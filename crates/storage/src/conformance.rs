//! The conformance suite every [`BlobStore`] implementation runs.
//!
//! Each check takes a fresh, empty store and panics on a broken promise.
//! Implementations call [`run_all`] from their own tests, against the real
//! backend (a temp directory, a real S3-compatible server, ...).

use std::io;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::{BlobId, BlobStore, ByteStream, StorageError};

/// Runs every check on the stores `fresh` makes.
pub async fn run_all<S, F, Fut>(mut fresh: F)
where
    S: BlobStore,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    write_then_read_back(&fresh().await).await;
    first_write_creates_later_writes_need_blob(&fresh().await).await;
    empty_blob_publishes_empty(&fresh().await).await;
    failed_body_leaves_earlier_bytes(&fresh().await).await;
    rewrite_overwrites_garbage(&fresh().await).await;
    publish_truncates_and_is_idempotent(&fresh().await).await;
    delete_and_list(&fresh().await).await;
    large_write_in_many_frames(&fresh().await).await;
    unaligned_writes_and_a_rewrite(&fresh().await).await;
    sizes_listing_and_quarantine(&fresh().await).await;
}

/// A body of the given frames.
pub fn body(frames: Vec<Vec<u8>>) -> ByteStream {
    Box::pin(futures_util::stream::iter(
        frames.into_iter().map(|f| Ok(Bytes::from(f))),
    ))
}

/// A body that yields `frames` and then fails, like a client gone mid-chunk.
pub fn broken_body(frames: Vec<Vec<u8>>) -> ByteStream {
    let failure = std::iter::once(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client gone")));
    Box::pin(futures_util::stream::iter(
        frames.into_iter().map(|f| Ok(Bytes::from(f))).chain(failure),
    ))
}

/// Reads `len` bytes at `offset` into memory (test sizes only).
pub async fn read(store: &dyn BlobStore, id: &BlobId, offset: u64, len: u64) -> Vec<u8> {
    let mut s = store.read_at(id, offset, len).await.expect("read_at");
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b.expect("read frame"));
    }
    out
}

fn id(s: &str) -> BlobId {
    BlobId::new(s).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn write_then_read_back(store: &dyn BlobStore) {
    let b = id("blob-a");
    assert_eq!(
        store
            .write_at(&b, 0, body(vec![b"hello ".to_vec()]))
            .await
            .unwrap(),
        6
    );
    assert_eq!(
        store
            .write_at(&b, 6, body(vec![b"wor".to_vec(), b"ld".to_vec()]))
            .await
            .unwrap(),
        5
    );
    assert_eq!(read(store, &b, 0, 11).await, b"hello world");
    assert_eq!(
        read(store, &b, 6, 100).await,
        b"world",
        "short blob ends the stream early"
    );
}

async fn first_write_creates_later_writes_need_blob(store: &dyn BlobStore) {
    let r = store.write_at(&id("nope"), 5, body(vec![b"x".to_vec()])).await;
    assert!(
        matches!(r, Err(StorageError::NotFound)),
        "write past 0 of a missing blob: {r:?}"
    );
    assert!(matches!(
        store.read_at(&id("nope"), 0, 1).await,
        Err(StorageError::NotFound)
    ));
}

async fn empty_blob_publishes_empty(store: &dyn BlobStore) {
    let b = id("empty");
    assert_eq!(store.write_at(&b, 0, body(vec![])).await.unwrap(), 0);
    store.publish(&b, 0).await.unwrap();
    assert_eq!(read(store, &b, 0, 10).await, b"");
}

async fn failed_body_leaves_earlier_bytes(store: &dyn BlobStore) {
    let b = id("broken");
    store.write_at(&b, 0, body(vec![pattern(1000, 1)])).await.unwrap();
    let r = store
        .write_at(&b, 1000, broken_body(vec![pattern(600_000, 2)]))
        .await;
    assert!(
        matches!(r, Err(StorageError::Body(_))),
        "body failure is reported as such: {r:?}"
    );
    assert_eq!(read(store, &b, 0, 1000).await, pattern(1000, 1));
}

async fn rewrite_overwrites_garbage(store: &dyn BlobStore) {
    let b = id("rewrite");
    store.write_at(&b, 0, body(vec![pattern(100, 1)])).await.unwrap();
    let _ = store.write_at(&b, 100, broken_body(vec![pattern(5000, 9)])).await;
    store
        .write_at(&b, 100, body(vec![pattern(300, 3)]))
        .await
        .unwrap();
    let mut want = pattern(100, 1);
    want.extend(pattern(300, 3));
    assert_eq!(read(store, &b, 0, 400).await, want);
}

async fn publish_truncates_and_is_idempotent(store: &dyn BlobStore) {
    let b = id("pub");
    store
        .write_at(&b, 0, body(vec![pattern(700_000, 4)]))
        .await
        .unwrap();
    store.publish(&b, 500_000).await.unwrap();
    store.publish(&b, 500_000).await.unwrap();
    assert_eq!(read(store, &b, 0, 1 << 20).await, pattern(700_000, 4)[..500_000]);
    assert!(!store.list_staged().await.unwrap().contains(&b));
    let r = store.write_at(&b, 500_000, body(vec![b"x".to_vec()])).await;
    assert!(
        matches!(r, Err(StorageError::NotFound)),
        "published blobs take no writes: {r:?}"
    );
    assert!(matches!(
        store.publish(&id("never"), 0).await,
        Err(StorageError::NotFound)
    ));
}

async fn delete_and_list(store: &dyn BlobStore) {
    let (s1, s2, p) = (id("s1"), id("s2"), id("p1"));
    for b in [&s1, &s2, &p] {
        store.write_at(b, 0, body(vec![b"x".to_vec()])).await.unwrap();
    }
    store.publish(&p, 1).await.unwrap();
    assert_eq!(store.list_staged().await.unwrap(), vec![s1.clone(), s2.clone()]);
    store.delete(&s1).await.unwrap();
    store.delete(&p).await.unwrap();
    store.delete(&id("missing")).await.unwrap();
    assert_eq!(store.list_staged().await.unwrap(), vec![s2]);
    assert!(matches!(
        store.read_at(&p, 0, 1).await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        store.read_at(&s1, 0, 1).await,
        Err(StorageError::NotFound)
    ));
}

async fn large_write_in_many_frames(store: &dyn BlobStore) {
    let b = id("large");
    let data = pattern(4 * 1024 * 1024 + 17, 5);
    let frames: Vec<Vec<u8>> = data.chunks(16_384 + 3).map(<[u8]>::to_vec).collect();
    assert_eq!(
        store.write_at(&b, 0, body(frames)).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(read(store, &b, 0, data.len() as u64).await, data);
}

/// Chunks at offsets that are not multiples of any block or page size, in
/// frames of odd sizes, some crossing several of a store's write blocks,
/// then a shorter retry of the last one: what a store that writes aligned
/// blocks (`O_DIRECT`) must get right at both ends of every write.
async fn unaligned_writes_and_a_rewrite(store: &dyn BlobStore) {
    let b = id("unaligned");
    let mut model = Vec::new();
    for (i, len) in [1usize, 4095, 5000, 300_001, 700_003].into_iter().enumerate() {
        let data = pattern(len, i as u8 + 1);
        let frames = data.chunks(7919).map(<[u8]>::to_vec).collect();
        let n = store
            .write_at(&b, model.len() as u64, body(frames))
            .await
            .unwrap();
        assert_eq!(n, len as u64);
        model.extend_from_slice(&data);
    }
    let last = model.len() - 700_003;
    let retry = pattern(600_005, 99);
    let frames = retry.chunks(65_536 + 1).map(<[u8]>::to_vec).collect();
    store.write_at(&b, last as u64, body(frames)).await.unwrap();
    model.truncate(last);
    model.extend_from_slice(&retry);
    assert_eq!(read(store, &b, 0, model.len() as u64).await, model);
    store.publish(&b, model.len() as u64).await.unwrap();
    assert_eq!(read(store, &b, 0, model.len() as u64 + 100).await, model);
}

/// Staged sizes count from offset 0, the published listing has sizes, and
/// a quarantined blob (staged or published) is neither listed nor read.
async fn sizes_listing_and_quarantine(s: &dyn BlobStore) {
    let (a, b) = (id("sizeA"), id("sizeB"));
    assert_eq!(s.staged_size(&a).await.unwrap(), None);
    s.write_at(&a, 0, body(vec![vec![1; 100]])).await.unwrap();
    s.write_at(&a, 100, body(vec![vec![2; 50]])).await.unwrap();
    assert_eq!(s.staged_size(&a).await.unwrap(), Some(150));
    s.write_at(&b, 0, body(vec![vec![3; 70]])).await.unwrap();
    s.publish(&b, 70).await.unwrap();
    assert_eq!(s.staged_size(&b).await.unwrap(), None);
    assert_eq!(s.list_published().await.unwrap(), vec![(b.clone(), 70)]);
    assert!(!s.quarantined(&a).await.unwrap());
    assert!(s.quarantine(&a, "test: staged").await.unwrap());
    assert!(s.quarantine(&b, "test: published").await.unwrap());
    assert!(s.quarantined(&a).await.unwrap() && s.quarantined(&b).await.unwrap());
    assert!(s.list_staged().await.unwrap().is_empty());
    assert!(s.list_published().await.unwrap().is_empty());
    assert!(matches!(s.read_at(&b, 0, 70).await, Err(StorageError::NotFound)));
    assert!(matches!(s.read_at(&a, 0, 70).await, Err(StorageError::NotFound)));
    assert!(!s.quarantine(&id("nothing"), "x").await.unwrap());
}
