//! One handler per endpoint: parse headers, call `core`, render.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use axum::Json;
use axum::body::{Body, BodyDataStream};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};
use upline_core::{ChunkRequest, CoreError};
use upline_proto::{ErrorBody, LbsOk, LbsParams, ObjectPath, QueryOk, ResumeParams, UploadOk, UploadParams};

use crate::app::AppState;
use crate::render::{self, RequestId};

/// The two ends of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// `POST /{bucket}/{object}`: one chunk.
pub async fn upload(
    app: &AppState,
    rid: &RequestId,
    path: ObjectPath,
    params: UploadParams,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    // Shared with the upload rules, so that what they leave unread of a
    // refused chunk can be drained below; `None` once it has ended.
    let body = Arc::new(Mutex::new(Some(body.into_data_stream())));
    let mut resp = match chunk_request(&parts.headers, path, params) {
        Err(e) => render::core_error(rid, &e),
        Ok(chunk) => {
            let source = body.clone();
            let stream = futures_util::stream::poll_fn(move |cx| {
                let mut slot = source.lock().expect("request body");
                let Some(b) = slot.as_mut() else {
                    return Poll::Ready(None);
                };
                let next = b.poll_next_unpin(cx);
                if let Poll::Ready(None) = next {
                    *slot = None;
                }
                next
            })
            .map_err(io::Error::other);
            // The length the core checks the body against, so a body cut
            // short is told from a whole one (a chunked body's end is not).
            let declared =
                chunk.content_length.is_some() && !parts.headers.contains_key(header::TRANSFER_ENCODING);
            let node = app.node.clone();
            let upload = async move { node.upload_chunk(chunk, Box::pin(stream)).await };
            let outcome = if declared {
                // hyper drops a request whose client leaves, and a client
                // on a dying connection often leaves right after its last
                // byte, before the 200. Run on its own, the chunk is
                // stored and committed all the same, and the resume query
                // spares the client sending it again. Only with a declared
                // length: a body cut short then fails its length check,
                // where a chunked one could seem to end cleanly.
                let task = tokio::spawn(tracing::Instrument::in_current_span(upload));
                task.await
                    .unwrap_or_else(|e| Err(CoreError::Internal(format!("chunk task failed: {e}").into())))
            } else {
                upload.await
            };
            match outcome {
                Ok(r) => {
                    tracing::info!(offset = r.offset, "chunk stored");
                    Json(UploadOk::new(&rid.0, r.offset, &r.context, r.callback_ret_msg)).into_response()
                }
                Err(e) => render::core_error(rid, &e),
            }
        }
    };
    if !drained(&parts.headers, &body).await {
        resp.headers_mut()
            .insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    resp
}

/// The most of a refused chunk's body read so that its connection stays
/// usable (hyper's read buffer; a longer rest closes the connection).
const DRAIN_MAX: u64 = 64 * 1024;

/// Whether the connection can take another request after this one: its
/// body was read to the end, or — a refusal sent before it was read — a
/// short rest was read now. Otherwise the answer must say `Connection:
/// close`: hyper closes such a connection anyway, and without the header
/// a client that pools connections sent its next request (typically the
/// resume query after a 400) on a dead one (found by the model test).
/// A request with `Expect: 100-continue` is never drained: reading would
/// ask the client for the body the refusal does not want.
async fn drained(h: &HeaderMap, body: &Mutex<Option<BodyDataStream>>) -> bool {
    let Some(mut rest) = body.lock().expect("request body").take() else {
        return true;
    };
    let short = !h.contains_key(header::TRANSFER_ENCODING)
        && h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_none_or(|n| n <= DRAIN_MAX);
    if h.contains_key(header::EXPECT) || !short {
        return false;
    }
    let drain = async {
        let mut seen = 0u64;
        while let Some(frame) = rest.next().await {
            match frame {
                Ok(b) if seen + (b.len() as u64) <= DRAIN_MAX => seen += b.len() as u64,
                _ => return false,
            }
        }
        true
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), drain)
        .await
        .unwrap_or(false)
}

fn chunk_request(h: &HeaderMap, path: ObjectPath, params: UploadParams) -> Result<ChunkRequest, CoreError> {
    let content_length = match text(h, header::CONTENT_LENGTH.as_str())? {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| CoreError::BadParam("invalid Content-Length".into()))?,
        ),
    };
    Ok(ChunkRequest {
        path,
        params,
        token: text(h, upline_proto::TOKEN_HEADER)?,
        content_length,
        content_type: text(h, header::CONTENT_TYPE.as_str())?,
        content_md5: text(h, "content-md5")?,
        now: crate::app::unix_now(),
    })
}

