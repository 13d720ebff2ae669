//! No secret in logs or error messages, and secrets at rest only in 0600
//! files. The real `upline serve` at trace level is driven through
//! uploads with good and bad tokens, downloads with tokens and signed
//! URLs, a failing completion callback, the demo's token endpoint and the
//! app API (good calls, bad CheckSums, a notification to a receiver that
//! fails); then everything it logged and every error body it sent are
//! searched for the secret key, the master key, the app secret, its sign
//! key, every full token, every signature and every CheckSum used.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use upline_proto::PutPolicy;

mod common;

use common::*;

const MASTER_KEY: &str = "6d61737465722d6b65792d6e657665722d6c6f676765642d3031323334353637";
const SIGN_KEY: &str = "notification-sign-key-never-logged";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// hex SHA-1 by coreutils' sha1sum (this crate has no SHA-1 of its own).
fn sha1_hex(s: &str) -> String {
    let mut child = Command::new("sha1sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha1sum (coreutils)");
    child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..40].to_owned()
}

/// The signature part of a token.
fn signature(token: &str) -> String {
    token.split(':').nth(1).unwrap().to_owned()
}

/// An HTTP receiver that answers every request 500 and keeps each request's text.
async fn failing_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the body by Content-Length.
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).to_string());
                let _ = s
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope")
                    .await;
            });
        }
    });
    (url, seen)
}

/// What the test sent and got back.
#[derive(Default)]
struct Seen {
    /// Every secret that must never be logged or echoed.
    secrets: Vec<(String, String)>,
    /// The bodies of every non-2xx answer (and app API refusals), and
    /// the public /metrics page.
    error_bodies: Vec<String>,
}

impl Seen {
    fn secret(&mut self, what: impl Into<String>, value: impl Into<String>) {
        self.secrets.push((what.into(), value.into()));
    }

    async fn record(&mut self, resp: reqwest::Response) -> (u16, serde_json::Value) {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let api_refusal = body.get("code").is_some_and(|c| c != 200);
        if !(200..300).contains(&status) || api_refusal {
            self.error_bodies.push(text);
        }
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_secret_is_logged_or_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        ("UPLINE_ACCESS_KEY", AK),
        ("UPLINE_SECRET_KEY", SK),
        ("UPLINE_MASTER_KEY", MASTER_KEY),
        ("UPLINE_WORKER_INTERVAL_MS", "100"),
        ("UPLINE_NOTIFY_BASE_DELAY_SECS", "1"),
        ("RUST_LOG", "trace"),
    ];
    let node = Proc::serve(dir.path(), &[], &envs);
    let base = node.base();
    let http = reqwest::Client::new();
    let mut seen = Seen::default();
    seen.secret("secret key", SK);
    seen.secret("master key", MASTER_KEY);
    seen.secret("sign key", SIGN_KEY);
    let (receiver, received) = failing_receiver().await;

