//! Hostile clients on raw TCP: slow heads, silent and slow bodies, too many
//! connections, oversized heads and request lines, bad bytes and escapes,
//! `Transfer-Encoding` tricks, `Expect: 100-continue`, smuggling attempts,
//! query floods. Each must get a clean answer (or a closed connection) and
//! leave the node's state exactly as it was: no session, no stored chunk,
//! no file, no object.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The node's state as a client could change it.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    sessions_open: u64,
    chunks_stored: u64,
    /// Every file under the data directory's blobs, with its size.
    files: Vec<(String, u64)>,
}

async fn snapshot(n: &TestNode) -> Snapshot {
    let mut files = Vec::new();
    list(&n.path.join("blobs"), &mut files);
    files.sort();
    Snapshot {
        sessions_open: n.node.sessions_open().await.unwrap(),
        chunks_stored: n.node.chunks_stored(),
        files,
    }
}

fn list(dir: &Path, out: &mut Vec<(String, u64)>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            list(&p, out);
        } else {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((p.display().to_string(), len));
        }
    }
}

/// A node with short limits, so the tests take seconds.
async fn node() -> TestNode {
    start_with(|c| {
        c.header_timeout_secs = 1;
        c.body_idle_timeout_secs = 1;
    })
    .await
}

fn post(path: &str, token: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nx-nos-token: {token}\r\n{extra}\r\n")
}

const FIRST: &str = "/doc/a?offset=0&complete=false&version=1.0";

/// Reads until the server closes the connection (`true`) or `wait` passes.
async fn read_to_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Sends raw bytes, then reads the answer until the server closes.
async fn exchange(n: &TestNode, req: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    let _ = s.write_all(req).await;
    read_to_close(&mut s, Duration::from_secs(5)).await
}

fn statuses(resp: &str) -> Vec<&str> {
    resp.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i + 9..(i + 12).min(resp.len())])
        .collect()
}

/// The JSON body of a one-response answer.
fn json(resp: &str) -> serde_json::Value {
    let body = &resp[resp.find("\r\n\r\n").expect("a head") + 4..];
    serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON body: {resp}"))
}

