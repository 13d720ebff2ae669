//! What only raw HTTP/1.1 shows: refusals before the body, `Expect:
//! 100-continue`, chunked bodies over the limit, pipelining, literal `..`.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

fn head(path: &str, token: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nx-nos-token: {token}\r\n{extra}\r\n")
}

#[tokio::test]
async fn oversized_content_length_is_refused_before_the_body() {
    let n = start().await;
    let t = token("doc", "big");
    // No body is ever sent: the answer must come anyway.
    let req = head(
        "/doc/big?offset=0&complete=false&version=1.0",
        &t,
        "Content-Length: 4194305\r\n",
    );
    let resp = raw(n.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("errMsg"));
    // With Expect: 100-continue, no 100 is sent for a refused body.
    let req = head(
        "/doc/big?offset=0&complete=false&version=1.0",
        &t,
        "Content-Length: 4194305\r\nExpect: 100-continue\r\n",
    );
    let resp = raw(n.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert!(
        resp.starts_with("HTTP/1.1 400") && !resp.contains("100 Continue"),
        "{resp}"
    );
    // A bad token is refused before the body too.
    let req = head(
        "/doc/big?offset=0&complete=false&version=1.0",
        "UPLOAD x:y:z",
        "Content-Length: 100\r\nExpect: 100-continue\r\n",
    );
    let resp = raw(n.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert!(
        resp.starts_with("HTTP/1.1 403") && !resp.contains("100 Continue"),
        "{resp}"
    );
    // Exactly 4 MiB is fine, and an accepted body gets its 100 Continue.
    let mut s = tokio::net::TcpStream::connect(n.addr).await.unwrap();
    let req = head(
        "/doc/big?offset=0&complete=true&version=1.0",
        &t,
        "Content-Length: 4194304\r\nExpect: 100-continue\r\n",
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let interim = read_for(&mut s, Duration::from_secs(2)).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    s.write_all(&data(4 << 20, 1)).await.unwrap();
    let resp = read_for(&mut s, Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(n.object_bytes("doc", "big").await.unwrap().len(), 4 << 20);
    n.stop().await;
}

#[tokio::test]
async fn the_chunk_limit_is_configurable() {
    let n = start_with(|c| c.max_chunk = 1000).await;
    let t = token("doc", "a");
    let (s, _) = n
        .send(Chunk::new("/doc/a", &t, 0, false, None, vec![0; 1001]))
        .await;
    assert_eq!(s, 400);
    let (s, _) = n
        .send(Chunk::new("/doc/a", &t, 0, false, None, vec![0; 1000]))
        .await;
    assert_eq!(s, 200);
    n.stop().await;
}

#[tokio::test]
async fn chunked_bodies_are_read_up_to_the_limit_then_refused() {
    let n = start().await;
    let t = token("doc", "chunked");
    let mut req = head(
        "/doc/chunked?offset=0&complete=true&version=1.0",
        &t,
        "Transfer-Encoding: chunked\r\n",
    )
    .into_bytes();
    let piece = data(1 << 20, 3);
    for _ in 0..5 {
        req.extend(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend(&piece);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    let mut s = tokio::net::TcpStream::connect(n.addr).await.unwrap();
    let writer = tokio::spawn(async move {
        let _ = s.write_all(&req).await;
        s
    });
    let mut s = writer.await.unwrap();
    let resp = read_for(&mut s, Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(n.object_bytes("doc", "chunked").await.is_none());

    // A small chunked body is fine.
    let mut req = head(
        "/doc/chunked?offset=0&complete=true&version=1.0",
        &t,
        "Transfer-Encoding: chunked\r\n",
    )
    .into_bytes();
    req.extend(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let resp = raw(n.addr, &req, Duration::from_secs(1)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(n.object_bytes("doc", "chunked").await.unwrap(), b"hello world");
    n.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let n = start().await;
    let t = token("doc", "p");
    let mut req = String::new();
    req.push_str("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    req.push_str("GET /lbs?version=1.0&bucketname=doc HTTP/1.1\r\nHost: x\r\n\r\n");
    req.push_str(&head(
        "/doc/p?offset=0&complete=true&version=1.0",
        &t,
        "Content-Length: 5\r\n",
    ));
    req.push_str("hello");
    req.push_str("POST /stat/sdk?version=1.0 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
    req.push_str("GET /lbs?version=2.0&bucketname=doc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let resp = raw(n.addr, req.as_bytes(), Duration::from_secs(2)).await;
    let statuses: Vec<&str> = resp
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "200", "200", "400"], "{resp}");
    let order =
        ["\"status\"", "\"upload\"", "\"offset\":5", "\"Code\""].map(|m| resp.find(m).unwrap_or(usize::MAX));
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "answers in request order: {resp}"
    );
    assert_eq!(n.object_bytes("doc", "p").await.unwrap(), b"hello");
    n.stop().await;
}

#[tokio::test]
async fn literal_dot_segments_are_just_a_name() {
    let n = start().await;
    let t = token("doc", "../../x");
    let req = format!(
        "{}hi",
        head(
            "/doc/../../x?offset=0&complete=true&version=1.0",
            &t,
            "Content-Length: 2\r\n"
        )
    );
    let resp = raw(n.addr, req.as_bytes(), Duration::from_secs(1)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(n.object_bytes("doc", "../../x").await.unwrap(), b"hi");
    n.stop().await;
}
