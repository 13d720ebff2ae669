//! `upline upload` and the client library against real nodes: a server
//! killed twice during an upload, a client killed and re-run, expired
//! tokens, changed files, JSON results and exit codes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use upline_client::{ChunkPolicy, Event, RetryPolicy, Uploader};
use upline_server::testing::{ACCESS_KEY, SECRET_KEY, TestServer};

fn upload_cmd(cache: &std::path::Path) -> Command {
    let mut c = upline();
    c.arg("upload")
        .env("XDG_CACHE_HOME", cache)
        .env("UPLINE_ACCESS_KEY", ACCESS_KEY)
        .env("UPLINE_SECRET_KEY", SECRET_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_upload_survives_two_server_kills() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Proc::serve(dir.path(), &[], &env_creds());
    let listen = node.addr.to_string();
    let base = node.base();
    let bytes = data(64 << 20, 11);
    let path = dir.path().join("film.mp4");
    std::fs::write(&path, &bytes).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let up = Uploader::builder()
        .nodes([base])
        .credentials(AK, SK)
        .chunk_policy(ChunkPolicy::Fixed(1 << 20))
        .retry_policy(RetryPolicy {
            max_attempts: 40,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
        })
        .journal_dir(dir.path().join("journal"))
        .on_event(move |e| {
            if let Event::Progress { acked, .. } = e {
                let _ = tx.send(*acked);
            }
        })
        .build()
        .unwrap();
    let task = {
        let path = path.clone();
        tokio::spawn(async move { up.upload_file(&path, "doc", "film.mp4").await })
    };
    let mut kills = 0;
    while let Some(acked) = rx.recv().await {
        if (kills == 0 && acked >= 16 << 20) || (kills == 1 && acked >= 40 << 20) {
            node.kill9();
            node = Proc::serve_on(&listen, dir.path(), &[], &env_creds());
            kills += 1;
        }
    }
    let done = task.await.unwrap().unwrap();
    assert_eq!(kills, 2);
    assert_eq!(done.size, 64 << 20);
    let stored = std::fs::read(published(dir.path(), &done.context)).unwrap();
    assert!(stored == bytes, "stored bytes equal the file");
    node.kill9();
}

/// Runs `upline upload` until the server has received `at_least` bytes,
/// then kills it.
async fn start_and_kill(srv: &TestServer, cache: &std::path::Path, file: &std::path::Path, at_least: u64) {
    let mut child = upload_cmd(cache)
        .arg(file)
        .args([
            "--node",
            &srv.base,
            "--bucket",
            "doc",
            "--chunk-size",
            "1MiB",
            "--quiet",
        ])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while srv.node.bytes_received() < at_least {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the client ended before it was killed"
        );
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_resumes_and_never_resends_acknowledged_bytes() {
    let srv = TestServer::start(|_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("film.mp4");
    let bytes = data(64 << 20, 12);
    std::fs::write(&file, &bytes).unwrap();
    start_and_kill(&srv, tmp.path(), &file, 24 << 20).await;
    let out = upload_cmd(tmp.path())
        .arg(&file)
        .args([
            "--node",
            &srv.base,
            "--bucket",
            "doc",
            "--chunk-size",
            "1MiB",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["size"], 64 << 20);
    assert_eq!(srv.object_bytes("doc", "film.mp4").await.unwrap(), bytes);
    let received = srv.node.bytes_received();
    assert!(
        received <= (64 << 20) + (1 << 20),
        "received {received} bytes for a {} byte file: acknowledged bytes were sent again",
        64 << 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_between_runs_is_uploaded_anew() {
    let srv = TestServer::start(|_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("clip.mp4");
    std::fs::write(&file, data(16 << 20, 13)).unwrap();
    start_and_kill(&srv, tmp.path(), &file, 4 << 20).await;
    let changed = data(16 << 20, 14);
    std::fs::write(&file, &changed).unwrap();
    let out = upload_cmd(tmp.path())
        .arg(&file)
        .args(["--node", &srv.base, "--bucket", "doc", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("changed"),
        "the user is told"
    );
    assert_eq!(srv.object_bytes("doc", "clip.mp4").await.unwrap(), changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_stops_with_its_message_and_exit_1() {
    let srv = TestServer::start(|_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.bin");
    std::fs::write(&file, b"abc").unwrap();
    let expired = upline_proto::PutPolicy {
        bucket: "doc".into(),
        object: "a.bin".into(),
        expires: Some(upline_server::unix_now() - 5),
        ..Default::default()
    }
    .sign(ACCESS_KEY, SECRET_KEY.as_bytes());
    let out = upload_cmd(tmp.path())
        .arg(&file)
        .args([
            "--lbs",
            &format!("{}/lbs", srv.base),
            "--bucket",
            "doc",
            "--token",
            &expired,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token") && err.contains("expired"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_files_json_lines_and_exit_codes() {
    let srv = TestServer::start(|_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<_> = (0..3)
        .map(|i| {
            let p = tmp.path().join(format!("f{i}.bin"));
            std::fs::write(&p, data(300_000 * (i + 1), i as u64)).unwrap();
            p
        })
        .collect();
    let out = upload_cmd(tmp.path())
        .args(&files)
        .args(["--lbs", &format!("{}/lbs", srv.base), "-j", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        for field in ["bucket", "object", "size", "md5", "context", "seconds"] {
            assert!(line.get(field).is_some(), "{field} missing: {line}");
        }
        assert_eq!(line["bucket"], "uploads", "the default bucket");
        let name = line["object"].as_str().unwrap();
        let stored = srv.object_bytes("uploads", name).await.unwrap();
        assert_eq!(stored.len() as u64, line["size"].as_u64().unwrap());
    }

    // One missing file: the others upload, the exit code says some failed.
    let out = upload_cmd(tmp.path())
        .arg(&files[0])
        .arg(tmp.path().join("missing.bin"))
        .args(["--node", &srv.base, "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.bin"));

    // Usage errors exit 2.
    for bad in [
        vec![
            "--node",
            &srv.base,
            "--object",
            "x",
            files[0].to_str().unwrap(),
            files[1].to_str().unwrap(),
        ],
        vec![files[0].to_str().unwrap()],
        vec![
            "--node",
            &srv.base,
            "--chunk-size",
            "5MiB",
            files[0].to_str().unwrap(),
        ],
    ] {
        let out = upload_cmd(tmp.path()).args(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn without_token_or_credentials_it_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.bin");
    std::fs::write(&file, b"abc").unwrap();
    let out = upline()
        .current_dir(tmp.path())
        .env_remove("UPLINE_ACCESS_KEY")
        .env_remove("UPLINE_SECRET_KEY")
        .args(["upload", "a.bin", "--node", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
    assert!(
        !tmp.path().join("upline-data").exists(),
        "no credentials were generated"
    );
}
