//! A real node on port 0 with a temp data dir, and a small HTTP client
//! that speaks the protocol the way the original service's clients do.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use upline_core::Node;
use upline_proto::PutPolicy;
use upline_server::testing::TestServer;
use upline_server::{ServerConfig, unix_now};

pub use upline_server::testing::{ACCESS_KEY as AK, SECRET_KEY as SK};

/// Deterministic test bytes.
pub fn data(len: usize, seed: u8) -> Vec<u8> {
    upline_server::testing::data(len, seed as u64)
}

/// A test node and a client for it.
pub struct TestNode {
    pub base: String,
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    /// The data directory, kept alive by `tmp` across restarts.
    pub path: std::path::PathBuf,
    pub tmp: Arc<tempfile::TempDir>,
    pub http: reqwest::Client,
    srv: TestServer,
}

pub async fn start() -> TestNode {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestNode {
    wrap(TestServer::start(tweak).await)
}

/// A node without the resume query's rate limits, for tests that poll the
/// resume point or query after every refusal.
pub async fn start_unthrottled() -> TestNode {
    start_with(|c| {
        c.query_rate_per_ip = 0;
        c.query_rate_per_token = 0;
    })
    .await
}

/// A node on an existing data directory (a restart).
pub async fn start_in(tmp: Arc<tempfile::TempDir>, tweak: impl FnOnce(&mut ServerConfig)) -> TestNode {
    wrap(TestServer::start_in(tmp, tweak).await)
}

fn wrap(srv: TestServer) -> TestNode {
    TestNode {
        base: srv.base.clone(),
        addr: srv.addr,
        node: srv.node.clone(),
        path: srv.data_dir(),
        tmp: srv.tmp.clone(),
        http: reqwest::Client::new(),
        srv,
    }
}

pub fn policy(bucket: &str, object: &str) -> PutPolicy {
    PutPolicy {
        bucket: bucket.into(),
        object: object.into(),
        expires: Some(unix_now() + 3600),
        ..Default::default()
    }
}

pub fn sign(p: &PutPolicy) -> String {
    p.sign(AK, SK.as_bytes())
}

pub fn token(bucket: &str, object: &str) -> String {
    sign(&policy(bucket, object))
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

pub fn md5_b64(data: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

/// One chunk request.
pub struct Chunk<'a> {
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub offset: u64,
    pub complete: bool,
    pub context: Option<&'a str>,
    pub body: Vec<u8>,
    pub headers: Vec<(&'a str, String)>,
}

impl<'a> Chunk<'a> {
    pub fn new(
        path: &'a str,
        token: &'a str,
        offset: u64,
        complete: bool,
        context: Option<&'a str>,
        body: Vec<u8>,
    ) -> Self {
        Self {
            path,
            token: Some(token),
            offset,
            complete,
            context,
            body,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
}

impl TestNode {
    pub fn srv(&self) -> &TestServer {
        &self.srv
    }

    pub async fn stop(self) {
        self.srv.stop().await
    }

    /// The node's `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    pub async fn send(&self, c: Chunk<'_>) -> (u16, Value) {
        let mut url = format!(
            "{}{}?offset={}&complete={}&version=1.0",
            self.base, c.path, c.offset, c.complete
        );
        if let Some(ctx) = c.context {
            url.push_str("&context=");
            url.push_str(ctx);
        }
        let mut req = self.http.post(url).body(c.body);
        if let Some(t) = c.token {
            req = req.header("x-nos-token", t);
        }
        for (k, v) in c.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    pub async fn query(&self, path: &str, token: &str, ctx: &str) -> (u16, Value) {
        let url = format!("{}{}?uploadContext&context={ctx}&version=1.0", self.base, path);
        let resp = self
            .http
            .get(url)
            .header("x-nos-token", token)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// Uploads `data` in `chunk`-sized pieces; returns the context.
    pub async fn upload(&self, path: &str, token: &str, data: &[u8], chunk: usize) -> String {
        let mut ctx: Option<String> = None;
        let mut offset = 0usize;
        loop {
            let end = (offset + chunk).min(data.len());
            let complete = end == data.len();
            let (status, body) = self
                .send(Chunk::new(
                    path,
                    token,
                    offset as u64,
                    complete,
                    ctx.as_deref(),
                    data[offset..end].to_vec(),
                ))
                .await;
            assert_eq!(status, 200, "chunk at {offset}: {body}");
            assert_eq!(body["offset"], end as u64);
            ctx = Some(body["context"].as_str().unwrap().to_owned());
            offset = end;
            if complete {
                return ctx.unwrap();
            }
        }
    }

    /// The published bytes of an object, read through the node.
    pub async fn object_bytes(&self, bucket: &str, object: &str) -> Option<Vec<u8>> {
        self.srv.object_bytes(bucket, object).await
    }
}

/// Writes `request` on a raw TCP connection and reads until the server
/// closes or `wait` passes with no new bytes.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_for(&mut s, wait).await
}

pub async fn read_for(s: &mut tokio::net::TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
