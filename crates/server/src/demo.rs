//! The demo page (`GET /demo`) with the browser uploader it shows off, and
//! its dev-only token endpoint (`POST /demo/token`).
//!
//! On by default only on the embedded default (local disk, embedded state)
//! bound to loopback: the token endpoint hands an upload token to whoever
//! asks, which is what a developer trying the page wants and what no
//! exposed node may do. `demo = true` turns it on elsewhere, `false` off.
//!
//! The page and `upline.js` are compiled in (`include_str!`), so the binary
//! builds and serves them on a machine where npm never ran. The MD5 library
//! (hash-wasm, an npm package we must not vendor) is read at request time
//! from the checkout's `web/node_modules`; when it is missing, `/md5.js` is
//! a 404 and the page uploads without a `Content-MD5` claim and says so.
//!
//! Every path here is outside the protocol's: `/demo`, `/demo.js`,
//! `/upline.js` and `/md5.js` have no object part, and `POST /demo/token`
//! has no `offset` (a chunk upload always has one).

use std::net::IpAddr;

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use upline_proto::{Bucket, ObjectKey, ObjectPath, PutPolicy};

use crate::app::{AppState, unix_now};
use crate::backends::{StateBackend, StorageBackend};
use crate::config::{Role, ServerConfig};
use crate::handlers::refused;
use crate::render::RequestId;

const PAGE: &str = include_str!("../../../web/demo/index.html");
const PAGE_SCRIPT: &str = include_str!("../../../web/demo/demo.js");
const MODULE: &str = include_str!("../../../web/upline.js");

/// hash-wasm's MD5 build, where `npm ci --prefix web` puts it.
const MD5_LIBRARY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../web/node_modules/hash-wasm/dist/md5.umd.min.js"
);

/// Lifetime of the tokens and download links the demo hands out: long
/// enough for a big upload, paused and resumed within a day.
const TOKEN_TTL_SECS: i64 = 24 * 3600;

/// hash-wasm compiles WebAssembly, hence `wasm-unsafe-eval`; upload nodes
/// listed by the LBS may be other hosts, hence `connect-src *`.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self' 'unsafe-inline'; connect-src *; img-src 'self' data:";

/// What the demo serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoCall {
    Page,
    PageScript,
    Module,
    Md5Library,
    Token,
}

impl DemoCall {
    /// The demo's endpoints; `None` for every other request.
    pub fn parse(method: &Method, path: &str, has_offset: bool) -> Option<DemoCall> {
        match (method, path) {
            (&Method::GET, "/demo") => Some(DemoCall::Page),
            (&Method::GET, "/demo.js") => Some(DemoCall::PageScript),
            (&Method::GET, "/upline.js") => Some(DemoCall::Module),
            (&Method::GET, "/md5.js") => Some(DemoCall::Md5Library),
            (&Method::POST, "/demo/token") if !has_offset => Some(DemoCall::Token),
            _ => None,
        }
    }
}

/// Whether this node serves the demo: `demo` when set, else only the
/// embedded default on a loopback address. Never on an LBS-only process.
pub fn enabled(cfg: &ServerConfig) -> bool {
    cfg.role == Role::Node && cfg.demo.unwrap_or_else(|| embedded_on_loopback(cfg))
}

fn embedded_on_loopback(cfg: &ServerConfig) -> bool {
    cfg.listen.ip().is_loopback()
        && matches!(StorageBackend::from_config(cfg), Ok(StorageBackend::Fs { .. }))
        && matches!(StateBackend::from_config(cfg), Ok(StateBackend::Embedded { .. }))
}

pub async fn handle(app: &AppState, rid: &RequestId, call: DemoCall, req: Request) -> Response {
    if !enabled(&app.cfg) {
        return refused(rid, StatusCode::NOT_FOUND, "no such endpoint".into());
    }
    match call {
        DemoCall::Page => asset("text/html; charset=utf-8", page(&app.cfg)),
        DemoCall::PageScript => asset("text/javascript; charset=utf-8", PAGE_SCRIPT.to_owned()),
        DemoCall::Module => asset("text/javascript; charset=utf-8", MODULE.to_owned()),
        DemoCall::Md5Library => match tokio::fs::read_to_string(MD5_LIBRARY).await {
            Ok(js) => asset("text/javascript; charset=utf-8", js),
            Err(_) => refused(
                rid,
                StatusCode::NOT_FOUND,
                "the MD5 library is not installed on this node (run npm ci --prefix web)".into(),
            ),
        },
        DemoCall::Token => token(app, rid, req).await,
    }
}

/// The page, told which bucket to upload to.
fn page(cfg: &ServerConfig) -> String {
    let bucket = Bucket::parse(&cfg.default_bucket).map_or_else(|_| "uploads".to_owned(), |b| b.to_string());
    PAGE.replace("{{bucket}}", &bucket)
}

fn asset(content_type: &'static str, body: String) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A rebuilt node's page must not be mixed with a cached older module.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    resp
}

#[derive(Deserialize)]
struct TokenAsk {
    bucket: Option<String>,
    object: String,
}

/// What the demo page needs for one object.
#[derive(Serialize)]
struct TokenGiven {
    token: String,
    bucket: String,
    object: String,
    expires: i64,
    /// A signed, same-origin download link for the object.
    download: String,
}

