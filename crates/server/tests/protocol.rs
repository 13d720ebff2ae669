//! Black-box tests of PROTOCOL.md: every endpoint, status code and JSON
//! field name, against a real node on a random port.

mod common;

use common::*;
use upline_proto::PutPolicy;
use upline_server::unix_now;

#[tokio::test]
async fn walk_through_three_chunks_query_and_complete() {
    let n = start().await;
    let t = token("doc", "movie.mp4");
    let body = data(3_000_000, 1);
    let (s, first) = n
        .send(
            Chunk::new("/doc/movie.mp4", &t, 0, false, None, body[..1_000_000].to_vec())
                .header("content-type", "video/mp4"),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    for field in ["requestId", "requestID", "offset", "context", "callbackRetMsg"] {
        assert!(first.get(field).is_some(), "200 body lacks {field}: {first}");
    }
    assert_eq!(first["requestId"], first["requestID"]);
    assert_eq!(first["offset"], 1_000_000);
    assert_eq!(first["callbackRetMsg"], "");
    let ctx = first["context"].as_str().unwrap().to_owned();
    assert!(
        ctx.len() >= 22
            && ctx
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );

    let (s, q) = n.query("/doc/movie.mp4", &t, &ctx).await;
    assert_eq!((s, &q["offset"]), (200, &serde_json::json!(1_000_000)));
    assert_eq!(q["requestId"], q["requestID"]);

    let (s, b) = n
        .send(Chunk::new(
            "/doc/movie.mp4",
            &t,
            1_000_000,
            false,
            Some(&ctx),
            body[1_000_000..2_000_000].to_vec(),
        ))
        .await;
    assert_eq!((s, &b["offset"]), (200, &serde_json::json!(2_000_000)));
    assert!(
        n.object_bytes("doc", "movie.mp4").await.is_none(),
        "not visible before completion"
    );
    let (s, b) = n
        .send(Chunk::new(
            "/doc/movie.mp4",
            &t,
            2_000_000,
            true,
            Some(&ctx),
            body[2_000_000..].to_vec(),
        ))
        .await;
    assert_eq!(
        (s, &b["offset"], b["context"].as_str()),
        (200, &serde_json::json!(3_000_000), Some(ctx.as_str()))
    );
    assert_eq!(n.object_bytes("doc", "movie.mp4").await.unwrap(), body);
    let rec = n.node.object("doc", "movie.mp4").await.unwrap().unwrap();
    assert_eq!((rec.size, rec.content_type.as_str()), (3_000_000, "video/mp4"));

    let (s, q) = n.query("/doc/movie.mp4", &t, &ctx).await;
    assert_eq!((s, &q["offset"]), (200, &serde_json::json!(3_000_000)));
    let (s, b) = n
        .send(Chunk::new(
            "/doc/movie.mp4",
            &t,
            3_000_000,
            false,
            Some(&ctx),
            b"more".to_vec(),
        ))
        .await;
    assert_eq!(s, 400, "chunks after completion are refused: {b}");
    n.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_400_with_json() {
    let n = start().await;
    let t = token("doc", "a");
    for query in [
        "offset=0&complete=false",
        "offset=0&complete=false&version=2.0",
        "complete=false&version=1.0",
        "offset=x&complete=false&version=1.0",
        "offset=-5&complete=false&version=1.0",
        "offset=0&complete=maybe&version=1.0",
        "offset=0&version=1.0",
    ] {
        let resp = n
            .http
            .post(format!("{}/doc/a?{query}", n.base))
            .header("x-nos-token", &t)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        let b: serde_json::Value = resp.json().await.unwrap();
        assert!(
            b["errMsg"].as_str().is_some_and(|m| !m.is_empty()),
            "{query}: {b}"
        );
        assert_eq!(b["requestId"], b["requestID"]);
    }
    // Rule 1 comes before rule 2: a bad version with no token is a 400.
    let resp = n
        .http
        .post(format!("{}/doc/a?offset=0&complete=true&version=9", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // A new session must start at 0.
    let (s, b) = n
        .send(Chunk::new("/doc/a", &t, 5, false, None, b"x".to_vec()))
        .await;
    assert_eq!(s, 400, "{b}");
    // Bad names.
    for path in ["/Doc/a", "/doc/a%zz", "/doc/a%0A", "/doc/%FF"] {
        let (s, _) = n.send(Chunk::new(path, &t, 0, false, None, b"x".to_vec())).await;
        assert_eq!(s, 400, "{path}");
    }
    let (s, _) = n
        .send(Chunk::new("/doc/a", &t, 0, false, None, b"x".to_vec()).header("content-md5", "nope"))
        .await;
    assert_eq!(s, 400, "malformed Content-MD5");
    n.stop().await;
}

#[tokio::test]
async fn every_token_failure_is_403_and_never_echoes_the_secret() {
    let n = start().await;
    let good = policy("doc", "a");
    let enc_policy = |p: &PutPolicy| sign(p).rsplit(':').next().unwrap().to_owned();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("prefix", Some(sign(&good).replacen("UPLOAD", "Bearer", 1))),
        ("shape", Some("UPLOAD onlyonepart".into())),
        ("unknown key", Some(good.sign("other-key", SK.as_bytes()))),
        ("bad signature", Some(good.sign(AK, b"wrong secret"))),
        (
            "bad base64 sign",
            Some(format!("UPLOAD {AK}:!!!:{}", enc_policy(&good))),
        ),
        (
            "expired",
            Some(sign(&PutPolicy {
                expires: Some(unix_now() - 1),
                ..good.clone()
            })),
        ),
        (
            "no expires",
            Some(sign(&PutPolicy {
                expires: None,
                ..good.clone()
            })),
        ),
        ("other bucket", Some(token("doc2", "a"))),
        ("other object", Some(token("doc", "b"))),
    ];
    for (what, tok) in cases {
        let mut c = Chunk::new("/doc/a", "", 0, true, None, b"x".to_vec());
        c.token = tok.as_deref();
        let (s, b) = n.send(c).await;
        assert_eq!(s, 403, "{what}: {b}");
        let msg = b["errMsg"].as_str().unwrap();
        assert!(!msg.is_empty() && !msg.contains(SK), "{what}: {msg}");
    }
    let (s, b) = n
        .send(Chunk::new(
            "/doc/a",
            &token("doc", "a"),
            0,
            true,
            None,
            b"x".to_vec(),
        ))
        .await;
    assert_eq!(s, 200, "the good token works: {b}");
    n.stop().await;
}

#[tokio::test]
async fn tokens_without_expires_when_configured() {
    let n = start_with(|c| c.require_expires = false).await;
    let t = sign(&PutPolicy {
        expires: None,
        ..policy("doc", "a")
    });
    let (s, _) = n
        .send(Chunk::new("/doc/a", &t, 0, true, None, b"x".to_vec()))
        .await;
    assert_eq!(s, 200);
    n.stop().await;
}

#[tokio::test]
async fn contexts_unknown_mismatched_and_offsets() {
    let n = start().await;
    let (ta, tb) = (token("doc", "a"), token("doc", "b"));
    let (_, b) = n
        .send(Chunk::new("/doc/a", &ta, 0, false, None, vec![1; 100]))
        .await;
    let ctx = b["context"].as_str().unwrap().to_owned();

    let (s, b) = n
        .send(Chunk::new(
            "/doc/a",
            &ta,
            100,
            false,
            Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            vec![1],
        ))
        .await;
    assert_eq!(s, 404, "{b}");
    let (s, _) = n
        .send(Chunk::new(
            "/doc/a",
            &ta,
            100,
            false,
            Some("not%20url%20safe"),
            vec![1],
        ))
        .await;
    assert_eq!(s, 404);
    let (s, b) = n
        .send(Chunk::new("/doc/b", &tb, 100, false, Some(&ctx), vec![1]))
        .await;
    assert_eq!(s, 400, "context of another object: {b}");
    for wrong in [0, 50, 99, 101, 5000] {
        let (s, b) = n
            .send(Chunk::new("/doc/a", &ta, wrong, false, Some(&ctx), vec![2; 10]))
            .await;
        assert_eq!(s, 400, "offset {wrong}");
        assert!(
            b["errMsg"].as_str().unwrap().contains("100"),
            "errMsg names the committed offset: {b}"
        );
    }
    let (s, q) = n.query("/doc/a", &ta, &ctx).await;
    assert_eq!(
        (s, &q["offset"]),
        (200, &serde_json::json!(100)),
        "refusals changed nothing"
    );

    // The query endpoint's own refusals.
    assert_eq!(n.query("/doc/a", &ta, "AAAAAAAAAAAAAAAAAAAAAAAA").await.0, 404);
    assert_eq!(n.query("/doc/b", &tb, &ctx).await.0, 400);
    assert_eq!(n.query("/doc/a", &tb, &ctx).await.0, 403);
    let no_ctx = n
        .http
        .get(format!("{}/doc/a?uploadContext&version=1.0", n.base))
        .header("x-nos-token", &ta)
        .send()
        .await
        .unwrap();
    assert_eq!(no_ctx.status(), 400);
    let bad_v = n
        .http
        .get(format!("{}/doc/a?uploadContext&context={ctx}&version=3", n.base))
        .header("x-nos-token", &ta)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_v.status(), 400);
    let no_token = n
        .http
        .get(format!(
            "{}/doc/a?version=1.0&context={ctx}&uploadContext",
            n.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        no_token.status(),
        403,
        "parameters in any order, token still required"
    );
    n.stop().await;
}

#[tokio::test]
async fn query_parameters_in_any_order_and_empty_context() {
    let n = start().await;
    let t = token("doc", "a");
    let url = format!("{}/doc/a?context=&complete=1&version=1.0&offset=0", n.base);
    let resp = n
        .http
        .post(url)
        .header("x-nos-token", &t)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(n.object_bytes("doc", "a").await.unwrap(), b"hello");
    n.stop().await;
}

#[tokio::test]
async fn object_names_slashes_plus_utf8_and_traversal() {
    let n = start().await;
    let cases = [
        ("/doc/dir%2Fsub/file.mp4", "dir/sub/file.mp4"),
        ("/doc/a+b%2Bc.mp4", "a b+c.mp4"),
        ("/doc/%E8%A7%86%E9%A2%91%20one.mp4", "视频 one.mp4"),
        ("/doc/..%2F..%2F..%2Fetc%2Fpasswd", "../../../etc/passwd"),
    ];
    for (i, (path, name)) in cases.iter().enumerate() {
        let t = token("doc", name);
        let bytes = data(1000, i as u8);
        n.upload(path, &t, &bytes, 300).await;
        assert_eq!(n.object_bytes("doc", name).await.unwrap(), bytes, "{path}");
    }
    // Nothing escaped the data directory.
    assert!(!n.path.parent().unwrap().join("etc").exists());
    n.stop().await;
}

#[tokio::test]
async fn zero_length_objects() {
    let n = start().await;
    let t = token("doc", "empty");
    let (s, b) = n
        .send(Chunk::new("/doc/empty", &t, 0, true, None, Vec::new()))
        .await;
    assert_eq!((s, &b["offset"]), (200, &serde_json::json!(0)), "{b}");
    let rec = n.node.object("doc", "empty").await.unwrap().unwrap();
    assert_eq!(rec.size, 0);
    assert_eq!(n.object_bytes("doc", "empty").await.unwrap(), b"");
    // An empty final chunk after data also completes.
    let t2 = token("doc", "two");
    let (_, b) = n
        .send(Chunk::new("/doc/two", &t2, 0, false, None, b"abc".to_vec()))
        .await;
    let ctx = b["context"].as_str().unwrap().to_owned();
    let (s, _) = n
        .send(Chunk::new("/doc/two", &t2, 3, true, Some(&ctx), Vec::new()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(n.object_bytes("doc", "two").await.unwrap(), b"abc");
    n.stop().await;
}

#[tokio::test]
async fn replacing_an_object_keeps_the_newest() {
    let n = start().await;
    let t = token("doc", "same");
    n.upload("/doc/same", &t, &data(5000, 1), 2000).await;
    n.upload("/doc/same", &t, &data(300, 2), 2000).await;
    assert_eq!(n.object_bytes("doc", "same").await.unwrap(), data(300, 2));
    n.stop().await;
}

#[tokio::test]
async fn policy_size_and_mime_limits() {
    let n = start().await;
    let p = PutPolicy {
        object_size_max: Some(100),
        object_size_min: Some(10),
        mime_limit: Some("image/*".into()),
        ..policy("doc", "a")
    };
    let t = sign(&p);
    let img = |c: Chunk<'static>| c.header("content-type", "image/png");
    let (s, _) = n
        .send(Chunk::new("/doc/a", &t, 0, false, None, vec![0; 10]).header("content-type", "video/mp4"))
        .await;
    assert_eq!(s, 400, "MimeLimit");
    let t: &'static str = Box::leak(t.into_boxed_str());
    let (s, _) = n
        .send(img(Chunk::new("/doc/a", t, 0, false, None, vec![0; 101])))
        .await;
    assert_eq!(s, 400, "ObjectSizeMax");
    let (s, _) = n
        .send(img(Chunk::new("/doc/a", t, 0, true, None, vec![0; 9])))
        .await;
    assert_eq!(s, 400, "ObjectSizeMin");
    assert!(n.object_bytes("doc", "a").await.is_none());
    let (s, b) = n
        .send(img(Chunk::new("/doc/a", t, 0, false, None, vec![0; 60])))
        .await;
    assert_eq!(s, 200);
    let ctx: &'static str = Box::leak(b["context"].as_str().unwrap().to_owned().into_boxed_str());
    let (s, _) = n
        .send(Chunk::new("/doc/a", t, 60, false, Some(ctx), vec![0; 41]))
        .await;
    assert_eq!(s, 400, "ObjectSizeMax across chunks");
    let (s, _) = n
        .send(Chunk::new("/doc/a", t, 60, true, Some(ctx), vec![0; 40]))
        .await;
    assert_eq!(s, 200);
    n.stop().await;
}

#[tokio::test]
async fn lbs_stat_health_and_cors() {
    let n = start().await;
    let r = n
        .http
        .get(format!("{}/lbs?version=1.0&bucketname=doc", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["lbs"], format!("http://{}/lbs", n.addr));
    assert_eq!(
        b["upload"],
        serde_json::json!([n.base, n.base]),
        "at least two entries"
    );
    for q in [
        "bucketname=doc",
        "version=2.0&bucketname=doc",
        "version=1.0",
        "version=1.0&bucketname=NO",
    ] {
        let r = n.http.get(format!("{}/lbs?{q}", n.base)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let b: serde_json::Value = r.json().await.unwrap();
        assert!(b["Code"].is_string() && b["Message"].is_string(), "{b}");
    }
    let r = n
        .http
        .post(format!("{}/stat/sdk?version=1.0", n.base))
        .body("{\"stats\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = n.http.get(format!("{}/healthz", n.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let pre = n
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/doc/a?offset=0", n.base))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "x-nos-token, content-md5, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    let allowed = pre.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in ["x-nos-token", "content-md5", "content-type"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    // A web player reading an object in ranges from another origin.
    let pre = n
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/doc/a", n.base))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "x-nos-token, range")
        .send()
        .await
        .unwrap();
    let allowed = pre.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("range"), "{allowed}");
    let r = n
        .http
        .get(format!("{}/lbs?version=1.0&bucketname=doc", n.base))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in ["etag", "content-range", "x-request-id"] {
        assert!(exposed.contains(h), "{exposed}");
    }
    let r = n
        .http
        .get(format!("{}/nothing/here/at/all", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a download without a credential is refused in JSON"
    );
    let b: serde_json::Value = r.json().await.unwrap();
    assert!(b["errMsg"].is_string());
    n.stop().await;
}

#[tokio::test]
async fn cors_origins_can_be_narrowed() {
    let n = start_with(|c| c.cors_origins = vec!["https://good.example".into()]).await;
    let ask = |origin: &'static str| {
        n.http
            .request(reqwest::Method::OPTIONS, format!("{}/doc/a", n.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let good = ask("https://good.example").await.unwrap();
    assert_eq!(
        good.headers()["access-control-allow-origin"],
        "https://good.example"
    );
    let bad = ask("https://evil.example").await.unwrap();
    assert!(bad.headers().get("access-control-allow-origin").is_none());
    n.stop().await;
}

#[tokio::test]
async fn public_url_is_what_lbs_lists() {
    let n = start_with(|c| c.public_url = Some("https://up.example.com/".into())).await;
    let b: serde_json::Value = n
        .http
        .get(format!("{}/lbs?version=1.0&bucketname=doc", n.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        b["upload"],
        serde_json::json!(["https://up.example.com", "https://up.example.com"])
    );
    assert_eq!(b["lbs"], "https://up.example.com/lbs");
    n.stop().await;
}
