//! The uploader against a real node in this process, through a fake LBS
//! and a fault-injecting proxy where a test needs a misbehaving network.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use upline_client::{ChunkPolicy, Event, RetryPolicy, UploadError, Uploader};
use upline_proto::PutPolicy;
use upline_server::unix_now;

use upline_server::testing::{ACCESS_KEY as AK, SECRET_KEY as SK, TestServer as Server, data};

async fn server() -> Server {
    Server::start(|_| {}).await
}

trait Stored {
    async fn stored(&self, object: &str) -> Vec<u8>;
}

impl Stored for Server {
    async fn stored(&self, object: &str) -> Vec<u8> {
        self.object_bytes("doc", object).await.expect("object published")
    }
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}

fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

type Events = Arc<Mutex<Vec<Event>>>;

fn builder(events: &Events, journal: &Path) -> upline_client::UploaderBuilder {
    let sink = events.clone();
    Uploader::builder()
        .credentials(AK, SK)
        .retry_policy(quick_retries())
        .journal_dir(journal)
        .on_event(move |e| sink.lock().unwrap().push(e.clone()))
}

/// Forwards to a node, answering 500 to the first `fail` chunk POSTs and
/// 403 to every chunk POST once `budget` forwarded ones are used up.
/// Tests may also set `busy`: the first that many chunk POSTs of a
/// session get the 400 a node answers while another node holds the
/// session's lease; and `lose_final`: the final chunk is forwarded, and
/// its answer replaced by a 403 (the run ends, the chunk is committed).
#[derive(Clone)]
struct Proxy {
    target: String,
    fail: Arc<AtomicU32>,
    budget: Arc<AtomicI64>,
    failed: Arc<AtomicU32>,
    busy: Arc<AtomicU32>,
    lose_final: Arc<std::sync::atomic::AtomicBool>,
    http: reqwest::Client,
}

async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    let is_chunk = req.method() == axum::http::Method::POST;
    if is_chunk
        && p.fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        p.failed.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::INTERNAL_SERVER_ERROR, "{\"errMsg\":\"injected\"}").into_response();
    }
    if is_chunk && p.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
        return (StatusCode::FORBIDDEN, "{\"errMsg\":\"token has expired\"}").into_response();
    }
    let query = req.uri().query().unwrap_or_default().to_owned();
    if is_chunk
        && query.contains("context=")
        && p.busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        let body = serde_json::json!({
            "requestId": "busy",
            "requestID": "busy",
            "errMsg": upline_proto::BUSY_MESSAGE,
        })
        .to_string();
        return (StatusCode::BAD_REQUEST, body).into_response();
    }
    let lose = is_chunk && query.contains("complete=true") && p.lose_final.load(Ordering::SeqCst);
    let url = format!("{}{}", p.target, req.uri().path_and_query().unwrap());
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 8 << 20).await.unwrap();
    let mut out = p.http.request(method, url).body(body);
    for name in ["x-nos-token", "content-md5", "content-type"] {
        if let Some(v) = headers.get(name) {
            out = out.header(name, v.to_str().unwrap());
        }
    }
    let resp = out.send().await.unwrap();
    if lose && resp.status() == 200 {
        return (StatusCode::FORBIDDEN, "{\"errMsg\":\"token has expired\"}").into_response();
    }
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    (status, resp.bytes().await.unwrap()).into_response()
}