/// Uploads a first chunk; its context.
async fn first_chunk(n: &TestNode, t: &str, body: &[u8]) -> String {
    let (s, v) = n
        .send(Chunk::new("/doc/a", t, 0, false, None, body.to_vec()))
        .await;
    assert_eq!(s, 200, "{v}");
    v["context"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn slow_heads_are_cut_off_at_the_header_timeout() {
    let n = node().await;
    let before = snapshot(&n).await;
    let t = token("doc", "a");
    // A head that trickles in, one byte every 100 ms, never finishing in time.
    let started = Instant::now();
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    let head = post(FIRST, &t, "Content-Length: 5\r\n");
    let mut cut = false;
    for b in head.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let (resp, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(cut || closed, "the connection of a slow head is closed");
    assert!(!resp.contains("200 OK"), "{resp}");
    assert!(started.elapsed() < Duration::from_secs(6));
    // A connection that never says anything, and one idle after an answer.
    let mut quiet = TcpStream::connect(n.addr).await.unwrap();
    let (_, closed) = read_to_close(&mut quiet, Duration::from_secs(3)).await;
    assert!(closed, "a silent connection is closed");
    let mut kept = TcpStream::connect(n.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (resp, closed) = read_to_close(&mut kept, Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 200") && closed, "{resp}");
    assert_eq!(snapshot(&n).await, before);
    n.stop().await;
}

#[tokio::test]
async fn a_silent_body_fails_its_chunk_and_frees_the_connection() {
    let n = node().await;
    let t = token("doc", "a");
    let before = snapshot(&n).await;
    // A first chunk that stops halfway: no session, no bytes, a 400.
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    s.write_all(post(FIRST, &t, "Content-Length: 1000\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(&data(500, 1)).await.unwrap();
    let started = Instant::now();
    let (resp, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(
        json(&resp)["errMsg"]
            .as_str()
            .unwrap()
            .contains("no request body bytes"),
        "{resp}"
    );
    assert!(closed, "the connection is freed");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(snapshot(&n).await, before);

    // A later chunk that stops: the offset stays, the retry is accepted.
    let ctx = first_chunk(&n, &t, &data(100, 2)).await;
    let mid = snapshot(&n).await;
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    let path = format!("/doc/a?offset=100&complete=true&version=1.0&context={ctx}");
    s.write_all(post(&path, &t, "Content-Length: 100\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(&data(10, 3)).await.unwrap();
    let (resp, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 400") && closed, "{resp}");
    assert_eq!(n.query("/doc/a", &t, &ctx).await.1["offset"], 100);
    assert_eq!(snapshot(&n).await, mid);
    let (st, _) = n
        .send(Chunk::new("/doc/a", &t, 100, true, Some(&ctx), data(100, 3)))
        .await;
    assert_eq!(st, 200);
    let mut want = data(100, 2);
    want.extend(data(100, 3));
    assert_eq!(n.object_bytes("doc", "a").await.unwrap(), want);
    n.stop().await;
}

#[tokio::test]
async fn a_slow_but_live_upload_is_not_cut_off() {
    let n = node().await;
    let t = token("doc", "a");
    let body = data(2000, 4);
    // 20 pieces 300 ms apart: 6 s in all, far past the 1 s idle timeout
    // and the 1 s header timeout, but never silent for 1 s.
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    let path = "/doc/a?offset=0&complete=true&version=1.0";
    s.write_all(post(path, &t, "Content-Length: 2000\r\n").as_bytes())
        .await
        .unwrap();
    for piece in body.chunks(100) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(piece).await.unwrap();
    }
    let resp = read_for(&mut s, Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(json(&resp)["offset"], 2000);
    assert_eq!(n.object_bytes("doc", "a").await.unwrap(), body);
    n.stop().await;
}

#[tokio::test]
async fn a_refused_body_still_gets_its_answer() {
    // A client that sends a 4 MiB chunk without Expect: 100-continue and
    // an expired token must read the 403 (and stop), not a reset: the node
    // answers before the body, and must not close with it unread.
    let n = node().await;
    let mut p = policy("doc", "a");
    p.expires = Some(upline_server::unix_now() - 10);
    let expired = sign(&p);
    for _ in 0..3 {
        let s = TcpStream::connect(n.addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let head = post(FIRST, &expired, "Content-Length: 4194304\r\n");
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(&data(4 << 20, 7)).await;
            wr
        });
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(k) => out.extend_from_slice(&buf[..k]),
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .expect("answered within 5 s");
        let resp = String::from_utf8_lossy(&out);
        assert!(resp.starts_with("HTTP/1.1 403"), "{read:?}: {resp}");
        assert!(
            json(&resp)["errMsg"].as_str().unwrap().contains("expired"),
            "{resp}"
        );
        let _ = writer.await;
    }
    n.stop().await;
}

#[tokio::test]
async fn connections_past_the_limit_get_503_then_are_closed_at_accept() {
    let n = start_with(|c| c.max_connections = 2).await;
    let t = token("doc", "a");
    let before = snapshot(&n).await;
    // Two connections hold the two places (one mid-request, one idle).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(n.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let resp = read_for(&mut s, Duration::from_millis(300)).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        held.push(s);
    }
    // The third gets the protocol's JSON error, Retry-After, and a close,
    // and its chunk is not stored.
    let mut req = post(FIRST, &t, "Content-Length: 5\r\n").into_bytes();
    req.extend(b"hello");
    let (resp, closed) = exchange(&n, &req).await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(
        lower.contains("retry-after: 1") && lower.contains("connection: close"),
        "{resp}"
    );
    let v = json(&resp);
    assert!(v["errMsg"].as_str().unwrap().contains("too many connections"));
    assert_eq!(v["requestId"], v["requestID"]);
    assert!(closed);
    assert_eq!(snapshot(&n).await, before);

    // Past the overflow answers too, a connection is closed at once.
    let mut overflow = Vec::new();
    for _ in 0..upline_server::limits::OVERFLOW {
        overflow.push(TcpStream::connect(n.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut late = TcpStream::connect(n.addr).await.unwrap();
    let _ = late.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (resp, closed) = read_to_close(&mut late, Duration::from_secs(1)).await;
    assert!(resp.is_empty() && closed, "{resp}");
    // Overflow connections are answered too, and closed.
    let s = &mut overflow[0];
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (resp, closed) = read_to_close(s, Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 503") && closed, "{resp}");
    drop(overflow);

    // A place freed is a place taken again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (resp, _) = exchange(&n, &req).await;
        if resp.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed places are never reused: {resp}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n.stop().await;
}

#[tokio::test]
async fn oversized_heads_and_request_lines_are_refused_cleanly() {
    let n = node().await;
    let t = token("doc", "a");
    let before = snapshot(&n).await;
    // One header of 70 KiB, then 150 small headers: 431 from hyper.
    let big = post(
        FIRST,
        &t,
        &format!("x-big: {}\r\nContent-Length: 0\r\n", "a".repeat(70 << 10)),
    );
    let (resp, closed) = exchange(&n, big.as_bytes()).await;
    assert_eq!(statuses(&resp), ["431"], "{resp}");
    assert!(closed);
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let (resp, closed) = exchange(
        &n,
        post(FIRST, &t, &format!("{many}Content-Length: 0\r\n")).as_bytes(),
    )
    .await;
    assert_eq!(statuses(&resp), ["431"], "{resp}");
    assert!(closed);
    // A request line over 8 KiB: the protocol's 414 with its JSON.
    let path = format!("/doc/{}?offset=0&complete=true&version=1.0", "a".repeat(9000));
    let (resp, _) = exchange(
        &n,
        post(&path, &t, "Content-Length: 0\r\nConnection: close\r\n").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&resp), ["414"], "{resp}");
    assert!(json(&resp)["errMsg"].as_str().unwrap().contains("8192"));
    // One too long for the read buffer is hyper's 431 or 414.
    let path = format!("/doc/{}?offset=0&complete=true&version=1.0", "a".repeat(70 << 10));
    let (resp, closed) = exchange(&n, post(&path, &t, "Content-Length: 0\r\n").as_bytes()).await;
    assert!(["431", "414"].contains(&statuses(&resp)[0]), "{resp}");
    assert!(closed);
    assert_eq!(snapshot(&n).await, before);
    // The node still serves.
    assert_eq!(
        n.send(Chunk::new("/doc/a", &t, 0, true, None, b"ok".to_vec()))
            .await
            .0,
        200
    );
    n.stop().await;
}

#[tokio::test]
async fn bad_bytes_and_escapes_are_refused_with_no_state_change() {
    let n = node().await;
    let t = token("doc", "a");
    let before = snapshot(&n).await;
    let with = |path: &str, extra: &str| {
        let mut r = post(
            path,
            &t,
            &format!("Content-Length: 5\r\nConnection: close\r\n{extra}"),
        )
        .into_bytes();
        r.extend(b"hello");
        r
    };
    // Escapes that decode to no text, or are no escapes, in the object
    // and the bucket; a context that is no text.
    for path in [
        "/doc/a%ff?offset=0&complete=true&version=1.0",
        "/doc/a%zz?offset=0&complete=true&version=1.0",
        "/doc/a%?offset=0&complete=true&version=1.0",
        "/doc/a%c3%28?offset=0&complete=true&version=1.0",
        "/d%ffc/a?offset=0&complete=true&version=1.0",
        "/doc/a?offset=0&complete=true&version=1.0&context=%ff%fe",
        "/doc/a?offset=%zz&complete=true&version=1.0",
    ] {
        let (resp, _) = exchange(&n, &with(path, "")).await;
        let st = statuses(&resp);
        assert!(st == ["400"] || st == ["404"], "{path}: {resp}");
        assert!(json(&resp)["errMsg"].is_string(), "{path}: {resp}");
    }
    // Raw bytes that are not text: in the request line (hyper's 400), in
    // the token and the content type (the protocol's 400).
    let mut raw_path = b"POST /doc/a\xff?offset=0&complete=true&version=1.0 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    let (resp, closed) = exchange(&n, &raw_path).await;
    assert_eq!(statuses(&resp), ["400"], "{resp}");
    assert!(closed);
    raw_path.clear();
    let mut bad_token = b"POST /doc/a?offset=0&complete=true&version=1.0 HTTP/1.1\r\nHost: x\r\nx-nos-token: UPLOAD \xff\xfe\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec();
    let (resp, _) = exchange(&n, &bad_token).await;
    assert_eq!(statuses(&resp), ["400"], "{resp}");
    assert!(json(&resp)["errMsg"].as_str().unwrap().contains("x-nos-token"));
    bad_token.clear();
    let mut ct = with("/doc/a?offset=0&complete=true&version=1.0", "");
    let at = ct.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    ct.splice(at..at, b"\r\nContent-Type: video/\xffmp4".iter().copied());
    let (resp, _) = exchange(&n, &ct).await;
    assert_eq!(statuses(&resp), ["400"], "{resp}");
    assert_eq!(snapshot(&n).await, before);
    assert!(n.object_bytes("doc", "a").await.is_none());
    n.stop().await;
}

#[tokio::test]
async fn transfer_encoding_tricks_get_a_clean_error_and_store_nothing() {
    let n = node().await;
    let t = token("doc", "a");
    let before = snapshot(&n).await;
    // After each refused request, a pipelined one that would store a chunk:
    // it must never run.
    let smuggled = {
        let mut r = post(
            "/doc/s?offset=0&complete=true&version=1.0",
            &token("doc", "s"),
            "Content-Length: 3\r\n",
        )
        .into_bytes();
        r.extend(b"bad");
        r
    };
    let cases: [(&str, &[u8], &[&str]); 9] = [
        // Not chunked as the last coding: hyper's 400.
        ("Transfer-Encoding: gzip\r\n", b"hello", &["400"]),
        (
            "Transfer-Encoding: chunked, gzip\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            &["400"],
        ),
        // A chunk size past u64, and framing that is no chunk size.
        (
            "Transfer-Encoding: chunked\r\n",
            b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "Transfer-Encoding: chunked\r\n",
            b"zz\r\nhello\r\n0\r\n\r\n",
            &["400"],
        ),
        // A chunk that says 5 and carries 7.
        (
            "Transfer-Encoding: chunked\r\n",
            b"5\r\nhello!!\r\n0\r\n\r\n",
            &["400"],
        ),
        // Two lengths, a signed one, a list.
        ("Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!", &["400"]),
        ("Content-Length: +5\r\n", b"hello", &["400"]),
        ("Content-Length: 5, 6\r\n", b"hello!", &["400"]),
        // A space before the colon (a classic desync between proxies).
        (
            "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
            b"hello",
            &["400"],
        ),
    ];
    for (headers, body, want) in cases {
        let mut req = post(FIRST, &t, headers).into_bytes();
        req.extend(body);
        req.extend(&smuggled);
        let (resp, closed) = exchange(&n, &req).await;
        assert_eq!(statuses(&resp), want, "{headers:?}: {resp}");
        assert!(closed, "{headers:?}: the connection is closed");
        assert_eq!(snapshot(&n).await, before, "{headers:?}");
    }
    // HTTP/1.0 with a Transfer-Encoding: refused.
    let mut req =
        format!("POST {FIRST} HTTP/1.0\r\nHost: x\r\nx-nos-token: {t}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    req.extend(b"5\r\nhello\r\n0\r\n\r\n");
    let (resp, closed) = exchange(&n, &req).await;
    assert!(resp.starts_with("HTTP/1.1 400") && closed, "{resp}");
    assert_eq!(snapshot(&n).await, before);
    assert!(n.object_bytes("doc", "s").await.is_none());
    n.stop().await;
}

#[tokio::test]
async fn chunked_with_a_content_length_is_read_as_chunked_and_the_connection_closed() {
    // RFC 9112 §6.1: Transfer-Encoding overrides Content-Length, and the
    // connection must be closed after the answer. The bytes a
    // Content-Length reader would take for the next request never run.
    let n = node().await;
    let t = token("doc", "a");
    let ts = token("doc", "s");
    let inner = format!(
        "POST /doc/s?offset=0&complete=true&version=1.0 HTTP/1.1\r\nHost: x\r\nx-nos-token: {ts}\r\nContent-Length: 3\r\n\r\nbad"
    );
    let chunked = format!("5\r\nhello\r\n0\r\n\r\n{inner}");
    let req = format!(
        "{}{chunked}",
        post(
            "/doc/a?offset=0&complete=true&version=1.0",
            &t,
            &format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                chunked.len()
            )
        )
    );
    let (resp, closed) = exchange(&n, req.as_bytes()).await;
    assert_eq!(statuses(&resp), ["200"], "{resp}");
    assert!(closed, "the connection is closed after the answer");
    assert_eq!(n.object_bytes("doc", "a").await.unwrap(), b"hello");
    assert!(n.object_bytes("doc", "s").await.is_none());
    // The other order of the two headers: the same.
    let req = format!(
        "{}{chunked}",
        post(
            "/doc/s2?offset=0&complete=true&version=1.0",
            &token("doc", "s2"),
            &format!(
                "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
                chunked.len()
            )
        )
    );
    let (resp, closed) = exchange(&n, req.as_bytes()).await;
    assert_eq!(statuses(&resp), ["200"], "{resp}");
    assert!(closed);
    assert_eq!(n.object_bytes("doc", "s2").await.unwrap(), b"hello");
    assert!(n.object_bytes("doc", "s").await.is_none());
    // A body on a GET is its body (Content-Length framing), never a request.
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let (resp, _) = exchange(&n, req.as_bytes()).await;
    assert_eq!(statuses(&resp), ["200"], "{resp}");
    assert!(n.object_bytes("doc", "s").await.is_none());
    n.stop().await;
}

#[tokio::test]
async fn expect_continue_is_sent_only_for_bodies_that_will_be_read() {
    let n = node().await;
    let t = token("doc", "a");
    let ctx = first_chunk(&n, &t, &data(100, 5)).await;
    let before = snapshot(&n).await;
    let refused = [
        (
            format!(
                "/doc/a?offset=0&complete=false&version=1.0&context={}",
                "Z".repeat(32)
            ),
            "404",
        ),
        (
            format!("/doc/a?offset=50&complete=false&version=1.0&context={ctx}"),
            "400",
        ),
        (
            format!("/doc/a?offset=100&complete=false&version=2.0&context={ctx}"),
            "400",
        ),
        (
            format!("/doc/b?offset=100&complete=false&version=1.0&context={ctx}"),
            "403",
        ),
    ];
    for (path, want) in &refused {
        let mut s = TcpStream::connect(n.addr).await.unwrap();
        let req = post(path, &t, "Content-Length: 100\r\nExpect: 100-continue\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (resp, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
        assert_eq!(statuses(&resp), [*want], "{path}: {resp}");
        assert!(!resp.contains("100 Continue") && closed, "{path}: {resp}");
    }
    assert_eq!(snapshot(&n).await, before);
    // The right offset: 100 Continue, then the answer.
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    let path = format!("/doc/a?offset=100&complete=true&version=1.0&context={ctx}");
    s.write_all(post(&path, &t, "Content-Length: 100\r\nExpect: 100-continue\r\n").as_bytes())
        .await
        .unwrap();
    let interim = read_for(&mut s, Duration::from_millis(500)).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    s.write_all(&data(100, 6)).await.unwrap();
    let resp = read_for(&mut s, Duration::from_millis(500)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(n.object_bytes("doc", "a").await.unwrap().len(), 200);
    n.stop().await;
}

#[tokio::test]
async fn pipelined_requests_after_a_framing_error_never_run() {
    let n = node().await;
    let t = token("doc", "a");
    let before = snapshot(&n).await;
    // A valid refused request (bad token), a framing error, then a valid
    // chunk: the first is answered, the connection closes at the second.
    let mut req = post(FIRST, "UPLOAD x:y:z", "Content-Length: 5\r\n").into_bytes();
    req.extend(b"hello");
    req.extend(post(FIRST, &t, "Content-Length: 5\r\nContent-Length: 7\r\n").as_bytes());
    req.extend(b"hello!!");
    req.extend(post(FIRST, &t, "Content-Length: 5\r\n").as_bytes());
    req.extend(b"hello");
    let (resp, closed) = exchange(&n, &req).await;
    assert_eq!(statuses(&resp), ["403", "400"], "{resp}");
    assert!(closed);
    assert_eq!(snapshot(&n).await, before);
    n.stop().await;
}

/// `count` queries for made-up contexts, each with a token `tok(i)`; how
/// many were answered 200/404 and how many the most that may be (the burst
/// plus what refilled meanwhile).
async fn flood(n: &TestNode, count: usize, tok: impl Fn(usize) -> String, rate: u32) -> (u32, u32) {
    let started = Instant::now();
    let mut passed = 0;
    for i in 0..count {
        let (st, v) = n.query("/doc/a", &tok(i), &format!("guess{i:027}")).await;
        match st {
            404 => passed += 1,
            429 => assert!(v["errMsg"].as_str().unwrap().contains("retry in"), "{v}"),
            _ => panic!("{st} {v}"),
        }
    }
    let refilled = (started.elapsed().as_secs_f64() * rate as f64).ceil() as u32;
    (passed, rate + refilled)
}

#[tokio::test]
async fn resume_queries_are_rate_limited_per_ip_and_per_token() {
    let n = start_with(|c| {
        c.query_rate_per_ip = 5;
        c.query_rate_per_token = 2;
    })
    .await;
    let t1 = token("doc", "a");
    let ctx = first_chunk(&n, &t1, b"hello").await;
    let tokens: Vec<String> = (0..40)
        .map(|i| {
            let mut p = policy("doc", "a");
            p.expires = Some(p.expires.unwrap() + i as i64);
            sign(&p)
        })
        .collect();
    // One token, many guesses: the token's limit holds them back.
    let (passed, most) = flood(&n, 12, |_| tokens[0].clone(), 2).await;
    assert!(passed >= 2 && passed <= most, "{passed} passed, at most {most}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A new token for every guess: the address's limit holds them back.
    let (passed, most) = flood(&n, 30, |i| tokens[1 + i % 39].clone(), 5).await;
    assert!(passed >= 5 && passed <= most, "{passed} passed, at most {most}");
    // The refusal: 429, Retry-After, the protocol's JSON error.
    let url = format!("{}/doc/a?uploadContext&context={ctx}&version=1.0", n.base);
    let mut refused = None;
    for _ in 0..20 {
        let resp = n.http.get(&url).header("x-nos-token", &t1).send().await.unwrap();
        if resp.status() == 429 {
            refused = Some(resp);
            break;
        }
    }
    let resp = refused.expect("a 429 within 20 queries");
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        v["errMsg"]
            .as_str()
            .unwrap()
            .contains("too many resume-point queries"),
        "{v}"
    );
    assert_eq!(v["requestId"], v["requestID"]);
    // Uploads are not limited, and the limits refill.
    assert_eq!(
        n.send(Chunk::new("/doc/a", &t1, 5, true, Some(&ctx), b" world".to_vec()))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, v) = n.query("/doc/a", &t1, &ctx).await;
    assert_eq!((st, &v["offset"]), (200, &serde_json::json!(11)), "{v}");
    n.stop().await;
}
