//! `GET`/`HEAD /{bucket}/{object}`: published objects, with byte ranges.
//! Private unless the bucket is public-read: a token for the object in
//! `x-nos-token`, or a signed URL (`upline url`), grants access.
//!
//! Damaged bytes are never served as an object: a whole-object download is
//! hashed as it streams, and bytes that do not hash to the recorded MD5
//! (or end short) make the response fail before its end — the client sees
//! a broken transfer, not a complete wrong one — and are quarantined; from
//! then on, as for bytes quarantined at start, the answer is 410.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use upline_core::CoreError;
use upline_proto::{ObjectPath, TokenError};

use crate::app::{AppState, unix_now};
use crate::render::{self, RequestId};

/// A `Range` header resolved against an object's size.
#[derive(Debug, PartialEq, Eq)]
enum Span {
    Whole,
    Part { start: u64, end: u64 },
    Unsatisfiable,
}

/// One `bytes=` range; anything else (several ranges, bad syntax) is
/// ignored and the whole object sent, as RFC 9110 allows.
fn span(range: Option<&str>, size: u64) -> Span {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Span::Whole;
    };
    if spec.contains(',') {
        return Span::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Span::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (false, true) => match num(a) {
            Some(s) => (s, size.saturating_sub(1)),
            None => return Span::Whole,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => (s, e.min(size.saturating_sub(1))),
            _ => return Span::Whole,
        },
        (true, false) => match num(b) {
            Some(0) => return Span::Unsatisfiable,
            Some(n) => (size.saturating_sub(n), size.saturating_sub(1)),
            None => return Span::Whole,
        },
        (true, true) => return Span::Whole,
    };
    if size == 0 || start >= size {
        Span::Unsatisfiable
    } else {
        Span::Part { start, end }
    }
}

fn authorize(app: &AppState, path: &ObjectPath, query: &str, headers: &HeaderMap) -> Result<(), CoreError> {
    if app.cfg.public_buckets.iter().any(|b| b == path.bucket.as_str()) {
        return Ok(());
    }
    let now = unix_now();
    if upline_proto::signed_url::is_signed(query) {
        let keys = app.node.keys();
        return Ok(upline_proto::signed_url::verify(
            query,
            path.bucket.as_str(),
            path.object.as_str(),
            |ak| keys.secret(ak),
            now,
        )?);
    }
    let token = headers
        .get(upline_proto::TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    if token.is_none() {
        return Err(TokenError::Missing.into());
    }
    app.node.authorize(token, path, now).map(|_| ())
}

pub async fn handle(
    app: &AppState,
    rid: &RequestId,
    path: ObjectPath,
    head: bool,
    query: &str,
    headers: &HeaderMap,
) -> Response {
    if let Err(e) = authorize(app, &path, query, headers) {
        return render::core_error(rid, &e);
    }
    let record = match app.node.object(path.bucket.as_str(), path.object.as_str()).await {
        Ok(Some(r)) => r,
        Ok(None) => return render::core_error(rid, &CoreError::NoSuchObject),
        Err(e) => return render::core_error(rid, &e),
    };
    let md5 = match app.node.object_md5_of(&record).await {
        Ok(m) => m,
        Err(e) => return render::core_error(rid, &unavailable(app, &record, e).await),
    };
    let size = record.size;
    let span = span(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), size);
    // An answer that reads no bytes would not notice quarantined ones
    // (a read does): HEAD answered 200 for an object GET answered 410
    // (found in review).
    let reads_nothing = head || size == 0 || matches!(span, Span::Unsatisfiable);
    if reads_nothing && let Some(e) = quarantined(app, &record).await {
        return render::core_error(rid, &e);
    }
    let (status, start, len) = match span {
        Span::Whole => (StatusCode::OK, 0, size),
        Span::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Span::Unsatisfiable => {
            // With the protocol's JSON error body, as every refusal.
            let mut resp = render::core_error(rid, &CoreError::RangeNotSatisfiable { size });
            resp.headers_mut()
                .insert(header::CONTENT_RANGE, value(&format!("bytes */{size}")));
            return resp;
        }
    };
    let body = if head || len == 0 {
        Body::empty()
    } else {
        match app.node.read_object(&record, start, len).await {
            // The whole object, asked for as a range too (`bytes=0-`, as
            // media elements and resuming downloaders ask): checked like a
            // 200 (found in review). A part of it cannot be checked.
            Ok(stream) if start == 0 && len == size => {
                Body::from_stream(verified(app, record.clone(), &md5, stream))
            }
            Ok(stream) => Body::from_stream(stream),
            Err(e) => return render::core_error(rid, &unavailable(app, &record, e).await),
        }
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, value(&record.content_type));
    h.insert(header::CONTENT_LENGTH, value(&len.to_string()));
    h.insert(header::ETAG, value(&format!("\"{md5}\"")));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let modified = std::time::UNIX_EPOCH + std::time::Duration::from_secs(record.created_at.max(0) as u64);
    h.insert(header::LAST_MODIFIED, value(&httpdate::fmt_http_date(modified)));
    // The uploader chose the Content-Type, and objects share the node's
    // origin (and the demo's token endpoint): an uploaded HTML page must
    // not run as the node's script, nor a type be sniffed into one (found
    // in review).
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            value(&format!("bytes {start}-{}/{size}", start + len - 1)),
        );
    }
    resp
}