async fn proxy(target: &str, fail: u32, budget: i64) -> (String, Proxy) {
    let p = Proxy {
        target: target.to_owned(),
        fail: Arc::new(AtomicU32::new(fail)),
        budget: Arc::new(AtomicI64::new(budget)),
        failed: Arc::default(),
        busy: Arc::default(),
        lose_final: Arc::default(),
        http: reqwest::Client::new(),
    };
    let router = axum::Router::new().fallback(forward).with_state(p.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    (url, p)
}

/// An LBS that lists a dead node first, then the real one.
async fn lbs_with_dead_first(real: &str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = format!("http://{}", l.local_addr().unwrap());
    let dead = {
        let d = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", d.local_addr().unwrap())
    }; // dropped: nothing listens there any more
    let body = serde_json::json!({"lbs": format!("{me}/lbs"), "upload": [dead, real]}).to_string();
    let router = axum::Router::new().route("/lbs", axum::routing::get(move || async move { body }));
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    format!("{me}/lbs")
}

#[tokio::test]
async fn adaptive_upload_through_lbs_matches_and_reports_progress() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(9 << 20, 1);
    let path = file(dir.path(), "clip.mp4", &bytes);
    let events = Events::default();
    let up = builder(&events, &dir.path().join("j"))
        .lbs(format!("{}/lbs", s.base))
        .build()
        .unwrap();
    let done = up.upload_file(&path, "doc", "clip.mp4").await.unwrap();
    assert_eq!(done.size, bytes.len() as u64);
    assert_eq!(done.resumed_from, 0);
    assert_eq!(s.stored("clip.mp4").await, bytes);
    let rec = s.node.object("doc", "clip.mp4").await.unwrap().unwrap();
    assert_eq!(
        rec.md5.as_deref(),
        Some(done.md5.as_str()),
        "the whole-file claim was sent and checked"
    );
    assert_eq!(rec.content_type, "video/mp4");
    let acked: Vec<u64> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| {
            if let Event::Progress { acked, .. } = e {
                Some(*acked)
            } else {
                None
            }
        })
        .collect();
    assert!(acked.windows(2).all(|w| w[0] < w[1]) && acked.last() == Some(&(9 << 20)));
    assert!(
        acked.len() < 36,
        "chunks grew past 256 KiB: {} requests",
        acked.len()
    );
    assert!(
        std::fs::read_dir(dir.path().join("j"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "journal cleared"
    );
}

#[tokio::test]
async fn empty_files_upload() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), "empty", b"");
    let up = builder(&Events::default(), dir.path())
        .nodes([s.base.clone()])
        .build()
        .unwrap();
    let done = up.upload_file(&path, "doc", "empty").await.unwrap();
    assert_eq!(
        (done.size, done.md5.as_str()),
        (0, "d41d8cd98f00b204e9800998ecf8427e")
    );
    assert_eq!(s.stored("empty").await, b"");
}

#[tokio::test]
async fn a_dead_first_node_fails_over_to_the_next() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 << 20, 2);
    let path = file(dir.path(), "f", &bytes);
    let events = Events::default();
    let lbs = lbs_with_dead_first(&s.base).await;
    let up = builder(&events, dir.path())
        .lbs(lbs)
        .chunk_policy(ChunkPolicy::Fixed(1 << 20))
        .build()
        .unwrap();
    up.upload_file(&path, "doc", "f").await.unwrap();
    assert_eq!(s.stored("f").await, bytes);
    let retries = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Retry { .. }))
        .count();
    assert!(retries >= 1, "the dead node was tried and left");
}

#[tokio::test]
async fn a_node_answering_500_for_a_while_is_retried() {
    let s = server().await;
    let (url, p) = proxy(&s.base, 4, i64::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 << 20, 3);
    let path = file(dir.path(), "f", &bytes);
    let up = builder(&Events::default(), dir.path())
        .nodes([url])
        .chunk_policy(ChunkPolicy::Fixed(512 << 10))
        .build()
        .unwrap();
    up.upload_file(&path, "doc", "f").await.unwrap();
    assert_eq!(p.failed.load(Ordering::SeqCst), 4);
    assert_eq!(s.stored("f").await, bytes);
}

