//! Damaged bytes found at start, by the scrub or by a download are
//! reported (an error line, `upline_quarantined_total`), moved to
//! `blobs/quarantine/` with a note, and never served: a session whose
//! acknowledged bytes are gone answers 404 (its client starts over), an
//! object whose bytes are damaged answers 410 with an errMsg saying so —
//! and a download that finds the damage while streaming is cut off before
//! its end, so no client takes wrong bytes for the object.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use upline_proto::PutPolicy;
use upline_server::testing::{ACCESS_KEY, SECRET_KEY, TestServer};
use upline_torture::pattern;

fn token(object: &str) -> String {
    PutPolicy {
        bucket: "qtn".into(),
        object: object.into(),
        expires: Some(upline_server::unix_now() + 3600),
        ..Default::default()
    }
    .sign(ACCESS_KEY, SECRET_KEY.as_bytes())
}

async fn chunk(
    base: &str,
    object: &str,
    offset: u64,
    data: Vec<u8>,
    complete: bool,
    ctx: Option<&str>,
    md5: Option<String>,
) -> (u16, serde_json::Value) {
    let mut url = format!("{base}/qtn/{object}?offset={offset}&complete={complete}&version=1.0");
    if let Some(c) = ctx {
        url.push_str(&format!("&context={c}"));
    }
    let mut req = reqwest::Client::new()
        .post(url)
        .header("x-nos-token", token(object))
        .body(data);
    if let Some(m) = md5 {
        req = req.header("content-md5", m);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn query(base: &str, object: &str, ctx: &str) -> u16 {
    reqwest::Client::new()
        .get(format!(
            "{base}/qtn/{object}?uploadContext&context={ctx}&version=1.0"
        ))
        .header("x-nos-token", token(object))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The status of a whole download, and its body — `None` when the
/// transfer broke off.
async fn download(base: &str, object: &str) -> (u16, Option<Vec<u8>>, serde_json::Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}/qtn/{object}"))
        .header("x-nos-token", token(object))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.ok().map(|b| b.to_vec());
    let json = body
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    (status, body, json)
}

async fn quarantined_metric(base: &str) -> String {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("upline_quarantined_total"))
        .unwrap_or("no upline_quarantined_total")
        .to_owned()
}

fn published(data: &Path, ctx: &str) -> PathBuf {
    data.join("blobs/objects").join(&ctx[..2]).join(ctx)
}

fn quarantine_note(data: &Path, ctx: &str) -> String {
    assert!(
        data.join("blobs/quarantine").join(ctx).is_file(),
        "the bytes are kept in quarantine"
    );
    std::fs::read_to_string(data.join("blobs/quarantine").join(format!("{ctx}.why"))).unwrap()
}

fn tweak(c: &mut upline_server::ServerConfig) {
    c.query_rate_per_ip = 0;
    c.query_rate_per_token = 0;
}

/// Polls until the download answers `status`.
async fn wait_for_download(base: &str, object: &str, status: u16) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _, json) = download(base, object).await;
        if s == status {
            return json;
        }
        assert!(
            Instant::now() < until,
            "{object}: still {s}, waiting for {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_staged_bytes_were_truncated_is_quarantined_at_start() {
    let tmp = Arc::new(tempfile::tempdir().unwrap());
    let node = TestServer::start_in(tmp.clone(), tweak).await;
    let (s, b) = chunk(
        &node.base,
        "cut",
        0,
        pattern::bytes(1, 0, 200_000),
        false,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let ctx = b["context"].as_str().unwrap().to_owned();
    node.stop().await;
    // Acknowledged bytes lost under the node (a disk fault, a hand).
    let staged = tmp.path().join("blobs/staging").join(&ctx);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_len(100_000)
        .unwrap();

    let node = TestServer::start_in(tmp.clone(), tweak).await;
    assert_eq!(
        query(&node.base, "cut", &ctx).await,
        404,
        "the session is forgotten"
    );
    let (s, _) = chunk(&node.base, "cut", 200_000, vec![1; 10], true, Some(&ctx), None).await;
    assert_eq!(s, 404, "its chunks too: the client starts over");
    let note = quarantine_note(tmp.path(), &ctx);
    assert!(
        note.contains("100000 staged bytes, 200000 were acknowledged"),
        "{note}"
    );
    assert!(!staged.exists());
    assert_eq!(quarantined_metric(&node.base).await, "upline_quarantined_total 1");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_another_size_is_quarantined_by_the_scrub_after_start() {
    let tmp = Arc::new(tempfile::tempdir().unwrap());
    let node = TestServer::start_in(tmp.clone(), tweak).await;
    let (s, b) = chunk(
        &node.base,
        "short",
        0,
        pattern::bytes(2, 0, 300_000),
        true,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let ctx = b["context"].as_str().unwrap().to_owned();
    node.stop().await;
    let file = published(tmp.path(), &ctx);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(299_000)
        .unwrap();

    let node = TestServer::start_in(tmp.clone(), tweak).await;
    let json = wait_for_download(&node.base, "short", 410).await;
    let head = reqwest::Client::new()
        .head(format!("{}/qtn/short", node.base))
        .header("x-nos-token", token("short"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(head, 410, "HEAD reads no bytes and says so too");
    let msg = json["errMsg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("quarantined") && msg.contains("upload it again"),
        "{json}"
    );
    assert!(json["requestId"].is_string());
    let note = quarantine_note(tmp.path(), &ctx);
    assert!(note.contains("299000 bytes stored, 300000 recorded"), "{note}");
    assert_eq!(quarantined_metric(&node.base).await, "upline_quarantined_total 1");
    // Uploading it again brings it back.
    let (s, b) = chunk(
        &node.base,
        "short",
        0,
        pattern::bytes(3, 0, 1000),
        true,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, body, _) = download(&node.base, "short").await;
    assert_eq!((s, body), (200, Some(pattern::bytes(3, 0, 1000))));
    node.stop().await;
}

/// Same size, one byte flipped: the download that reads it breaks off
/// before its end (never a complete 200 of wrong bytes), and from then on
/// the object answers 410; with `verify_objects_at_start`, the scrub after
/// start finds it before anyone downloads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_bytes_are_never_served() {
    for verify_at_start in [false, true] {
        let tmp = Arc::new(tempfile::tempdir().unwrap());
        let node = TestServer::start_in(tmp.clone(), tweak).await;
        let data = pattern::bytes(4, 0, 2_000_000);
        let md5 = {
            use md5::Digest;
            hex::encode(md5::Md5::digest(&data))
        };
        // Sent with its MD5, so the record knows it at once.
        let (s, b) = chunk(
            &node.base,
            "flip",
            0,
            data[..1 << 20].to_vec(),
            false,
            None,
            Some(md5.clone()),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        let ctx = b["context"].as_str().unwrap().to_owned();
        let (s, b) = chunk(
            &node.base,
            "flip",
            1 << 20,
            data[1 << 20..].to_vec(),
            true,
            Some(&ctx),
            Some(md5),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        node.stop().await;
        let file = published(tmp.path(), &ctx);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[1_500_000] ^= 0x01;
        std::fs::write(&file, &bytes).unwrap();

        let node = TestServer::start_in(tmp.clone(), |c| {
            tweak(c);
            c.verify_objects_at_start = verify_at_start;
        })
        .await;
        if verify_at_start {
            wait_for_download(&node.base, "flip", 410).await;
        } else {
            // What media elements and resuming downloaders ask for: the
            // whole object as a range. It used to come back as a complete
            // 206 of damaged bytes, unchecked (found in review).
            let r = reqwest::Client::new()
                .get(format!("{}/qtn/flip", node.base))
                .header("x-nos-token", token("flip"))
                .header("range", "bytes=0-")
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let body = r.bytes().await.ok();
            assert!(
                !(s == 206 && body.as_ref().is_some_and(|b| b.len() == data.len())),
                "a complete 206 of damaged bytes"
            );
            let (s, body, _) = download(&node.base, "flip").await;
            assert!(
                !(s == 200 && body.as_ref().is_some_and(|b| b.len() == data.len())),
                "a complete 200 of damaged bytes: status {s}"
            );
            wait_for_download(&node.base, "flip", 410).await;
        }
        let note = quarantine_note(tmp.path(), &ctx);
        assert!(note.contains("MD5"), "{note}");
        assert!(!file.exists(), "out of service");
        assert_eq!(quarantined_metric(&node.base).await, "upline_quarantined_total 1");
        node.stop().await;
    }
}
