//! The upload rules on a real Garage in the parts layout (one S3 part per
//! chunk, what `auto` picks there), where a session's bytes cannot be read
//! back before it is published: a replayed chunk is checked by MD5 without
//! touching the layout, a whole-object MD5 claimed at completion is
//! checked (the parts are assembled for it), and the object is served.

mod common;

use common::NoCallbacks;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use md5::Digest;
use upline_core::{ChunkRequest, Config, CoreError, Keyring, Node};
use upline_proto::{ObjectPath, PutPolicy, UploadParams};
use upline_state::EmbeddedStore;
use upline_storage::conformance::body;
use upline_storage::s3::{Layout, S3Store};
use upline_storage::testing::Garage;
use upline_storage::{BlobId, BlobStore};

fn req(offset: u64, ctx: Option<&str>, complete: bool, md5: Option<&[u8]>) -> ChunkRequest {
    let token = PutPolicy {
        bucket: "doc".into(),
        object: "film.mp4".into(),
        expires: Some(10_000),
        ..Default::default()
    }
    .sign("ak", b"sk");
    ChunkRequest {
        path: ObjectPath::parse("/doc/film.mp4").unwrap(),
        params: UploadParams {
            offset,
            complete,
            context: ctx.map(str::to_owned),
        },
        token: Some(token),
        content_length: None,
        content_type: None,
        content_md5: md5.map(|m| hex::encode(md5::Md5::digest(m))),
        now: 1_000,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_whole_object_md5_on_the_parts_layout() {
    let garage = Garage::start();
    let blobs = Arc::new(S3Store::open(garage.bucket("media")).await.unwrap());
    assert_eq!(blobs.layout(), Layout::Parts);
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(EmbeddedStore::open(dir.path().join("state.db")).unwrap());
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    let node = Node::new(
        blobs.clone(),
        state,
        keys,
        Arc::new(NoCallbacks),
        Config::default(),
    );

    let (a, b, c) = (pattern(3 << 20, 1), pattern(3 << 20, 2), pattern(1 << 20, 3));
    let ctx = node
        .upload_chunk(req(0, None, false, None), body(vec![a.clone()]))
        .await
        .unwrap()
        .context;
    let r = node
        .upload_chunk(req(3 << 20, Some(&ctx), false, None), body(vec![b.clone()]))
        .await
        .unwrap();
    assert_eq!(r.offset, 6 << 20);

    // The last chunk again, same bytes (its 200 was lost): acknowledged
    // again, from the part's MD5 — the session stays in parts.
    let again = node
        .upload_chunk(req(3 << 20, Some(&ctx), false, None), body(vec![b.clone()]))
        .await
        .unwrap();
    assert_eq!(again.offset, 6 << 20);
    let id = BlobId::new(&ctx).unwrap();
    assert!(
        blobs.stored_md5(&id, 3 << 20, 3 << 20).await.unwrap().is_some(),
        "a replay does not assemble the parts"
    );
    // Other bytes at that offset are not a replay.
    let other = node
        .upload_chunk(
            req(3 << 20, Some(&ctx), false, None),
            body(vec![pattern(3 << 20, 9)]),
        )
        .await;
    assert!(
        matches!(other, Err(CoreError::OffsetMismatch { committed }) if committed == 6 << 20),
        "{other:?}"
    );

    // The final chunk claims the whole object's MD5: a wrong claim is
    // refused and the session stays where it was...
    let whole = [a.clone(), b.clone(), c.clone()].concat();
    let wrong = node
        .upload_chunk(
            req(6 << 20, Some(&ctx), true, Some(b"not the object")),
            body(vec![c.clone()]),
        )
        .await;
    assert!(matches!(wrong, Err(CoreError::Md5Mismatch(_))), "{wrong:?}");
    // ...and the right one completes it (after the assembly the wrong
    // claim needed, in the chunks layout).
    let done = node
        .upload_chunk(
            req(6 << 20, Some(&ctx), true, Some(&whole)),
            body(vec![c.clone()]),
        )
        .await
        .unwrap();
    assert_eq!(done.offset, whole.len() as u64);
    let record = node.object("doc", "film.mp4").await.unwrap().unwrap();
    assert_eq!(
        record.md5.as_deref(),
        Some(hex::encode(md5::Md5::digest(&whole)).as_str())
    );
    let mut stream = node.read_object(&record, 0, record.size).await.unwrap();
    let mut got = Vec::new();
    while let Some(frame) = stream.next().await {
        got.extend_from_slice(&frame.unwrap());
    }
    assert!(got == whole, "the object is byte-exact");

    // The final chunk once more: a replay of a completed upload.
    let replay = node
        .upload_chunk(req(6 << 20, Some(&ctx), true, None), body(vec![c]))
        .await
        .unwrap();
    assert_eq!(replay.offset, whole.len() as u64);
}

/// A session's last chunk refused for the store's part limit is a `400`
/// naming the limit, not a `500` to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_part_limit_is_a_clear_refusal() {
    let garage = Garage::start();
    let blobs = Arc::new(
        S3Store::open(garage.bucket("limited"))
            .await
            .unwrap()
            .with_max_parts(2),
    );
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(EmbeddedStore::open(dir.path().join("state.db")).unwrap());
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    let node = Node::new(blobs, state, keys, Arc::new(NoCallbacks), Config::default());
    let ctx = node
        .upload_chunk(req(0, None, false, None), body(vec![vec![1; 100]]))
        .await
        .unwrap()
        .context;
    node.upload_chunk(req(100, Some(&ctx), false, None), body(vec![vec![2; 100]]))
        .await
        .unwrap();
    let refused = node
        .upload_chunk(req(200, Some(&ctx), true, None), body(vec![vec![3; 100]]))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), 400, "{refused:?}");
    assert!(refused.to_string().contains("2 chunks"), "{refused}");
}

/// A multipart upload that a crashed node left unnamed is aborted by
/// recovery; the upload of a live session, named by its marker, is not,
/// and the session completes. A collection pass, which runs beside
/// requests, leaves a young one alone even with no grace configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_aborts_an_upload_a_crashed_node_left() {
    use object_store::multipart::MultipartStore;
    use object_store::path::Path;
    let garage = Garage::start();
    let cfg = garage.bucket("leftovers");
    let blobs = Arc::new(S3Store::open(cfg.clone()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(EmbeddedStore::open(dir.path().join("state.db")).unwrap());
    let keys = Keyring::new([("ak".to_owned(), "sk".to_owned())]);
    let node = Node::new(
        blobs,
        state,
        keys,
        Arc::new(NoCallbacks),
        Config {
            orphan_grace: Duration::ZERO,
            ..Config::default()
        },
    );
    let a = pattern(1 << 20, 5);
    let ctx = node
        .upload_chunk(req(0, None, false, None), body(vec![a.clone()]))
        .await
        .unwrap()
        .context;
    let raw = upline_storage::testing::plain_client(&cfg).unwrap();
    let key = Path::from(format!("staging/crashed/c{:020}", 0));
    let left = raw.create_multipart(&key).await.unwrap();

    let collected = node.collect(1_000).await.unwrap();
    assert_eq!(collected.orphan_uploads, 0, "too young to abort while serving");
    node.recover().await.unwrap();
    let gone = raw.abort_multipart(&key, &left).await;
    assert!(
        matches!(gone, Err(object_store::Error::NotFound { .. })),
        "{gone:?}"
    );
    let b = pattern(1 << 20, 6);
    let done = node
        .upload_chunk(req(1 << 20, Some(&ctx), true, None), body(vec![b.clone()]))
        .await
        .unwrap();
    assert_eq!(done.offset, 2 << 20);
}
