//! The app backend's API end to end: init with every kind of bad
//! authentication, the returned token uploading the object, video/query,
//! and notifications through the outbox — to a receiver that is down at
//! first, and across a restart of the node.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use serde_json::{Value, json};
use upline_server::unix_now;

fn fast(c: &mut upline_server::ServerConfig) {
    c.worker_interval_ms = 50;
    c.notify_base_delay_secs = 1;
}

fn sha1_hex(s: &str) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(s.as_bytes()))
}

struct Caller {
    key: String,
    secret: String,
}

impl Caller {
    async fn call_with(
        &self,
        n: &TestNode,
        path: &str,
        body: Value,
        nonce: &str,
        cur: i64,
        sum: Option<String>,
    ) -> Value {
        let cur = cur.to_string();
        let sum = sum.unwrap_or_else(|| sha1_hex(&format!("{}{nonce}{cur}", self.secret)));
        let r = n
            .http
            .post(format!("{}{path}", n.base))
            .header("AppKey", &self.key)
            .header("Nonce", nonce)
            .header("CurTime", &cur)
            .header("CheckSum", sum)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the app API answers 200 with a code in the body");
        r.json().await.unwrap()
    }

    async fn call(&self, n: &TestNode, path: &str, body: Value) -> Value {
        let nonce = format!("n{}", rand::random::<u64>());
        self.call_with(n, path, body, &nonce, unix_now(), None).await
    }
}

async fn new_app(n: &TestNode) -> Caller {
    let app = n.srv().create_app("demo").await;
    Caller {
        key: app.record.app_key,
        secret: app.secret,
    }
}

#[derive(Clone, Default)]
struct Receiver {
    fail: Arc<Mutex<bool>>,
    got: Arc<Mutex<Vec<(String, String)>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let sign = headers
        .get("sign")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    if *r.fail.lock().unwrap() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.got.lock().unwrap().push((sign, body));
    StatusCode::OK
}