/// A read of an object's bytes failed: quarantined bytes say so (410),
/// anything else is the error it was.
async fn unavailable(app: &AppState, record: &upline_core::ObjectRecord, e: CoreError) -> CoreError {
    quarantined(app, record).await.unwrap_or(e)
}

/// The 410 of an object whose bytes are in quarantine, if they are.
async fn quarantined(app: &AppState, record: &upline_core::ObjectRecord) -> Option<CoreError> {
    match app.node.is_quarantined(record).await {
        Ok(true) => Some(CoreError::Quarantined(
            "its stored bytes were found damaged".into(),
        )),
        _ => None,
    }
}

/// The object's bytes, hashed on their way out. The last frame is held
/// back until all of them hashed to the record's MD5 and length: a
/// response whose `Content-Length` was already met would read as complete
/// however it ended. Damaged bytes end the stream with an error instead
/// (the connection is cut, the client sees a short body) and are
/// quarantined.
fn verified(
    app: &AppState,
    record: upline_core::ObjectRecord,
    md5: &str,
    stream: upline_storage::ByteStream,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use futures_util::StreamExt;
    let node = app.node.clone();
    let want = md5.to_owned();
    let state = Some((stream, fast_md5::Md5::new(), 0u64, None::<bytes::Bytes>));
    futures_util::stream::unfold(state, move |state| {
        let (node, record, want) = (node.clone(), record.clone(), want.clone());
        async move {
            let (mut stream, mut hasher, mut seen, mut held) = state?;
            loop {
                match stream.next().await {
                    Some(Ok(b)) if b.is_empty() => continue,
                    Some(Ok(b)) => {
                        hasher.update(&b);
                        seen += b.len() as u64;
                        match held.replace(b) {
                            Some(out) => return Some((Ok(out), Some((stream, hasher, seen, held)))),
                            None => continue,
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), None)),
                    None => break,
                }
            }
            let got = hex::encode(hasher.finalize());
            if got == want && seen == record.size {
                return held.map(|last| (Ok(last), None));
            }
            let why = format!("a download read {seen} bytes hashing to MD5 {got}");
            if let Err(e) = node.quarantine_object(&record, &why).await {
                tracing::error!(error = %e, "could not quarantine damaged bytes");
            }
            Some((
                Err(std::io::Error::other("object bytes damaged: transfer cut off")),
                None,
            ))
        }
    })
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(span(None, 10), Span::Whole);
        assert_eq!(span(Some("bytes=0-4"), 10), Span::Part { start: 0, end: 4 });
        assert_eq!(span(Some("bytes=5-"), 10), Span::Part { start: 5, end: 9 });
        assert_eq!(span(Some("bytes=-3"), 10), Span::Part { start: 7, end: 9 });
        assert_eq!(span(Some("bytes=-30"), 10), Span::Part { start: 0, end: 9 });
        assert_eq!(span(Some("bytes=8-100"), 10), Span::Part { start: 8, end: 9 });
        assert_eq!(span(Some("bytes=10-"), 10), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=-0"), 10), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=0-"), 0), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=0-1,3-4"), 10), Span::Whole);
        assert_eq!(span(Some("bytes=5-2"), 10), Span::Whole);
        assert_eq!(span(Some("items=0-1"), 10), Span::Whole);
    }
}