    // Uploads with a good token: three chunks, a wrong and a right
    // whole-object MD5 claim, a query, downloads by token and signed URL.
    let good = token("film.mp4");
    seen.secret("token", &good);
    seen.secret("token signature", signature(&good));
    let file = data(300_000, 3);
    let (s, b) = post(&http, &base, &good, 0, false, None, file[..100_000].to_vec()).await;
    assert_eq!(s, 200, "{b}");
    let ctx = b["context"].as_str().unwrap().to_owned();
    let (s, b) = post(
        &http,
        &base,
        &good,
        100_000,
        false,
        Some(&ctx),
        file[100_000..200_000].to_vec(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let last = |md5: &str| {
        http.post(format!(
            "{base}/doc/film.mp4?offset=200000&complete=true&version=1.0&context={ctx}"
        ))
        .header("x-nos-token", &good)
        .header("Content-MD5", md5)
        .body(file[200_000..].to_vec())
    };
    let (s, _) = seen
        .record(last("00112233445566778899aabbccddeeff").send().await.unwrap())
        .await;
    assert_eq!(s, 400, "a wrong MD5 claim");
    let (s, b) = seen
        .record(
            http.post(format!(
                "{base}/doc/film.mp4?offset=200000&complete=true&version=1.0&context={ctx}"
            ))
            .header("x-nos-token", &good)
            .body(file[200_000..].to_vec())
            .send()
            .await
            .unwrap(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let r = http
        .get(format!("{base}/doc/film.mp4"))
        .header("x-nos-token", &good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), file);
    let signed = upline_proto::signed_url::sign(AK, SK.as_bytes(), "doc", "film.mp4", now() + 60);
    let url_sig = signed.rsplit_once("Signature=").unwrap().1.to_owned();
    seen.secret("signed URL signature", &url_sig);
    let r = http
        .get(format!("{base}/doc/film.mp4?{signed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let forged = signed.replace(&url_sig, &url_sig.chars().rev().collect::<String>());
    let (s, _) = seen
        .record(
            http.get(format!("{base}/doc/film.mp4?{forged}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(s, 403);

    // Bad tokens on every token endpoint.
    let p = |object: &str, expires: i64| PutPolicy {
        bucket: "doc".into(),
        object: object.into(),
        expires: Some(expires),
        ..Default::default()
    };
    let bad = [
        p("film.mp4", now() + 600).sign(AK, b"wrong-secret-also-not-logged"),
        p("other.mp4", now() + 600).sign(AK, SK.as_bytes()),
        p("film.mp4", now() - 10).sign(AK, SK.as_bytes()),
        p("film.mp4", now() + 600).sign("unknown-access-key", SK.as_bytes()),
        format!("UPLOAD {AK}:{}", signature(&good)),
    ];
    for t in &bad {
        seen.secret("bad token", t);
        seen.secret("bad token's signature", signature(&format!("{t}:x")));
        let (s, b) = seen
            .record(
                http.post(format!("{base}/doc/film.mp4?offset=0&complete=false&version=1.0"))
                    .header("x-nos-token", t)
                    .body(vec![1u8; 1000])
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
        assert_eq!(s, 403, "{b}");
        for req in [
            http.get(format!(
                "{base}/doc/film.mp4?uploadContext&context={ctx}&version=1.0"
            )),
            http.get(format!("{base}/doc/film.mp4")),
        ] {
            let (s, b) = seen
                .record(req.header("x-nos-token", t).send().await.unwrap())
                .await;
            assert_eq!(s, 403, "{b}");
        }
    }

    // A completion callback that fails: 520, retried by the exact replay.
    let cb = PutPolicy {
        callback_url: Some(format!("{receiver}/cb?auth=callback-url-credential")),
        ..p("cb.mp4", now() + 600)
    }
    .sign(AK, SK.as_bytes());
    seen.secret("callback token", &cb);
    seen.secret("callback URL credential", "callback-url-credential");
    for _ in 0..2 {
        let (s, b) = seen
            .record(
                http.post(format!("{base}/doc/cb.mp4?offset=0&complete=true&version=1.0"))
                    .header("x-nos-token", &cb)
                    .body(b"callback".to_vec())
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
        assert_eq!(s, 520, "{b}");
    }

    // And one whose receiver is gone (connection refused).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gone = PutPolicy {
        callback_url: Some(format!("http://{closed}/cb?auth=callback-url-credential")),
        ..p("gone.mp4", now() + 600)
    }
    .sign(AK, SK.as_bytes());
    seen.secret("callback token", &gone);
    let (s, b) = seen
        .record(
            http.post(format!("{base}/doc/gone.mp4?offset=0&complete=true&version=1.0"))
                .header("x-nos-token", &gone)
                .body(b"callback".to_vec())
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(s, 520, "{b}");

    // The demo's token endpoint (on: embedded, loopback).
    let host = node.addr.to_string();
    let (s, b) = seen
        .record(
            http.post(format!("{base}/demo/token"))
                .header("Origin", format!("http://{host}"))
                .json(&serde_json::json!({"object": "demo.mp4"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let demo_token = b["token"].as_str().unwrap().to_owned();
    seen.secret("demo token", &demo_token);
    seen.secret("demo token signature", signature(&demo_token));
    let demo_link = b["download"].as_str().unwrap();
    seen.secret(
        "demo link signature",
        demo_link.rsplit_once("Signature=").unwrap().1,
    );
    let (s, _) = seen
        .record(
            http.post(format!("{base}/demo/token"))
                .header("Origin", "http://evil.example")
                .json(&serde_json::json!({"object": "demo.mp4"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(s, 403, "cross-origin demo token");

    // The app API: an app, good and bad calls, a notification that fails.
    let out = upline()
        .args(["app", "create", "secrets", "--json", "--data-dir"])
        .arg(dir.path())
        .env("UPLINE_MASTER_KEY", MASTER_KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let app_key = created["appKey"].as_str().unwrap().to_owned();
    let app_secret = created["appSecret"].as_str().unwrap().to_owned();
    seen.secret("app secret", &app_secret);
    let mut nonce_no = 0;
    let mut call = async |seen: &mut Seen, path: &str, body: serde_json::Value, secret: &str, cur: i64| {
        nonce_no += 1;
        let nonce = format!("nonce-{nonce_no}");
        let sum = sha1_hex(&format!("{secret}{nonce}{cur}"));
        seen.secret("CheckSum", &sum);
        let resp = http
            .post(format!("{base}{path}"))
            .header("AppKey", &app_key)
            .header("Nonce", &nonce)
            .header("CurTime", cur.to_string())
            .header("CheckSum", &sum)
            .json(&body)
            .send()
            .await
            .unwrap();
        seen.record(resp).await.1
    };
    let set = serde_json::json!({"callbackUrl": format!("{receiver}/notify"), "signKey": SIGN_KEY});
    let r = call(
        &mut seen,
        "/app/vod/callback/setUrl",
        set.clone(),
        &app_secret,
        now(),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    for (secret, cur) in [("wrong-app-secret", now()), (app_secret.as_str(), now() - 3600)] {
        let r = call(&mut seen, "/app/vod/callback/setUrl", set.clone(), secret, cur).await;
        assert_eq!(r["code"], 403, "{r}");
        let r = call(
            &mut seen,
            "/app/vod/upload/init",
            serde_json::json!({"originFileName": "a.mp4"}),
            secret,
            cur,
        )
        .await;
        assert_eq!(r["code"], 403, "{r}");
    }
    let r = call(
        &mut seen,
        "/app/vod/callback/setUrl",
        serde_json::json!({"callbackUrl": "ftp://x", "signKey": SIGN_KEY}),
        &app_secret,
        now(),
    )
    .await;
    assert_eq!(r["code"], 414, "{r}");
    let r = call(
        &mut seen,
        "/app/vod/upload/init",
        serde_json::json!({"originFileName": "holiday.mp4"}),
        &app_secret,
        now(),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let init_token = r["ret"]["xNosToken"].as_str().unwrap().to_owned();
    seen.secret("init token", &init_token);
    seen.secret("init token signature", signature(&init_token));
    let (bucket, object) = (
        r["ret"]["bucket"].as_str().unwrap(),
        r["ret"]["object"].as_str().unwrap(),
    );
    let r = http
        .post(format!(
            "{base}/{bucket}/{object}?offset=0&complete=true&version=1.0"
        ))
        .header("x-nos-token", &init_token)
        .body(b"a video".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Wait for the notification to reach the failing receiver twice (a
    // first try and a retry), so the failure paths have logged.
    for _ in 0..100 {
        let n = received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.contains("/notify"))
            .count();
        if n >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = received.lock().unwrap().clone();
    let signs: Vec<String> = requests
        .iter()
        .filter(|r| r.contains("/notify"))
        .filter_map(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("sign: ").map(str::to_owned))
        })
        .collect();
    assert!(
        signs.len() >= 2,
        "the notification was tried and retried: {requests:?}"
    );
    for s in signs {
        seen.secret("notification sign", s);
    }
    assert!(
        requests.iter().any(|r| r.contains("/cb?auth=")),
        "the callback was called"
    );

    // The metrics page is public: it is searched like an error body.
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    seen.error_bodies.push(metrics.text().await.unwrap());

    // A graceful stop, so every line is written.
    Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap();
    let mut node = node;
    node.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let log = node.log.lock().unwrap().join("\n");
    assert!(log.contains("notification failed"), "the failure paths ran");
    assert!(
        log.contains("completion callback failed"),
        "the failure paths ran"
    );

    let errors = seen.error_bodies.join("\n");
    assert!(
        seen.error_bodies.len() >= 20,
        "{} error bodies",
        seen.error_bodies.len()
    );
    let mut leaks = Vec::new();
    for (what, secret) in &seen.secrets {
        assert!(secret.len() >= 8, "{what} is long enough to search for");
        let encoded: String = form_urlencoded_byte_serialize(secret);
        for form in [secret.as_str(), encoded.as_str()] {
            if log.contains(form) {
                leaks.push(format!("{what} in the log"));
            }
            if errors.contains(form) {
                leaks.push(format!("{what} in an error body"));
            }
        }
    }
    println!(
        "searched {} log lines and {} error bodies for {} secrets",
        log.lines().count(),
        seen.error_bodies.len(),
        seen.secrets.len()
    );
    assert!(leaks.is_empty(), "leaks: {leaks:?}");
}

/// The form-urlencoded spelling of a value (how it would appear in a query).
fn form_urlencoded_byte_serialize(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `upline ARGS` in `dir` with umask 000, so a file created without
/// an explicit mode would be world-readable.
fn upline_with_umask_000(args: &[&str], envs: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_upline"))
        .args(args)
        .env_remove("UPLINE_ACCESS_KEY")
        .env_remove("UPLINE_SECRET_KEY")
        .env_remove("UPLINE_MASTER_KEY");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn generated_secrets_are_0600_even_under_umask_000() {
    // The admin command first (it makes the master key), then the node
    // (it makes the credentials), both under umask 000.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = upline_with_umask_000(&["app", "create", "a", "--data-dir", d], &[])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&dir.path().join("master.key")), 0o600, "master.key");
    let out = upline_with_umask_000(
        &["token", "--bucket", "doc", "--object", "a", "--data-dir", d],
        &[],
    )
    .wait_with_output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        mode(&dir.path().join("credentials.toml")),
        0o600,
        "credentials.toml"
    );

    // A node on a fresh directory makes both itself.
    let fresh = tempfile::tempdir().unwrap();
    let f = fresh.path().to_str().unwrap();
    let mut node = upline_with_umask_000(&["serve", "--listen", "127.0.0.1:0", "--data-dir", f], &[]);
    let stderr = node.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let started = lines.any(|l| l.is_ok_and(|l| l.starts_with("upline: serving on")));
    let _ = node.kill();
    let _ = node.wait();
    assert!(started, "the node started");
    for name in ["master.key", "credentials.toml"] {
        assert_eq!(mode(&fresh.path().join(name)), 0o600, "{name} of a new node");
    }
}

#[test]
fn secret_files_readable_by_others_are_made_private() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // A master key and credentials copied in by hand, world-readable.
    let key = dir.path().join("master.key");
    let creds = dir.path().join("credentials.toml");
    std::fs::write(&key, MASTER_KEY).unwrap();
    std::fs::write(
        &creds,
        format!("[[credentials]]\naccess_key = \"{AK}\"\nsecret_key = \"{SK}\"\n"),
    )
    .unwrap();
    for p in [&key, &creds] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = upline_with_umask_000(&["app", "create", "a", "--json", "--data-dir", d], &[])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("master.key was readable by others"), "{stderr}");
    assert_eq!(mode(&key), 0o600);
    let out = upline_with_umask_000(
        &["token", "--bucket", "doc", "--object", "a", "--data-dir", d],
        &[],
    )
    .wait_with_output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("credentials.toml was readable by others"));
    assert_eq!(mode(&creds), 0o600);
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        MASTER_KEY,
        "the key itself is kept"
    );
}
