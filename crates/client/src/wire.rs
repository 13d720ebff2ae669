//! The three HTTP calls of the protocol, and how their answers are sorted
//! into what the uploader does next.

use std::time::Duration;

use bytes::Bytes;
use upline_proto::{Bucket, ErrorBody, LbsOk, ObjectKey, ObjectPath, QueryOk, UploadOk, UploadParams};

/// What a call came back with.
#[derive(Debug)]
pub(crate) enum Reply<T> {
    Ok(T),
    /// A non-200 answer with the server's message.
    Status {
        status: u16,
        message: String,
    },
    /// No answer: connection refused or reset, timeout, unreadable body.
    Network {
        timeout: bool,
        message: String,
    },
}

fn network<T>(e: reqwest::Error) -> Reply<T> {
    Reply::Network {
        timeout: e.is_timeout(),
        message: e.without_url().to_string(),
    }
}

async fn read<T: serde::de::DeserializeOwned>(resp: Result<reqwest::Response, reqwest::Error>) -> Reply<T> {
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return network(e),
    };
    let status = resp.status().as_u16();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return network(e),
    };
    if status == 200 {
        return match serde_json::from_slice(&body) {
            Ok(v) => Reply::Ok(v),
            // A 200 without the fields we need: the mobile clients retry too.
            Err(e) => Reply::Network {
                timeout: false,
                message: format!("unreadable 200 answer: {e}"),
            },
        };
    }
    let message = serde_json::from_slice::<ErrorBody>(&body)
        .map(|b| b.err_msg)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
    Reply::Status { status, message }
}

/// The URL of an object on a node.
pub(crate) fn object_url(node: &str, bucket: &str, object: &str) -> Result<String, String> {
    let path = ObjectPath {
        bucket: Bucket::parse(bucket).map_err(|e| e.to_string())?,
        object: ObjectKey::parse(object).map_err(|e| e.to_string())?,
    };
    Ok(format!("{}{}", node.trim_end_matches('/'), path.render()))
}

/// One chunk upload request.
pub(crate) struct ChunkCall<'a> {
    pub url: &'a str,
    pub token: &'a str,
    pub params: UploadParams,
    pub body: Bytes,
    pub content_md5: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub timeout: Duration,
}

pub(crate) async fn post_chunk(http: &reqwest::Client, c: ChunkCall<'_>) -> Reply<UploadOk> {
    let mut req = http
        .post(format!("{}?{}", c.url, c.params.render()))
        .header(upline_proto::TOKEN_HEADER, c.token)
        .timeout(c.timeout)
        .body(c.body);
    if let Some(md5) = c.content_md5 {
        req = req.header("content-md5", md5);
    }
    if let Some(ct) = c.content_type {
        req = req.header("content-type", ct);
    }
    read(req.send().await).await
}

pub(crate) async fn query(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    ctx: &str,
    timeout: Duration,
) -> Reply<QueryOk> {
    let ctx: String = form_escape(ctx);
    let req = http
        .get(format!("{url}?uploadContext&context={ctx}&version=1.0"))
        .header(upline_proto::TOKEN_HEADER, token)
        .timeout(timeout);
    read(req.send().await).await
}

pub(crate) async fn lbs(
    http: &reqwest::Client,
    lbs_url: &str,
    bucket: &str,
    timeout: Duration,
) -> Reply<LbsOk> {
    let req = http
        .get(format!(
            "{lbs_url}?version=1.0&bucketname={}",
            form_escape(bucket)
        ))
        .timeout(timeout);
    read(req.send().await).await
}

fn form_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