async fn receiver(failing: bool) -> (String, Receiver) {
    let r = Receiver {
        fail: Arc::new(Mutex::new(failing)),
        got: Arc::default(),
    };
    let router = axum::Router::new()
        .route("/notify", axum::routing::post(receive))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    (url, r)
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// init, then the whole upload with the returned token.
async fn init_and_upload(n: &TestNode, app: &Caller, body: Value, bytes: &[u8]) -> (String, String) {
    let r = app.call(n, "/app/vod/upload/init", body).await;
    assert_eq!(r["code"], 200, "{r}");
    let (token, bucket, object) = (
        r["ret"]["xNosToken"].as_str().unwrap().to_owned(),
        r["ret"]["bucket"].as_str().unwrap().to_owned(),
        r["ret"]["object"].as_str().unwrap().to_owned(),
    );
    n.upload(&format!("/{bucket}/{object}"), &token, bytes, 40_000)
        .await;
    (bucket, object)
}

#[tokio::test]
async fn init_upload_query_and_a_signed_notification() {
    let n = start_with(fast).await;
    let app = new_app(&n).await;
    let (url, rx) = receiver(false).await;
    let r = app
        .call(
            &n,
            "/app/vod/callback/setUrl",
            json!({"callbackUrl": url, "signKey": "sk-123"}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");

    let bytes = data(100_000, 1);
    let (bucket, object) = init_and_upload(
        &n,
        &app,
        json!({"originFileName": "Holiday.MP4", "userDefInfo": "{\"k\":1}"}),
        &bytes,
    )
    .await;
    assert!(
        object.ends_with(".mp4") && object.len() > 20,
        "unique name keeping the extension: {object}"
    );
    assert!(bucket.starts_with("vod"));

    let vid = wait_for("the vid", async || {
        let r = app
            .call(
                &n,
                "/app/vod/video/query",
                json!({"objectNames": [object, "unknown.mp4"]}),
            )
            .await;
        r["ret"]["list"]
            .as_array()
            .filter(|l| !l.is_empty())
            .map(|l| l[0].clone())
    })
    .await;
    assert_eq!(vid["objectName"], object.as_str());
    let vid = vid["vid"].as_i64().unwrap();

    let (sign, body) = wait_for("the notification", async || {
        rx.got.lock().unwrap().first().cloned()
    })
    .await;
    let b: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(b["type"], "upload");
    assert_eq!(b["vid"], vid);
    assert_eq!(b["name"], "Holiday.MP4");
    assert_eq!(b["user_defined"], "{\"k\":1}");
    assert_eq!(b["size"], 100_000);
    assert_eq!(b["md5"], md5_hex(&bytes));
    assert_eq!(b["origAddr"], format!("{}/{bucket}/{object}", n.base));
    assert_eq!(
        sign,
        md5_hex(format!("{body}sk-123").as_bytes()),
        "sign = md5(body + signKey)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.got.lock().unwrap().len(), 1, "delivered once");
    n.stop().await;
}

#[tokio::test]
async fn bad_checksum_stale_time_replayed_nonce_and_bad_params() {
    let n = start().await;
    let app = new_app(&n).await;
    let body = json!({"originFileName": "a.mp4"});
    let now = unix_now();
    let r = app
        .call_with(
            &n,
            "/app/vod/upload/init",
            body.clone(),
            "n1",
            now,
            Some("0".repeat(40)),
        )
        .await;
    assert_eq!(
        (r["code"].as_i64(), r["msg"].as_str()),
        (Some(403), Some("CheckSum does not match"))
    );
    let r = app
        .call_with(&n, "/app/vod/upload/init", body.clone(), "n2", now - 301, None)
        .await;
    assert_eq!(r["code"], 403, "stale CurTime: {r}");
    let r = app
        .call_with(&n, "/app/vod/upload/init", body.clone(), "n3", now + 301, None)
        .await;
    assert_eq!(r["code"], 403, "future CurTime: {r}");
    let r = app
        .call_with(&n, "/app/vod/upload/init", body.clone(), "n4", now, None)
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let r = app
        .call_with(&n, "/app/vod/upload/init", body.clone(), "n4", now, None)
        .await;
    assert_eq!(
        (r["code"].as_i64(), r["msg"].as_str()),
        (Some(403), Some("Nonce already used"))
    );
    let stranger = Caller {
        key: "nope".into(),
        secret: app.secret.clone(),
    };
    assert_eq!(
        stranger.call(&n, "/app/vod/upload/init", body.clone()).await["code"],
        403
    );
    let r = n
        .http
        .post(format!("{}/app/vod/upload/init", n.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 403, "no headers");
    assert_eq!(
        app.call(&n, "/app/vod/upload/init", json!({"userFileName": "x"}))
            .await["code"],
        414
    );
    assert_eq!(
        app.call(&n, "/app/vod/video/query", json!({"objectNames": []}))
            .await["code"],
        414
    );
    assert_eq!(
        app.call(&n, "/app/vod/callback/setUrl", json!({"callbackUrl": "ftp://x"}))
            .await["code"],
        414
    );
    assert_eq!(
        app.call(&n, "/app/vod/upload/init", json!("not an object")).await["code"],
        414
    );
    n.stop().await;
}

/// An app whose endpoint takes requests and never answers does not hold
/// back another app's notification: each is sent on its own. They used to
/// go one after another, and the second waited out the first's 10 s
/// timeout (found in review).
#[tokio::test]
async fn a_hanging_receiver_does_not_hold_back_another() {
    let n = start_with(fast).await;
    let app = new_app(&n).await;
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}/notify", hanging.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hanging.accept().await {
            held.push(conn);
        }
    });
    init_and_upload(
        &n,
        &app,
        json!({"originFileName": "a.mp4", "uploadCallbackUrl": hanging_url}),
        &data(1000, 5),
    )
    .await;
    // The first notification is out, and hanging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (url, rx) = receiver(false).await;
    init_and_upload(
        &n,
        &app,
        json!({"originFileName": "b.mp4", "uploadCallbackUrl": url}),
        &data(1000, 6),
    )
    .await;
    let started = std::time::Instant::now();
    wait_for("the second app's notification", async || {
        rx.got.lock().unwrap().first().cloned()
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held back {:?} behind a hanging endpoint",
        started.elapsed()
    );
    n.stop().await;
}

#[tokio::test]
async fn a_receiver_down_at_first_gets_the_notification_later() {
    let n = start_with(fast).await;
    let app = new_app(&n).await;
    let (url, rx) = receiver(true).await;
    let bytes = data(1000, 2);
    init_and_upload(
        &n,
        &app,
        json!({"originFileName": "a.mp4", "uploadCallbackUrl": url}),
        &bytes,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.got.lock().unwrap().is_empty());
    *rx.fail.lock().unwrap() = false;
    let (sign, body) = wait_for("the retried notification", async || {
        rx.got.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(
        sign,
        md5_hex(format!("{body}{}", app.secret).as_bytes()),
        "without a signKey, the AppSecret signs"
    );
    n.stop().await;
}

#[tokio::test]
async fn notifications_survive_a_restart_of_the_node() {
    let n = start_with(fast).await;
    let app = new_app(&n).await;
    let (url, rx) = receiver(true).await;
    init_and_upload(
        &n,
        &app,
        json!({"originFileName": "a.mp4", "uploadCallbackUrl": url}),
        &data(10, 3),
    )
    .await;
    // The node goes away at once: the completion may not even be recorded
    // yet, and the receiver refuses everything meanwhile.
    let tmp = n.tmp.clone();
    n.stop().await;
    *rx.fail.lock().unwrap() = false;
    let n = start_in(tmp, fast).await;
    let (_, body) = wait_for("the notification after the restart", async || {
        rx.got.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["type"], "upload");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.got.lock().unwrap().len(), 1);
    n.stop().await;
}
