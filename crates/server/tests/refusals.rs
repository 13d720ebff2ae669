//! Regression (found by the model test in crates/torture): a chunk refused
//! before its body was read left hyper closing the connection without a
//! `Connection: close` whenever the rest of the body was not already in
//! its buffer, so a client that pools connections sent its next request —
//! typically the resume query after a 400 — on a dead one. Now a short
//! rest is read and the connection kept; a long one is announced closed.

mod common;

use common::*;

#[tokio::test]
async fn a_refusal_before_the_body_says_the_connection_closes() {
    let n = start_unthrottled().await;
    let t = token("doc", "big");
    let (s, b) = n
        .send(Chunk::new("/doc/big", &t, 0, false, None, data(1000, 1)))
        .await;
    assert_eq!(s, 200, "{b}");
    let ctx = b["context"].as_str().unwrap().to_owned();
    let wrong = format!("/doc/big?offset=5&complete=false&version=1.0&context={ctx}");
    let body = vec![7u8; 1 << 20];

    // On the wire: the refusal says the connection ends.
    let head = format!(
        "POST {wrong} HTTP/1.1\r\nHost: x\r\nx-nos-token: {t}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(&body[..4096]);
    let answer = raw(n.addr, &request, std::time::Duration::from_millis(500)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // A pooling client: every resume query after a refused 1 MiB chunk works.
    for _ in 0..20 {
        let r = n
            .http
            .post(format!("{}{wrong}", n.base))
            .header("x-nos-token", &t)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let (s, b) = n.query("/doc/big", &t, &ctx).await;
        assert_eq!((s, b["offset"].as_u64()), (200, Some(1000)), "{b}");
    }

    // A short refused body is read to its end: the connection stays.
    for _ in 0..20 {
        let r = n
            .http
            .post(format!("{}{wrong}", n.base))
            .header("x-nos-token", &t)
            .body(vec![7u8; 60_000])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.headers().get("connection").is_none());
        let (s, b) = n.query("/doc/big", &t, &ctx).await;
        assert_eq!((s, b["offset"].as_u64()), (200, Some(1000)), "{b}");
    }

    // A body read to its end keeps the connection.
    let r = n
        .http
        .post(format!(
            "{}/doc/big?offset=1000&complete=false&version=1.0&context={ctx}",
            n.base
        ))
        .header("x-nos-token", &t)
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("connection").is_none());
    n.stop().await;
}
