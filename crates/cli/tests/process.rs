//! The real `upline` binary as a process: kill -9 in the middle of an
//! upload, graceful SIGTERM, credentials, configuration, secret-free logs.

use std::process::Command;
use std::time::{Duration, Instant};

use upline_proto::PutPolicy;

mod common;

use common::*;

async fn resume_point(http: &reqwest::Client, base: &str, t: &str, ctx: &str) -> u64 {
    let url = format!("{base}/doc/film.mp4?uploadContext&context={ctx}&version=1.0");
    let r: serde_json::Value = http
        .get(url)
        .header("x-nos-token", t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["offset"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_bytes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let t = token("film.mp4");
    let file = data(24 << 20, 7);
    let chunk = 1 << 20;
    let mut node = Proc::serve(dir.path(), &[], &env_creds());
    let (s, b) = post(&http, &node.base(), &t, 0, false, None, file[..chunk].to_vec()).await;
    assert_eq!(s, 200, "{b}");
    let ctx = b["context"].as_str().unwrap().to_owned();
    let mut acked = chunk as u64;

    for round in 0..4 {
        // A few acknowledged chunks, then a kill while more are in flight.
        for _ in 0..2 {
            let end = (acked as usize + chunk).min(file.len() - 1);
            let (s, b) = post(
                &http,
                &node.base(),
                &t,
                acked,
                false,
                Some(&ctx),
                file[acked as usize..end].to_vec(),
            )
            .await;
            assert_eq!(s, 200, "round {round}: {b}");
            acked = b["offset"].as_u64().unwrap();
        }
        let end = (acked as usize + 4 * chunk).min(file.len() - 1);
        let inflight = {
            let (http, base, t, ctx) = (http.clone(), node.base(), t.clone(), ctx.clone());
            let body = file[acked as usize..end].to_vec();
            let at = acked;
            tokio::spawn(async move { post(&http, &base, &t, at, false, Some(&ctx), body).await })
        };
        tokio::time::sleep(Duration::from_millis(5 + 7 * round)).await;
        node.kill9();
        let (s, b) = inflight.await.unwrap();
        node = Proc::serve(dir.path(), &[], &env_creds());
        let resumed = resume_point(&http, &node.base(), &t, &ctx).await;
        if s == 200 {
            assert_eq!(
                resumed,
                b["offset"].as_u64().unwrap(),
                "an acknowledged chunk survives"
            );
        }
        assert!(
            resumed == acked || resumed == end as u64,
            "round {round}: resume {resumed}, acked {acked}, end {end}"
        );
        acked = resumed;
    }
    // The rest, in chunks within the protocol's limit.
    while (acked as usize) < file.len() {
        let end = (acked as usize + (4 << 20)).min(file.len());
        let last = end == file.len();
        let body = file[acked as usize..end].to_vec();
        let (s, b) = post(&http, &node.base(), &t, acked, last, Some(&ctx), body).await;
        assert_eq!(s, 200, "{b}");
        acked = b["offset"].as_u64().unwrap();
    }
    let stored = std::fs::read(dir.path().join("blobs/objects").join(&ctx[..2]).join(&ctx)).unwrap();
    assert!(stored == file, "stored bytes are exact");
    assert!(
        std::fs::read_dir(dir.path().join("blobs/staging"))
            .unwrap()
            .next()
            .is_none(),
        "no staging leftovers"
    );
    let log = node.log.lock().unwrap().join("\n");
    node.kill9();
    assert!(!log.contains(SK), "no secret in the logs");
    let signature = t.split(':').nth(1).unwrap();
    assert!(!log.contains(signature), "no token signature in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_chunk_in_flight_finish_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Proc::serve(dir.path(), &[], &env_creds());
    let t = token("film.mp4");
    // A body that trickles in, so it is surely in flight at SIGTERM.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let url = format!("{}/doc/film.mp4?offset=0&complete=true&version=1.0", node.base());
    let req = reqwest::Client::new()
        .post(url)
        .header("x-nos-token", &t)
        .header("content-length", "300000")
        .body(reqwest::Body::wrap_stream(tokio_stream(rx)))
        .send();
    let sender = tokio::spawn(async move {
        for _ in 0..3 {
            tx.send(Ok(vec![5u8; 100_000])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let resp = tokio::spawn(req);
    let seen = Instant::now();
    while !node
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("request received"))
    {
        assert!(
            seen.elapsed() < Duration::from_secs(10),
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let resp = resp.await.unwrap().unwrap();
    sender.await.unwrap();
    assert_eq!(resp.status(), 200, "the chunk in flight finished");
    let started = Instant::now();
    let code = loop {
        if let Some(code) = node.child.try_wait().unwrap() {
            break code;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "exits promptly");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit 0 after SIGTERM: {code:?}");
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_credentials_are_private_and_token_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = Proc::serve(dir.path(), &[], &[]);
    let creds = dir.path().join("credentials.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let first_line = node
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.starts_with("upline: serving"))
        .cloned()
        .unwrap();
    assert!(first_line.contains(&creds.display().to_string()), "{first_line}");
    let out = upline()
        .args([
            "token",
            "--bucket",
            "doc",
            "--object",
            "film.mp4",
            "--expires-in",
            "60",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("UPLINE_ACCESS_KEY")
        .env_remove("UPLINE_SECRET_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(t.starts_with("UPLOAD "));
    let http = reqwest::Client::new();
    let (s, b) = post(&http, &node.base(), &t, 0, true, None, b"hello".to_vec()).await;
    assert_eq!(s, 200, "{b}");
    let secret = std::fs::read_to_string(&creds).unwrap();
    let log = node.log.lock().unwrap().join("\n");
    let secret_value = secret
        .lines()
        .find(|l| l.starts_with("secret_key"))
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(
        !log.contains(&secret_value),
        "the generated secret is never logged"
    );
    node.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("upline.toml");
    std::fs::write(&conf, "public_url = \"http://from-file\"\nmax_chunk = 1000\n[[credentials]]\naccess_key = \"a1\"\nsecret_key = \"s1\"\n").unwrap();
    let conf_s = conf.to_str().unwrap();
    let lbs = |node: &Proc| {
        let url = format!("{}/lbs?version=1.0&bucketname=doc", node.base());
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["upload"][0]
                .clone()
        }
    };
    // Each run its own data dir: a killed node stays in a shared registry
    // until its heartbeat goes stale, which is not what this test is about.
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let node = Proc::serve(d1.path(), &["--config", conf_s], &[]);
    assert_eq!(lbs(&node).await, "http://from-file");
    node.kill9();
    let node = Proc::serve(
        d2.path(),
        &["--config", conf_s],
        &[
            ("UPLINE_PUBLIC_URL", "http://from-env"),
            ("UPLINE_TEST_SOMETHING_ELSE", "not an option"),
        ],
    );
    assert_eq!(lbs(&node).await, "http://from-env");
    node.kill9();
    let node = Proc::serve(
        d3.path(),
        &["--config", conf_s, "--public-url", "http://from-flag"],
        &[("UPLINE_PUBLIC_URL", "http://from-env")],
    );
    assert_eq!(lbs(&node).await, "http://from-flag");
    // The file's credentials and chunk limit are in force.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = PutPolicy {
        bucket: "doc".into(),
        object: "film.mp4".into(),
        expires: Some(now + 60),
        ..Default::default()
    }
    .sign("a1", b"s1");
    let http = reqwest::Client::new();
    assert_eq!(
        post(&http, &node.base(), &t, 0, false, None, vec![0; 1001])
            .await
            .0,
        400
    );
    assert_eq!(
        post(&http, &node.base(), &t, 0, false, None, vec![0; 1000])
            .await
            .0,
        200
    );
    node.kill9();
}

#[test]
fn bad_configuration_fails_at_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.toml");
    std::fs::write(&conf, "listne = \"oops\"\n").unwrap();
    let out = upline()
        .args(["serve", "--config"])
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listne") && err.contains("invalid configuration"),
        "{err}"
    );
    let out = upline().args(["serve", "--listen", "nonsense"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    let out = upline()
        .args(["serve", "--public-url", "ftp://x", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("public URL"));
    // A taken port: the cause once (it was printed twice), and the hint.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = upline()
        .args([
            "serve",
            "--listen",
            &taken.local_addr().unwrap().to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("UPLINE_ACCESS_KEY", AK)
        .env("UPLINE_SECRET_KEY", SK)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pick another --listen address"), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "the cause once: {err}");
    // Bad backend URLs say what to write instead.
    for (flag, url, hint) in [
        ("--storage", "gcs://bucket", "write fs://PATH or s3://"),
        ("--state", "mysql://db", "postgres://USER@HOST/DATABASE"),
        ("--storage", "s3://media", "AWS_ACCESS_KEY_ID"),
    ] {
        let out = upline()
            .args(["serve", "--listen", "127.0.0.1:0", flag, url, "--data-dir"])
            .arg(dir.path())
            .env("UPLINE_ACCESS_KEY", AK)
            .env("UPLINE_SECRET_KEY", SK)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(hint), "{url}: {err}");
    }
}

/// The node's async workers: half the cores by default, `worker_threads`
/// (here from the environment) when set — as the started runtime reports.
#[test]
fn worker_threads_reach_the_runtime() {
    let workers = |node: &Proc| {
        let log = node.log.lock().unwrap();
        let line = log
            .iter()
            .find(|l| l.contains("runtime started"))
            .unwrap_or_else(|| panic!("no runtime line: {log:?}"))
            .clone();
        line.split("workers=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut envs = env_creds().to_vec();
    envs.push(("UPLINE_WORKER_THREADS", "3"));
    let node = Proc::serve(dir.path(), &[], &envs);
    assert_eq!(workers(&node), 3);
    node.kill9();
    let node = Proc::serve(dir.path(), &[], &env_creds());
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(workers(&node), (cores / 2).max(1));
    node.kill9();
    let node = Proc::serve(dir.path(), &["--role", "lbs"], &env_creds());
    assert_eq!(workers(&node), cores, "an LBS-only node has no blocking work");
}
