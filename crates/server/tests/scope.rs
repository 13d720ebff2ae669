//! Token scope on every endpoint that takes a credential: a table of bad
//! credentials (another bucket, another object, expired, unknown key,
//! wrong secret, malformed, missing) against every such endpoint (first
//! chunk, next chunk, final chunk, the replay of a completed final chunk,
//! resume query, download GET and HEAD, signed URL, the app API's three
//! calls). Each must get its own refusal
//! and change nothing: no byte of the node's data directory (blobs and
//! database alike) may differ after the refused request.
//!
//! Endpoints without a credential by design: `/lbs`, `/healthz`,
//! `/metrics`, `/stat/sdk`, CORS preflights (and the demo, off here).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use upline_proto::PutPolicy;
use upline_server::unix_now;

/// Every file under `dir` with its length and a hash of its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, (u64, u64)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if let Ok(bytes) = std::fs::read(&p) {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                let name = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(name, (bytes.len() as u64, h.finish()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A bad credential: its name, the header value (`None`: no header) and
/// what the 403's message must say.
struct Bad {
    case: &'static str,
    token: Option<String>,
    says: &'static str,
}

fn signed(p: &PutPolicy) -> String {
    p.sign(AK, SK.as_bytes())
}

/// Every bad token for `bucket/object`.
fn bad_tokens(bucket: &str, object: &str) -> Vec<Bad> {
    let good = policy(bucket, object);
    let with = |f: &dyn Fn(&mut PutPolicy)| {
        let mut p = good.clone();
        f(&mut p);
        p
    };
    let valid = signed(&good);
    let (head, enc) = valid.rsplit_once(':').unwrap();
    let array = {
        use base64::Engine;
        let enc = base64::engine::general_purpose::STANDARD
            .encode(format!(r#"["{bucket}","{object}",{}]"#, unix_now() + 3600));
        format!(
            "UPLOAD {AK}:{}:{enc}",
            upline_proto::token::sign(SK.as_bytes(), &enc)
        )
    };
    vec![
        Bad {
            case: "another bucket",
            token: Some(signed(&with(&|p| p.bucket = "other".into()))),
            says: "another bucket",
        },
        Bad {
            case: "another object",
            token: Some(signed(&with(&|p| p.object = format!("{}x", p.object)))),
            says: "another object",
        },
        Bad {
            case: "expired",
            token: Some(signed(&with(&|p| p.expires = Some(unix_now() - 1)))),
            says: "expired",
        },
        Bad {
            case: "no Expires",
            token: Some(signed(&with(&|p| p.expires = None))),
            says: "no Expires",
        },
        Bad {
            case: "unknown access key",
            token: Some(good.sign("nobody", SK.as_bytes())),
            says: "unknown access key",
        },
        Bad {
            case: "signed with another secret",
            token: Some(good.sign(AK, b"not-the-secret")),
            says: "signature does not match",
        },
        Bad {
            case: "signature of another policy",
            token: Some(format!(
                "{}:{enc}",
                signed(&with(&|p| p.bucket = "other".into()))
                    .rsplit_once(':')
                    .unwrap()
                    .0
            )),
            says: "signature does not match",
        },
        Bad {
            case: "truncated signature",
            token: Some(format!("{}:{enc}", &head[..head.len() - 4])),
            says: "signature",
        },
        Bad {
            case: "signature not base64",
            token: Some(format!("UPLOAD {AK}:!!!!:{enc}")),
            says: "not valid base64",
        },
        Bad {
            case: "policy as a JSON array",
            token: Some(array),
            says: "JSON object",
        },
        Bad {
            case: "callback to file://",
            token: Some(signed(&with(&|p| {
                p.callback_url = Some("file:///etc/passwd".into())
            }))),
            says: "CallbackUrl",
        },
        Bad {
            case: "no prefix",
            token: Some(valid.trim_start_matches("UPLOAD ").to_owned()),
            says: "UPLOAD",
        },
        Bad {
            case: "two parts",
            token: Some(format!("UPLOAD {AK}:{enc}")),
            says: "accessKey:encodedSign:encodedPolicy",
        },
        Bad {
            case: "empty",
            token: Some(String::new()),
            says: "UPLOAD",
        },
        Bad {
            case: "missing",
            token: None,
            says: "missing x-nos-token",
        },
    ]
}

/// One refused call: status and body text.
struct Outcome {
    status: u16,
    body: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_every_bad_token_and_changes_nothing() {
    // A slow heartbeat: the registry row is written once at start, so
    // any later write to the data directory is a request's doing.
    let n = start_with(|c| c.heartbeat_ms = 3_600_000).await;
    let body = data(3000, 9);
    // A published object, and an open session at offset 1000.
    let (s, b) = n
        .send(
            Chunk::new(
                "/doc/pub.mp4",
                &token("doc", "pub.mp4"),
                0,
                true,
                None,
                body.clone(),
            )
            .header("Content-MD5", md5_hex(&body)),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let pub_ctx = b["context"].as_str().unwrap().to_owned();
    let open_tok = token("doc", "open.mp4");
    let (s, b) = n
        .send(Chunk::new(
            "/doc/open.mp4",
            &open_tok,
            0,
            false,
            None,
            body[..1000].to_vec(),
        ))
        .await;
    assert_eq!(s, 200, "{b}");
    let ctx = b["context"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    type Call<'a> = Box<dyn Fn(Option<String>) -> futures_util::future::BoxFuture<'a, Outcome> + 'a>;
    let http = &n.http;
    let base = n.base.as_str();
    let send = move |req: reqwest::RequestBuilder, tok: Option<String>| async move {
        let req = match tok {
            Some(t) => req.header("x-nos-token", t),
            None => req,
        };
        let r = req.send().await.unwrap();
        Outcome {
            status: r.status().as_u16(),
            body: r.text().await.unwrap(),
        }
    };
    let ctx2 = ctx.clone();
    let ctx3 = ctx.clone();
    let ctx4 = ctx.clone();
    let body2 = body.clone();
    let body3 = body.clone();
    let body4 = body.clone();
    let endpoints: Vec<(&str, (&str, &str), Call)> = vec![
        (
            "first chunk",
            ("doc", "new.mp4"),
            Box::new(move |t| {
                let url = format!("{base}/doc/new.mp4?offset=0&complete=true&version=1.0");
                Box::pin(send(http.post(url).body(body2.clone()), t))
            }),
        ),
        (
            "next chunk",
            ("doc", "open.mp4"),
            Box::new(move |t| {
                let url =
                    format!("{base}/doc/open.mp4?offset=1000&complete=false&version=1.0&context={ctx2}");
                Box::pin(send(http.post(url).body(body3[1000..2000].to_vec()), t))
            }),
        ),
        (
            "final chunk",
            ("doc", "open.mp4"),
            Box::new(move |t| {
                let url = format!("{base}/doc/open.mp4?offset=1000&complete=true&version=1.0&context={ctx3}");
                Box::pin(send(http.post(url).body(vec![7u8; 2000]), t))
            }),
        ),
        (
            // The exact replay of a completed upload's final chunk, which
            // would publish again and rerun a callback.
            "final replay",
            ("doc", "pub.mp4"),
            Box::new(move |t| {
                let url = format!("{base}/doc/pub.mp4?offset=0&complete=true&version=1.0&context={pub_ctx}");
                Box::pin(send(http.post(url).body(body4.clone()), t))
            }),
        ),
        (
            "resume query",
            ("doc", "open.mp4"),
            Box::new(move |t| {
                let url = format!("{base}/doc/open.mp4?uploadContext&context={ctx4}&version=1.0");
                Box::pin(send(http.get(url), t))
            }),
        ),
        (
            "download GET",
            ("doc", "pub.mp4"),
            Box::new(move |t| Box::pin(send(http.get(format!("{base}/doc/pub.mp4")), t))),
        ),
        (
            "download HEAD",
            ("doc", "pub.mp4"),
            Box::new(move |t| Box::pin(send(http.head(format!("{base}/doc/pub.mp4")), t))),
        ),
    ];

    let mut failures = Vec::new();
    let mut rows = 0;
    for (name, (bucket, object), call) in &endpoints {
        for bad in bad_tokens(bucket, object) {
            let before = snapshot(&n.path);
            let out = call(bad.token.clone()).await;
            let after = snapshot(&n.path);
            rows += 1;
            let mut why = Vec::new();
            if out.status != 403 {
                why.push(format!("status {}", out.status));
            }
            // HEAD has no body to carry the message.
            if *name != "download HEAD" && !out.body.contains(bad.says) {
                why.push(format!("message {:?} lacks {:?}", out.body, bad.says));
            }
            if before != after {
                why.push("the data directory changed".to_owned());
            }
            println!("{name:14} | {:28} | {} | {}", bad.case, out.status, out.body);
            if !why.is_empty() {
                failures.push(format!("{name} / {}: {}", bad.case, why.join("; ")));
            }
        }
    }

    // The same calls with the right token pass: the refusals above were
    // the token's doing (the state-preserving calls only).
    for (name, (bucket, object), call) in &endpoints {
        if ["final replay", "resume query", "download GET", "download HEAD"].contains(name) {
            let out = call(Some(token(bucket, object))).await;
            assert_eq!(out.status, 200, "{name} with the right token: {}", out.body);
        }
    }
    drop(endpoints);
    // The session and the object are as they were.
    assert_eq!(n.query("/doc/open.mp4", &open_tok, &ctx).await.1["offset"], 1000);
    assert_eq!(n.object_bytes("doc", "pub.mp4").await.unwrap(), body);
    assert!(n.object_bytes("doc", "new.mp4").await.is_none());
    assert!(n.object_bytes("doc", "open.mp4").await.is_none());
    assert!(
        failures.is_empty(),
        "{rows} rows, refused wrongly:\n{}",
        failures.join("\n")
    );
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_for_anything_else_are_refused() {
    let n = start_with(|c| c.heartbeat_ms = 3_600_000).await;
    let body = data(2000, 4);
    // With its MD5, so no background MD5 pass writes during the table.
    let (s, b) = n
        .send(
            Chunk::new(
                "/doc/pub.mp4",
                &token("doc", "pub.mp4"),
                0,
                true,
                None,
                body.clone(),
            )
            .header("Content-MD5", md5_hex(&body)),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let fresh = unix_now() + 600;
    let sign =
        |ak: &str, sk: &[u8], obj: &str, exp: i64| upline_proto::signed_url::sign(ak, sk, "doc", obj, exp);
    let good = sign(AK, SK.as_bytes(), "pub.mp4", fresh);
    let sig = good.rsplit_once("Signature=").unwrap().1.to_owned();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "another object",
            sign(AK, SK.as_bytes(), "other.mp4", fresh),
            "signature does not match",
        ),
        (
            "expired",
            sign(AK, SK.as_bytes(), "pub.mp4", unix_now() - 1),
            "expired",
        ),
        (
            "unknown access key",
            sign("nobody", SK.as_bytes(), "pub.mp4", fresh),
            "unknown access key",
        ),
        (
            "another secret",
            sign(AK, b"nope", "pub.mp4", fresh),
            "signature does not match",
        ),
        (
            "later Expires",
            good.replace(&format!("Expires={fresh}"), &format!("Expires={}", fresh + 1)),
            "signature does not match",
        ),
        (
            "signature not base64",
            good.replace(&sig, "!!!!"),
            "not valid base64",
        ),
        (
            "no Expires",
            format!("AccessKey={AK}&Signature={sig}"),
            "accessKey:encodedSign",
        ),
        (
            "Expires not a number",
            good.replace(&format!("Expires={fresh}"), "Expires=soon"),
            "accessKey:encodedSign",
        ),
        // Not read as a signed URL at all (its query does not parse): a
        // refusal for want of a token.
        (
            "duplicate Signature",
            format!("{good}&Signature={sig}"),
            "x-nos-token",
        ),
    ];
    let mut failures = Vec::new();
    for (case, query, says) in &cases {
        let before = snapshot(&n.path);
        let r = n
            .http
            .get(format!("{}/doc/pub.mp4?{query}", n.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        println!("signed URL     | {case:28} | {status} | {text}");
        if status != 403 || !text.contains(says) || before != snapshot(&n.path) {
            failures.push(format!("{case}: {status} {text}"));
        }
    }
    let r = n
        .http
        .get(format!("{}/doc/pub.mp4?{good}", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the good URL still works");
    assert_eq!(r.bytes().await.unwrap(), body);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    n.stop().await;
}

/// AppKey, Nonce, CurTime, CheckSum (an empty value: no header).
type AuthHeaders = [(&'static str, String); 4];

fn sha1_hex(s: &str) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_api_refuses_every_bad_credential_and_changes_nothing() {
    let n = start_with(|c| c.heartbeat_ms = 3_600_000).await;
    let app = n.srv().create_app("scope").await;
    let other = n.srv().create_app("other").await;
    let (key, secret) = (app.record.app_key.clone(), app.secret.clone());
    let post = |path: &str, h: [(&str, String); 4], body: serde_json::Value| {
        let mut req = n.http.post(format!("{}{path}", n.base)).json(&body);
        for (k, v) in h {
            if !v.is_empty() {
                req = req.header(k, v);
            }
        }
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let headers = |key: &str, secret: &str, nonce: &str, cur: i64| {
        [
            ("AppKey", key.to_owned()),
            ("Nonce", nonce.to_owned()),
            ("CurTime", cur.to_string()),
            ("CheckSum", sha1_hex(&format!("{secret}{nonce}{cur}"))),
        ]
    };
    // A nonce used once, for the replay case.
    let now = unix_now();
    let ok = post(
        "/app/vod/video/query",
        headers(&key, &secret, "used-nonce", now),
        serde_json::json!({"objectNames": ["x"]}),
    )
    .await;
    assert_eq!(ok["code"], 200, "{ok}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let calls = [
        (
            "/app/vod/upload/init",
            serde_json::json!({"originFileName": "a.mp4"}),
        ),
        ("/app/vod/video/query", serde_json::json!({"objectNames": ["x"]})),
        (
            "/app/vod/callback/setUrl",
            serde_json::json!({"callbackUrl": "http://127.0.0.1:9/x", "signKey": "k"}),
        ),
    ];
    let mut failures = Vec::new();
    let mut nonce_no = 0;
    for (path, body) in &calls {
        let mut nonce = || {
            nonce_no += 1;
            format!("n{nonce_no}")
        };
        let now = unix_now();
        let mut wrong_sum = headers(&key, &secret, &nonce(), now);
        wrong_sum[3].1 = sha1_hex("something else");
        let mut no_sum = headers(&key, &secret, &nonce(), now);
        no_sum[3].1 = String::new();
        let cases: Vec<(&str, AuthHeaders, &str)> = vec![
            (
                "unknown AppKey",
                headers("0000", &secret, &nonce(), now),
                "unknown AppKey",
            ),
            (
                "another app's secret",
                headers(&key, &other.secret, &nonce(), now),
                "CheckSum does not match",
            ),
            (
                "another app's key",
                headers(&other.record.app_key, &secret, &nonce(), now),
                "CheckSum does not match",
            ),
            ("wrong CheckSum", wrong_sum, "CheckSum does not match"),
            ("missing CheckSum", no_sum, "headers are required"),
            (
                "CurTime 6 minutes old",
                headers(&key, &secret, &nonce(), now - 360),
                "CurTime",
            ),
            (
                "CurTime 6 minutes ahead",
                headers(&key, &secret, &nonce(), now + 360),
                "CurTime",
            ),
            (
                "replayed Nonce",
                headers(&key, &secret, "used-nonce", now),
                "Nonce already used",
            ),
        ];
        for (case, h, says) in cases {
            let before = snapshot(&n.path);
            let r = post(path, h, body.clone()).await;
            let changed = before != snapshot(&n.path);
            println!("{path:26} | {case:24} | {r}");
            if r["code"] != 403
                || !r["msg"].as_str().unwrap_or("").contains(says)
                || changed
                || r.get("ret").is_some()
            {
                failures.push(format!(
                    "{path} / {case}: {r} (data directory changed: {changed})"
                ));
            }
        }
    }
    // A refused request does not burn its nonce: the same nonce, signed
    // right, still works once.
    let now = unix_now();
    let mut wrong = headers(&key, &secret, "fresh-nonce", now);
    wrong[3].1 = sha1_hex("x");
    assert_eq!(
        post(
            "/app/vod/video/query",
            wrong,
            serde_json::json!({"objectNames": ["x"]})
        )
        .await["code"],
        403
    );
    let r = post(
        "/app/vod/video/query",
        headers(&key, &secret, "fresh-nonce", now),
        serde_json::json!({"objectNames": ["x"]}),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    n.stop().await;
}