#[tokio::test]
async fn retries_give_up_with_the_last_failure() {
    let s = server().await;
    let (url, _p) = proxy(&s.base, 1000, i64::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), "f", b"abc");
    let up = builder(&Events::default(), dir.path())
        .nodes([url])
        .build()
        .unwrap();
    match up.upload_file(&path, "doc", "f").await {
        Err(UploadError::Exhausted { attempts: 8, last }) => assert!(last.contains("500"), "{last}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_expired_token_stops_at_once() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), "f", b"abc");
    let expired = PutPolicy {
        bucket: "doc".into(),
        object: "f".into(),
        expires: Some(unix_now() - 10),
        ..Default::default()
    }
    .sign(AK, SK.as_bytes());
    let events = Events::default();
    let up = builder(&events, dir.path())
        .nodes([s.base.clone()])
        .token(expired)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    match up.upload_file(&path, "doc", "f").await {
        Err(e @ UploadError::Token(_)) => assert!(e.to_string().contains("expired"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "no retries on 403");
    let retried = events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::Retry { .. }));
    assert!(!retried, "a 403 is final");
}

/// Uploads until the proxy's budget of chunks is spent (then 403).
async fn interrupted(s: &Server, dir: &Path, path: &Path, chunks: i64) {
    let (url, _p) = proxy(&s.base, 0, chunks).await;
    let up = builder(&Events::default(), &dir.join("j"))
        .nodes([url])
        .chunk_policy(ChunkPolicy::Fixed(1 << 20))
        .build()
        .unwrap();
    assert!(matches!(
        up.upload_file(path, "doc", "f").await,
        Err(UploadError::Token(_))
    ));
}

#[tokio::test]
async fn an_interrupted_upload_resumes_from_the_journal_without_resending() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(8 << 20, 4);
    let path = file(dir.path(), "f", &bytes);
    interrupted(&s, dir.path(), &path, 5).await;
    assert_eq!(s.node.bytes_received(), 5 << 20);
    let events = Events::default();
    let up = builder(&events, &dir.path().join("j"))
        .nodes([s.base.clone()])
        .build()
        .unwrap();
    let done = up.upload_file(&path, "doc", "f").await.unwrap();
    assert_eq!(done.resumed_from, 5 << 20);
    assert_eq!(
        s.node.bytes_received(),
        8 << 20,
        "no acknowledged byte was sent twice"
    );
    assert_eq!(s.stored("f").await, bytes);
}

#[tokio::test]
async fn a_rate_limited_resume_query_is_retried() {
    // The node's query limit answers 429: the uploader waits and asks
    // again instead of giving up (it gave up before).
    let s = Server::start(|c| c.query_rate_per_ip = 2).await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 << 20, 5);
    let path = file(dir.path(), "f", &bytes);
    interrupted(&s, dir.path(), &path, 2).await;
    let token = PutPolicy {
        bucket: "doc".into(),
        object: "f".into(),
        expires: Some(unix_now() + 600),
        ..Default::default()
    }
    .sign(AK, SK.as_bytes());
    let http = reqwest::Client::new();
    let mut refused = 0;
    for _ in 0..4 {
        let st = http
            .get(format!(
                "{}/doc/f?uploadContext&context=nothing&version=1.0",
                s.base
            ))
            .header("x-nos-token", &token)
            .send()
            .await
            .unwrap()
            .status();
        refused += (st == 429) as u32;
    }
    assert!(refused >= 1, "the limit is spent");
    let events = Events::default();
    let up = builder(&events, &dir.path().join("j"))
        .nodes([s.base.clone()])
        .build()
        .unwrap();
    let done = up.upload_file(&path, "doc", "f").await.unwrap();
    assert_eq!(done.resumed_from, 2 << 20);
    assert_eq!(s.stored("f").await, bytes);
    let retried = events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::Retry { .. }));
    assert!(retried, "the 429 was waited out");
}

#[tokio::test]
async fn a_file_changed_between_runs_starts_over() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), "f", &data(4 << 20, 5));
    interrupted(&s, dir.path(), &path, 2).await;
    let changed = data(4 << 20, 6);
    std::fs::write(&path, &changed).unwrap();
    let events = Events::default();
    let up = builder(&events, &dir.path().join("j"))
        .nodes([s.base.clone()])
        .build()
        .unwrap();
    let done = up.upload_file(&path, "doc", "f").await.unwrap();
    assert_eq!(done.resumed_from, 0);
    assert_eq!(s.stored("f").await, changed);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Warning { message, .. } if message.contains("changed")))
    );
}

#[tokio::test]
async fn a_forgotten_session_starts_over_with_a_warning() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 << 20, 7);
    let path = file(dir.path(), "f", &bytes);
    interrupted(&s, dir.path(), &path, 1).await;
    s.node.collect(unix_now() + 8 * 24 * 3600).await.unwrap();
    let events = Events::default();
    let up = builder(&events, &dir.path().join("j"))
        .nodes([s.base.clone()])
        .build()
        .unwrap();
    let done = up.upload_file(&path, "doc", "f").await.unwrap();
    assert_eq!(done.resumed_from, 0);
    assert_eq!(s.stored("f").await, bytes);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Warning { message, .. } if message.contains("no longer knows")))
    );
}