/// `POST /demo/token` `{"bucket"?, "object"}`: an upload token signed with
/// the node's first credential pair, and a download link.
async fn token(app: &AppState, rid: &RequestId, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Err(why) = same_origin(&parts.headers, &parts.uri, app.cfg.listen.ip()) {
        return refused(rid, StatusCode::FORBIDDEN, why.into());
    }
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return refused(rid, StatusCode::BAD_REQUEST, "unreadable body".into());
    };
    let ask: TokenAsk = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return refused(rid, StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let bucket = ask.bucket.unwrap_or_else(|| app.cfg.default_bucket.clone());
    let path = match (Bucket::parse(&bucket), ObjectKey::parse(&ask.object)) {
        (Ok(bucket), Ok(object)) => ObjectPath { bucket, object },
        (Err(e), _) => return refused(rid, StatusCode::BAD_REQUEST, e.to_string()),
        (_, Err(e)) => return refused(rid, StatusCode::BAD_REQUEST, e.to_string()),
    };
    let cred = &app.cfg.credentials[0];
    let expires = unix_now() + TOKEN_TTL_SECS;
    let policy = PutPolicy {
        bucket: path.bucket.to_string(),
        object: path.object.to_string(),
        expires: Some(expires),
        ..Default::default()
    };
    let query = upline_proto::signed_url::sign(
        &cred.access_key,
        cred.secret_key.as_bytes(),
        path.bucket.as_str(),
        path.object.as_str(),
        expires,
    );
    tracing::info!(bucket = %path.bucket, "demo token handed out");
    Json(TokenGiven {
        token: policy.sign(&cred.access_key, cred.secret_key.as_bytes()),
        download: format!("{}?{query}", path.render()),
        bucket: policy.bucket,
        object: policy.object,
        expires,
    })
    .into_response()
}

/// The token endpoint answers the demo page only. CORS lets any origin
/// read this node's answers (the token is the upload credential, not a
/// cookie), so without this any web site a developer visits could fetch
/// tokens from the node on their machine. Browsers send `Origin` (and
/// `Sec-Fetch-Site`) with such a request; and on a loopback node the host
/// name must be a loopback one, so a DNS-rebound name cannot pass for it.
fn same_origin(headers: &HeaderMap, uri: &Uri, listen: IpAddr) -> Result<(), &'static str> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .ok_or("the demo token endpoint needs a Host header")?;
    if listen.is_loopback() && !is_loopback_name(host) {
        return Err("the demo token endpoint answers only at a loopback address (localhost, 127.0.0.1)");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if origin != format!("http://{host}") && origin != format!("https://{host}") {
            return Err("the demo token endpoint answers only the demo page (same origin)");
        }
    }
    match headers.get("sec-fetch-site").map(|v| v.as_bytes()) {
        None | Some(b"same-origin") | Some(b"none") => Ok(()),
        Some(_) => Err("the demo token endpoint answers only the demo page (same origin)"),
    }
}

/// `localhost`, `127.0.0.1:8080`, `[::1]:8080` and the like.
fn is_loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:1",
            "127.1.2.3",
            "[::1]:8080",
        ] {
            assert!(is_loopback_name(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1:80",
            "localhost.evil.example",
            "[::2]:1",
            "",
        ] {
            assert!(!is_loopback_name(bad), "{bad}");
        }
    }

    #[test]
    fn demo_paths_are_outside_the_protocol() {
        assert_eq!(
            DemoCall::parse(&Method::GET, "/demo", false),
            Some(DemoCall::Page)
        );
        assert_eq!(
            DemoCall::parse(&Method::POST, "/demo/token", false),
            Some(DemoCall::Token)
        );
        // A chunk upload to bucket "demo", object "token", is no demo call.
        assert_eq!(DemoCall::parse(&Method::POST, "/demo/token", true), None);
        assert_eq!(DemoCall::parse(&Method::GET, "/demo/token", false), None);
        assert_eq!(DemoCall::parse(&Method::GET, "/demo/x", false), None);
    }

    #[test]
    fn on_by_default_only_on_the_embedded_default_on_loopback() {
        let local = ServerConfig::default();
        assert!(enabled(&local), "127.0.0.1 + embedded + local disk");
        type Tweak = fn(&mut ServerConfig);
        let cases: [(&str, Tweak); 5] = [
            ("all interfaces", |c| c.listen = "0.0.0.0:8080".parse().unwrap()),
            ("a LAN address", |c| {
                c.listen = "192.168.1.5:8080".parse().unwrap()
            }),
            ("postgres", |c| c.state = Some("postgres://u@h/db".into())),
            ("s3", |c| {
                c.storage = Some("s3://b?endpoint=http://127.0.0.1:3900&region=r".into())
            }),
            ("an lbs", |c| c.role = Role::Lbs),
        ];
        for (what, tweak) in cases {
            let mut c = ServerConfig::default();
            tweak(&mut c);
            assert!(!enabled(&c), "{what}: off by default");
            c.demo = Some(true);
            assert_eq!(enabled(&c), c.role == Role::Node, "{what}: demo = true");
        }
        let explicit_off = ServerConfig {
            demo: Some(false),
            ..ServerConfig::default()
        };
        assert!(!enabled(&explicit_off));
        let ipv6 = ServerConfig {
            listen: "[::1]:8080".parse().unwrap(),
            ..ServerConfig::default()
        };
        assert!(enabled(&ipv6));
    }
}