/// A header as text; a non-UTF-8 value is a bad request.
fn text(h: &HeaderMap, name: &str) -> Result<Option<String>, CoreError> {
    h.get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| CoreError::BadParam(format!("header {name} is not valid text")))
        })
        .transpose()
}

/// `GET /{bucket}/{object}?uploadContext`: the resume point.
pub async fn resume(
    app: &AppState,
    rid: &RequestId,
    path: ObjectPath,
    params: ResumeParams,
    h: &HeaderMap,
) -> Response {
    let result = async {
        let token = text(h, upline_proto::TOKEN_HEADER)?;
        app.node
            .resume_point(&path, &params, token.as_deref(), crate::app::unix_now())
            .await
    }
    .await;
    match result {
        Ok(offset) => Json(QueryOk::new(&rid.0, offset)).into_response(),
        Err(e) => render::core_error(rid, &e),
    }
}

/// `GET /lbs`: the live upload nodes of the registry, best first (by
/// priority, then load); at least two entries — one widely used client
/// reads `upload[1]` — so a single node is listed twice. `lbs` is this
/// endpoint's own address by IP (or the public URL when one is set).
pub async fn lbs(
    app: &AppState,
    params: Result<LbsParams, upline_proto::QueryError>,
    conn: Option<ConnInfo>,
) -> Response {
    if let Err(e) = params {
        return render::lbs_error(&e);
    }
    let mut upload = app.live_nodes.get(|| live_node_urls(app)).await;
    if upload.is_empty() && app.cfg.role == crate::config::Role::Node {
        upload.push(app.base_url.clone());
    }
    if upload.is_empty() {
        let body = upline_proto::LbsError {
            code: "NoUploadNode".into(),
            message: "no upload node is alive".into(),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if upload.len() == 1 {
        upload.push(upload[0].clone());
    }
    let lbs = match conn {
        Some(c) if app.cfg.public_url.is_none() => {
            let scheme = if app.cfg.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}/lbs", c.local)
        }
        _ => format!("{}/lbs", app.base_url),
    };
    Json(LbsOk { lbs, upload }).into_response()
}

/// The registry's live nodes, best first (read through [`NodeCache`]).
async fn live_node_urls(app: &AppState) -> Vec<String> {
    let since = crate::app::unix_now_ms() - app.cfg.node_ttl_ms as i64;
    match app.nodes.live_nodes(since).await {
        Ok(nodes) => nodes.into_iter().map(|n| n.url).collect(),
        Err(e) => {
            tracing::error!(error = %render::chain(&e), "reading the node registry failed");
            Vec::new()
        }
    }
}

/// The LBS answer's node list, read from the registry at most every
/// `ttl`: a busy LBS must not put a database query behind every request
/// (measured: 1.2k req/s at p50 50 ms with one query each). A stale entry
/// lives at most `ttl` longer than `node_ttl_ms`.
pub struct NodeCache {
    ttl: std::time::Duration,
    cached: tokio::sync::Mutex<Option<(std::time::Instant, Vec<String>)>>,
}

impl NodeCache {
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    async fn get<F: std::future::Future<Output = Vec<String>>>(
        &self,
        load: impl FnOnce() -> F,
    ) -> Vec<String> {
        let mut cached = self.cached.lock().await;
        match &*cached {
            Some((at, nodes)) if at.elapsed() < self.ttl => nodes.clone(),
            _ => {
                let nodes = load().await;
                *cached = Some((std::time::Instant::now(), nodes.clone()));
                nodes
            }
        }
    }
}

/// `POST /stat/sdk`: read (bounded) and ignore the mobile SDK statistics,
/// so the keep-alive connection stays usable.
pub async fn stat(body: Body) -> Response {
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(Ok(frame)) = stream.next().await {
        seen += frame.len();
        if seen > 1024 * 1024 {
            break;
        }
    }
    StatusCode::OK.into_response()
}

/// `GET /metrics`.
pub async fn metrics(app: &AppState) -> Response {
    let text = app.metrics.render(&app.node).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

pub fn refused(rid: &RequestId, status: StatusCode, msg: String) -> Response {
    tracing::info!(status = status.as_u16(), reason = %msg, "request refused");
    (status, Json(ErrorBody::new(&rid.0, msg))).into_response()
}