/// A run that ends after its final chunk was committed but before its
/// answer came leaves the journal behind; the next run finds the session
/// at the file's size and is done, sending nothing. It used to send an
/// empty final chunk, be refused as already complete, and fail so on
/// every run until the session expired.
#[tokio::test]
async fn a_final_chunk_whose_answer_was_lost_is_done_on_the_next_run() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 << 20, 8);
    let path = file(dir.path(), "f", &bytes);
    let (url, p) = proxy(&s.base, 0, i64::MAX).await;
    p.lose_final.store(true, Ordering::SeqCst);
    let first = builder(&Events::default(), &dir.path().join("j"))
        .nodes([url])
        .chunk_policy(ChunkPolicy::Fixed(1 << 20))
        .build()
        .unwrap();
    assert!(matches!(
        first.upload_file(&path, "doc", "f").await,
        Err(UploadError::Token(_))
    ));
    assert_eq!(s.stored("f").await, bytes, "the final chunk was committed");
    let events = Events::default();
    let up = builder(&events, &dir.path().join("j"))
        .nodes([s.base.clone()])
        .build()
        .unwrap();
    let done = up.upload_file(&path, "doc", "f").await.unwrap();
    assert_eq!((done.size, done.resumed_from), (3 << 20, 3 << 20));
    let rec = s.node.object("doc", "f").await.unwrap().unwrap();
    assert_eq!(rec.md5.as_deref(), Some(done.md5.as_str()));
    assert_eq!(s.node.bytes_received(), 3 << 20, "nothing was sent again");
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Warning { message, .. } if message.contains("already complete")))
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("j"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "journal cleared"
    );
}

/// While another node still holds the session's lease (its request from
/// before a network loss runs on), a node answers the chunk with a 400
/// "busy" and the resume point has not moved: the uploader sends the same
/// chunk again after a pause. It used to give up.
#[tokio::test]
async fn a_busy_session_is_retried() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 << 20, 9);
    let path = file(dir.path(), "f", &bytes);
    let (url, p) = proxy(&s.base, 0, i64::MAX).await;
    p.busy.store(2, Ordering::SeqCst);
    let events = Events::default();
    let up = builder(&events, &dir.path().join("j"))
        .nodes([url])
        .chunk_policy(ChunkPolicy::Fixed(1 << 20))
        .build()
        .unwrap();
    up.upload_file(&path, "doc", "f").await.unwrap();
    assert_eq!(p.busy.load(Ordering::SeqCst), 0, "both busy answers were given");
    assert_eq!(s.stored("f").await, bytes);
    let retries = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Retry { reason, .. } if reason.contains("another node")))
        .count();
    assert_eq!(retries, 2);
}

/// An LBS answering with a fixed body, counting its hits.
async fn fixed_lbs(body: serde_json::Value) -> (String, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    let body = body.to_string();
    let router = axum::Router::new().route(
        "/lbs",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { body }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/lbs", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    (url, hits)
}

#[tokio::test]
async fn the_lbs_address_from_the_answer_is_asked_next() {
    let s = server().await;
    let dead = {
        let d = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", d.local_addr().unwrap())
    };
    // The second LBS (the "by IP" one) knows the live node.
    let (second, second_hits) = fixed_lbs(serde_json::json!({"lbs": "", "upload": [s.base]})).await;
    // The configured LBS lists only a dead node and points at the second.
    let (first, first_hits) = fixed_lbs(serde_json::json!({"lbs": second, "upload": [dead]})).await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(100_000, 8);
    let path = file(dir.path(), "f", &bytes);
    let up = builder(&Events::default(), dir.path())
        .lbs(first)
        .build()
        .unwrap();
    up.upload_file(&path, "doc", "f").await.unwrap();
    assert_eq!(s.stored("f").await, bytes);
    assert_eq!(
        first_hits.load(Ordering::SeqCst),
        1,
        "the configured LBS was asked once"
    );
    assert!(
        second_hits.load(Ordering::SeqCst) >= 1,
        "then the address it gave"
    );
}
