//! The demo page and its dev-only token endpoint, over real HTTP: on by
//! default on the embedded default bound to loopback, off when turned off
//! (or on an LBS), and the token endpoint answering only the page itself.

use reqwest::StatusCode;
use serde_json::Value;
use upline_server::Role;
use upline_server::testing::{TestServer, data};

async fn get(srv: &TestServer, path: &str) -> reqwest::Response {
    reqwest::get(format!("{}{path}", srv.base))
        .await
        .expect("request")
}

/// `POST /demo/token` with extra headers.
async fn ask_token(srv: &TestServer, body: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/demo/token", srv.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn on_by_default_on_loopback_and_its_tokens_upload_and_download() {
    let srv = TestServer::start(|_| {}).await;

    let page = get(&srv, "/demo").await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("'wasm-unsafe-eval'")
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<meta name="upline-bucket" content="uploads">"#),
        "{html}"
    );
    for (path, needle) in [
        ("/upline.js", "export class Uploader"),
        ("/demo.js", "/demo/token"),
    ] {
        let r = get(&srv, path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
    // The MD5 library is there exactly when npm installed it.
    let md5 = get(&srv, "/md5.js").await.status();
    assert!(md5 == 200 || md5 == 404, "{md5}");

    let (status, given) = ask_token(&srv, r#"{"object":"demo clip.mp4"}"#, &[]).await;
    assert_eq!(status, 200, "{given}");
    assert_eq!(given["bucket"], "uploads", "the default bucket");
    let token = given["token"].as_str().unwrap();
    let bytes = data(5000, 7);
    let put = reqwest::Client::new()
        .post(format!(
            "{}/uploads/demo%20clip.mp4?offset=0&complete=true&version=1.0",
            srv.base
        ))
        .header("x-nos-token", token)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "the token uploads");
    let link = given["download"].as_str().unwrap();
    assert!(link.starts_with("/uploads/demo%20clip.mp4?AccessKey="), "{link}");
    let got = get(&srv, link).await;
    assert_eq!(got.status(), 200, "the link downloads");
    assert_eq!(got.bytes().await.unwrap().as_ref(), &bytes[..]);
    srv.stop().await;
}

#[tokio::test]
async fn off_when_turned_off_and_on_an_lbs() {
    let off = TestServer::start(|c| c.demo = Some(false)).await;
    let lbs = TestServer::start(|c| {
        c.role = Role::Lbs;
        c.demo = Some(true);
    })
    .await;
    for srv in [&off, &lbs] {
        for path in ["/demo", "/upline.js", "/demo.js", "/md5.js"] {
            assert_eq!(get(srv, path).await.status(), 404, "{path}");
        }
        let (status, body) = ask_token(srv, r#"{"object":"x.mp4"}"#, &[]).await;
        assert_eq!(status, 404, "no token endpoint: {body}");
        assert!(body.get("token").is_none());
    }
    off.stop().await;
    lbs.stop().await;
}

#[tokio::test]
async fn token_endpoint_answers_only_the_page_itself() {
    let srv = TestServer::start(|_| {}).await;
    let body = r#"{"object":"a.mp4"}"#;
    let same = format!("http://{}", srv.addr);
    let (status, _) = ask_token(
        &srv,
        body,
        &[("origin", &same), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(status, 200, "the demo page itself");
    let localhost = format!("localhost:{}", srv.addr.port());
    let (status, _) = ask_token(&srv, body, &[("host", &localhost)]).await;
    assert_eq!(status, 200, "localhost is loopback too");

    let refusals: [&[(&str, &str)]; 3] = [
        &[("origin", "http://evil.example")],
        &[("sec-fetch-site", "cross-site")],
        // DNS rebinding: a foreign name that resolves to 127.0.0.1.
        &[("host", "evil.example"), ("origin", "http://evil.example")],
    ];
    for headers in refusals {
        let (status, answer) = ask_token(&srv, body, headers).await;
        assert_eq!(status, 403, "{headers:?}");
        assert!(answer.get("token").is_none());
        assert!(answer["errMsg"].as_str().unwrap().contains("demo token endpoint"));
    }

    let (status, _) = ask_token(&srv, "not json", &[]).await;
    assert_eq!(status, 400);
    let (status, answer) = ask_token(&srv, r#"{"bucket":"Bad_Bucket","object":"a"}"#, &[]).await;
    assert_eq!(status, 400, "{answer}");
    srv.stop().await;
}

#[tokio::test]
async fn a_chunk_upload_to_bucket_demo_is_no_demo_call() {
    let srv = TestServer::start(|_| {}).await;
    // `POST /demo/token` with an offset is a chunk of object "token" in
    // bucket "demo": the protocol's, so without a token it is a 403.
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/demo/token?offset=0&complete=true&version=1.0",
            srv.base
        ))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    srv.stop().await;
}
