//! Completion callbacks against a real HTTP server that answers 200,
//! answers 500, or never answers.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use common::*;
use upline_proto::PutPolicy;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    Fail,
    Hang,
}

#[derive(Clone)]
struct App {
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

async fn callback(State(app): State<App>, headers: HeaderMap, body: String) -> (StatusCode, String) {
    let ct = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    app.seen.lock().unwrap().push((ct, body));
    let mode = *app.mode.lock().unwrap();
    match mode {
        Mode::Ok => (StatusCode::OK, "{\"ok\":\"from-app\"}".into()),
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "no".into()),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            (StatusCode::OK, "late".into())
        }
    }
}

async fn app_server(mode: Mode) -> (String, App) {
    let app = App {
        mode: Arc::new(Mutex::new(mode)),
        seen: Arc::default(),
    };
    let router = axum::Router::new()
        .route("/cb", axum::routing::post(callback))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, app)
}

fn cb_token(object: &str, url: &str, body: Option<&str>) -> String {
    sign(&PutPolicy {
        callback_url: Some(url.into()),
        callback_body: body.map(str::to_owned),
        ..policy("doc", object)
    })
}

#[tokio::test]
async fn a_200_callback_gets_substituted_variables_and_its_answer_comes_back() {
    let n = start().await;
    let (url, app) = app_server(Mode::Ok).await;
    let t = cb_token(
        "v/a b.mp4",
        &url,
        Some("bucket=$(Bucket)&$(ObjectSize)&name=${object}&md5=$(ObjectMD5)&w=$(AVinfo.video.width)"),
    );
    let bytes = data(5000, 1);
    let (s, b) = n
        .send(
            Chunk::new("/doc/v%2Fa+b.mp4", &t, 0, true, None, bytes.clone())
                .header("content-type", "video/mp4"),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let ret = base64::engine::general_purpose::STANDARD
        .decode(b["callbackRetMsg"].as_str().unwrap())
        .unwrap();
    assert_eq!(ret, b"{\"ok\":\"from-app\"}");
    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "application/x-www-form-urlencoded");
    assert_eq!(
        seen[0].1,
        format!(
            "bucket=doc&ObjectSize=5000&name=v%2Fa+b.mp4&md5={}&w=",
            md5_hex(&bytes)
        )
    );
    n.stop().await;
}

#[tokio::test]
async fn json_and_default_callback_bodies() {
    let n = start().await;
    let (url, app) = app_server(Mode::Ok).await;
    let t = cb_token("j", &url, Some(r#"{"size":${size},"type":"${mimeType}"}"#));
    let (s, _) = n
        .send(Chunk::new("/doc/j", &t, 0, true, None, vec![1; 10]).header("content-type", "image/png"))
        .await;
    assert_eq!(s, 200);
    let t = cb_token("d", &url, None);
    let (s, b) = n.send(Chunk::new("/doc/d", &t, 0, true, None, vec![1; 3])).await;
    assert_eq!(s, 200);
    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        (
            "application/json".into(),
            r#"{"size":10,"type":"image/png"}"#.into()
        )
    );
    let default: serde_json::Value = serde_json::from_str(&seen[1].1).unwrap();
    assert_eq!(default["object"], "d");
    assert_eq!(default["size"], 3);
    assert_eq!(default["context"], b["context"]);
    n.stop().await;
}

#[tokio::test]
async fn a_failing_callback_is_520_the_object_stays_and_a_replay_retries() {
    let n = start().await;
    let (url, app) = app_server(Mode::Fail).await;
    let t = cb_token("f", &url, Some("o=${object}"));
    let (_, b) = n
        .send(Chunk::new("/doc/f", &t, 0, false, None, vec![1; 100]))
        .await;
    let ctx = b["context"].as_str().unwrap().to_owned();
    let last = vec![2; 50];
    let (s, b) = n
        .send(Chunk::new("/doc/f", &t, 100, true, Some(&ctx), last.clone()))
        .await;
    assert_eq!(s, 520, "{b}");
    assert!(b["errMsg"].as_str().unwrap().contains("callback"), "{b}");
    assert_eq!(
        n.object_bytes("doc", "f").await.unwrap().len(),
        150,
        "the object was stored"
    );

    *app.mode.lock().unwrap() = Mode::Ok;
    let (s, b) = n
        .send(Chunk::new("/doc/f", &t, 100, true, Some(&ctx), last.clone()))
        .await;
    assert_eq!(s, 200, "the exact replay retried the callback: {b}");
    assert_eq!(
        (&b["offset"], b["context"].as_str()),
        (&serde_json::json!(150), Some(ctx.as_str()))
    );
    assert!(!b["callbackRetMsg"].as_str().unwrap().is_empty());
    assert_eq!(app.seen.lock().unwrap().len(), 2);
    // Both outcomes are in the metrics.
    let metrics = n.metrics().await;
    for outcome in ["ok", "error"] {
        let line = format!("upline_callbacks_total{{kind=\"upload\",outcome=\"{outcome}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    n.stop().await;
}

#[tokio::test]
async fn a_callback_that_never_answers_times_out_as_520() {
    let n = start_with(|c| c.callback_timeout_secs = 1).await;
    let (url, _app) = app_server(Mode::Hang).await;
    let t = cb_token("h", &url, None);
    let started = Instant::now();
    let (s, b) = n.send(Chunk::new("/doc/h", &t, 0, true, None, vec![1; 10])).await;
    assert_eq!(s, 520, "{b}");
    assert!(started.elapsed() < Duration::from_secs(10), "the timeout applies");
    assert!(n.object_bytes("doc", "h").await.is_some());
    n.stop().await;
}

#[tokio::test]
async fn an_unreachable_callback_is_520() {
    let n = start().await;
    let t = cb_token("u", "http://127.0.0.1:9/cb", None);
    let (s, _) = n.send(Chunk::new("/doc/u", &t, 0, true, None, vec![1; 10])).await;
    assert_eq!(s, 520);
    n.stop().await;
}
