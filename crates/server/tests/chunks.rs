//! Replays, MD5 claims, racing writers and broken bodies.

mod common;

use common::*;

async fn first(n: &TestNode, path: &str, t: &str, body: Vec<u8>) -> String {
    let (s, b) = n.send(Chunk::new(path, t, 0, false, None, body)).await;
    assert_eq!(s, 200, "{b}");
    b["context"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn exact_replay_is_answered_and_changes_nothing() {
    let n = start().await;
    let t = token("doc", "r");
    let ctx = first(&n, "/doc/r", &t, data(1000, 1)).await;
    let second = data(2000, 2);
    let (s, b) = n
        .send(Chunk::new("/doc/r", &t, 1000, false, Some(&ctx), second.clone()))
        .await;
    assert_eq!((s, &b["offset"]), (200, &serde_json::json!(3000)));
    // The response was "lost": the same request again.
    let (s, b) = n
        .send(Chunk::new("/doc/r", &t, 1000, false, Some(&ctx), second.clone()))
        .await;
    assert_eq!(
        (s, &b["offset"], b["context"].as_str()),
        (200, &serde_json::json!(3000), Some(ctx.as_str())),
        "{b}"
    );
    // Same offset and length, other bytes: not a replay.
    let (s, b) = n
        .send(Chunk::new("/doc/r", &t, 1000, false, Some(&ctx), data(2000, 3)))
        .await;
    assert_eq!(s, 400, "{b}");
    // Same offset, other length: not a replay.
    let (s, _) = n
        .send(Chunk::new(
            "/doc/r",
            &t,
            1000,
            false,
            Some(&ctx),
            second[..1999].to_vec(),
        ))
        .await;
    assert_eq!(s, 400);
    // An older chunk: not a replay.
    let (s, _) = n
        .send(Chunk::new("/doc/r", &t, 0, false, Some(&ctx), data(1000, 1)))
        .await;
    assert_eq!(s, 400);
    assert_eq!(n.query("/doc/r", &t, &ctx).await.1["offset"], 3000);
    // The final chunk replayed after completion.
    let last = data(10, 4);
    let (s, _) = n
        .send(Chunk::new("/doc/r", &t, 3000, true, Some(&ctx), last.clone()))
        .await;
    assert_eq!(s, 200);
    let (s, b) = n
        .send(Chunk::new("/doc/r", &t, 3000, true, Some(&ctx), last.clone()))
        .await;
    assert_eq!((s, &b["offset"]), (200, &serde_json::json!(3010)), "{b}");
    let (s, _) = n
        .send(Chunk::new("/doc/r", &t, 3000, false, Some(&ctx), last.clone()))
        .await;
    assert_eq!(s, 400, "a replay must carry the same complete flag");
    let mut want = data(1000, 1);
    want.extend(&second);
    want.extend(&last);
    assert_eq!(n.object_bytes("doc", "r").await.unwrap(), want);
    n.stop().await;
}

#[tokio::test]
async fn chunk_md5_in_hex_and_base64_verifies_the_chunk() {
    let n = start().await;
    let t = token("doc", "m");
    let (a, b) = (data(5000, 1), data(3000, 2));
    let (s, r) = n
        .send(Chunk::new("/doc/m", &t, 0, false, None, a.clone()).header("content-md5", md5_hex(&a)))
        .await;
    assert_eq!(s, 200, "{r}");
    let ctx = r["context"].as_str().unwrap().to_owned();
    let (s, r) = n
        .send(Chunk::new("/doc/m", &t, 5000, true, Some(&ctx), b.clone()).header("content-md5", md5_b64(&b)))
        .await;
    assert_eq!(s, 200, "{r}");
    let mut whole = a;
    whole.extend(b);
    assert_eq!(n.object_bytes("doc", "m").await.unwrap(), whole);
    n.stop().await;
}

#[tokio::test]
async fn whole_file_md5_on_every_chunk_like_the_mobile_client() {
    let n = start().await;
    let t = token("doc", "w");
    let whole = data(10_000, 7);
    let claim = md5_hex(&whole);
    let mut ctx: Option<String> = None;
    for (i, piece) in whole.chunks(3000).enumerate() {
        let complete = (i + 1) * 3000 >= whole.len();
        let c = Chunk::new(
            "/doc/w",
            &t,
            (i * 3000) as u64,
            complete,
            ctx.as_deref(),
            piece.to_vec(),
        )
        .header("content-md5", claim.clone());
        let (s, r) = n.send(c).await;
        assert_eq!(s, 200, "chunk {i}: {r}");
        ctx = Some(r["context"].as_str().unwrap().to_owned());
    }
    let rec = n.node.object("doc", "w").await.unwrap().unwrap();
    assert_eq!(
        rec.md5.as_deref(),
        Some(claim.as_str()),
        "the checked claim is the object's MD5"
    );
    n.stop().await;
}

#[tokio::test]
async fn a_false_whole_object_claim_publishes_nothing() {
    let n = start().await;
    let t = token("doc", "f");
    let whole = data(6000, 7);
    let wrong = md5_hex(b"something else");
    let (s, r) = n
        .send(
            Chunk::new("/doc/f", &t, 0, false, None, whole[..3000].to_vec())
                .header("content-md5", wrong.clone()),
        )
        .await;
    assert_eq!(s, 200, "a non-final chunk's claim cannot be checked yet: {r}");
    let ctx = r["context"].as_str().unwrap().to_owned();
    // The final chunk has no claim of its own; the stored one is checked.
    let (s, r) = n
        .send(Chunk::new(
            "/doc/f",
            &t,
            3000,
            true,
            Some(&ctx),
            whole[3000..].to_vec(),
        ))
        .await;
    assert_eq!(s, 400, "{r}");
    assert!(n.object_bytes("doc", "f").await.is_none(), "nothing published");
    assert_eq!(
        n.query("/doc/f", &t, &ctx).await.1["offset"],
        3000,
        "the final chunk was not committed"
    );

    // A final chunk whose MD5 matches neither the chunk nor the object.
    let t2 = token("doc", "g");
    let ctx = first(&n, "/doc/g", &t2, whole[..3000].to_vec()).await;
    let (s, _) = n
        .send(
            Chunk::new("/doc/g", &t2, 3000, true, Some(&ctx), whole[3000..].to_vec())
                .header("content-md5", wrong),
        )
        .await;
    assert_eq!(s, 400);
    assert!(n.object_bytes("doc", "g").await.is_none());
    // The right whole-object claim then completes it.
    let (s, r) = n
        .send(
            Chunk::new("/doc/g", &t2, 3000, true, Some(&ctx), whole[3000..].to_vec())
                .header("content-md5", md5_b64(&whole)),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(n.object_bytes("doc", "g").await.unwrap(), whole);
    n.stop().await;
}

#[tokio::test]
async fn racing_writers_with_different_bytes_one_wins_bytes_never_interleave() {
    let n = std::sync::Arc::new(start().await);
    let t = token("doc", "race");
    for round in 0..8u8 {
        let ctx = first(&n, "/doc/race", &t, data(100, round)).await;
        let (a, b) = (
            data(3 << 20, round.wrapping_add(50)),
            data(3 << 20, round.wrapping_add(100)),
        );
        let send = |body: Vec<u8>| {
            let (n, t, ctx) = (n.clone(), t.clone(), ctx.clone());
            tokio::spawn(async move {
                n.send(Chunk::new("/doc/race", &t, 100, false, Some(&ctx), body))
                    .await
                    .0
            })
        };
        let (ra, rb) = (send(a.clone()), send(b.clone()));
        let (sa, sb) = (ra.await.unwrap(), rb.await.unwrap());
        let mut statuses = [sa, sb];
        statuses.sort();
        assert_eq!(statuses, [200, 400], "round {round}: exactly one wins");
        let winner = if sa == 200 { a } else { b };
        let (s, r) = n
            .send(Chunk::new(
                "/doc/race",
                &t,
                100 + (3 << 20),
                true,
                Some(&ctx),
                Vec::new(),
            ))
            .await;
        assert_eq!(s, 200, "{r}");
        let mut want = data(100, round);
        want.extend(winner);
        assert!(
            n.object_bytes("doc", "race").await.unwrap() == want,
            "round {round}: stored bytes are the winner's"
        );
    }
}

#[tokio::test]
async fn a_body_cut_off_mid_chunk_changes_nothing() {
    let n = start().await;
    let t = token("doc", "cut");
    let ctx = first(&n, "/doc/cut", &t, data(1000, 1)).await;
    let head = format!(
        "POST /doc/cut?offset=1000&complete=false&version=1.0&context={ctx} HTTP/1.1\r\nHost: x\r\nx-nos-token: {t}\r\nContent-Length: 600000\r\n\r\n"
    );
    let mut req = head.into_bytes();
    req.extend(data(300_000, 9));
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(n.addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        s.shutdown().await.unwrap();
        let _ = read_for(&mut s, std::time::Duration::from_secs(2)).await;
    }
    assert_eq!(n.query("/doc/cut", &t, &ctx).await.1["offset"], 1000);
    let rest = data(2000, 2);
    let (s, _) = n
        .send(Chunk::new("/doc/cut", &t, 1000, true, Some(&ctx), rest.clone()))
        .await;
    assert_eq!(s, 200);
    let mut want = data(1000, 1);
    want.extend(rest);
    assert_eq!(
        n.object_bytes("doc", "cut").await.unwrap(),
        want,
        "no byte of the cut body survives"
    );
    n.stop().await;
}

#[tokio::test]
async fn a_failed_first_chunk_leaves_no_bytes_behind() {
    let n = start().await;
    let t = token("doc", "gone");
    let mut req = format!(
        "POST /doc/gone?offset=0&complete=false&version=1.0 HTTP/1.1\r\nHost: x\r\nx-nos-token: {t}\r\nContent-Length: 500000\r\n\r\n"
    )
    .into_bytes();
    req.extend(data(200_000, 1));
    let _ = raw(n.addr, &req, std::time::Duration::from_millis(300)).await;
    let staging = n.path.join("blobs/staging");
    for _ in 0..50 {
        if std::fs::read_dir(&staging).unwrap().next().is_none() {
            return n.stop().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("staged bytes of a session that never existed were left behind");
}

/// A phone whose connection dies right after it sent a whole chunk never
/// reads the 200. The chunk is stored and committed all the same, so that
/// the resume query tells the client not to send those bytes again. (hyper
/// drops a request whose client has left; the chunk used to go with it.)
/// A body cut short is still refused: its `Content-Length` was not met.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_chunk_whose_client_left_is_committed() {
    use tokio::io::AsyncWriteExt;
    // The test polls the resume point.
    let n = start_unthrottled().await;
    let t = token("doc", "gone");
    let ctx = first(&n, "/doc/gone", &t, data(1000, 1)).await;
    let second = data(3 << 20, 2);
    for (sent, committed) in [(second.len() / 2, 1000), (second.len(), 1000 + second.len())] {
        let mut s = tokio::net::TcpStream::connect(n.srv().addr).await.unwrap();
        let head = format!(
            "POST /doc/gone?offset=1000&complete=false&version=1.0&context={ctx} HTTP/1.1\r\n\
             Host: x\r\nx-nos-token: {t}\r\nContent-Length: {}\r\n\r\n",
            second.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&second[..sent]).await.unwrap();
        drop(s);
        let mut offset = 0;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let (status, b) = n.query("/doc/gone", &t, &ctx).await;
            assert_eq!(status, 200, "{b}");
            offset = b["offset"].as_u64().unwrap();
            if offset == committed as u64 {
                break;
            }
        }
        assert_eq!(offset, committed as u64, "after {sent} bytes sent");
    }
    let (s, b) = n
        .send(Chunk::new(
            "/doc/gone",
            &t,
            (1000 + second.len()) as u64,
            true,
            Some(&ctx),
            data(10, 3),
        ))
        .await;
    assert_eq!(s, 200, "{b}");
    let stored = n.object_bytes("doc", "gone").await.unwrap();
    assert_eq!(stored, [data(1000, 1), second, data(10, 3)].concat());
}
