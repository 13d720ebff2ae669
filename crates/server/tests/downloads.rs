//! Downloads of published objects: whole, ranged, unsatisfiable, HEAD; by
//! token, signed URL or public bucket; refusals.

mod common;

use common::*;
use upline_server::unix_now;

async fn published(n: &TestNode, bucket: &str, object: &str, bytes: &[u8]) {
    let path = format!("/{bucket}/{object}");
    let (s, b) = n
        .send(
            Chunk::new(&path, &token(bucket, object), 0, true, None, bytes.to_vec())
                .header("content-type", "video/mp4"),
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn full_ranged_unsatisfiable_and_head() {
    let n = start().await;
    let bytes = data(100_000, 1);
    published(&n, "doc", "v.mp4", &bytes).await;
    let t = token("doc", "v.mp4");
    let url = format!("{}/doc/v.mp4", n.base);

    let r = n.http.get(&url).header("x-nos-token", &t).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "video/mp4");
    assert_eq!(h["content-length"], "100000");
    assert_eq!(h["etag"].to_str().unwrap(), format!("\"{}\"", md5_hex(&bytes)));
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(
        h["content-security-policy"], "sandbox",
        "an uploaded page runs no script here"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    let modified = httpdate_parse(h["last-modified"].to_str().unwrap());
    assert!(
        (modified - unix_now()).abs() < 60,
        "Last-Modified is the upload time"
    );
    assert_eq!(r.bytes().await.unwrap(), bytes);

    let r = n
        .http
        .get(&url)
        .header("x-nos-token", &t)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/100000");
    assert_eq!(r.bytes().await.unwrap(), &bytes[100..200]);
    let r = n
        .http
        .get(&url)
        .header("x-nos-token", &t)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.bytes().await.unwrap()),
        (206, bytes[99_990..].to_vec().into())
    );

    let r = n
        .http
        .get(&url)
        .header("x-nos-token", &t)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */100000");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["requestId"].is_string(), "{body}");
    assert!(
        body["errMsg"].as_str().unwrap().contains("100000 bytes"),
        "{body}"
    );

    let r = n.http.head(&url).header("x-nos-token", &t).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert!(r.bytes().await.unwrap().is_empty());

    let r = n
        .http
        .get(format!("{}/doc/missing", n.base))
        .header("x-nos-token", token("doc", "missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    n.stop().await;
}

#[tokio::test]
async fn private_by_default_signed_urls_and_public_buckets() {
    let n = start_with(|c| c.public_buckets = vec!["pub".into()]).await;
    let bytes = data(5000, 2);
    published(&n, "doc", "a b.mp4", &bytes).await;
    published(&n, "pub", "open.mp4", &bytes).await;
    let url = format!("{}/doc/a%20b.mp4", n.base);

    assert_eq!(
        n.http.get(&url).send().await.unwrap().status(),
        403,
        "no credential"
    );
    let wrong = n
        .http
        .get(&url)
        .header("x-nos-token", token("doc", "other"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403, "a token for another object");
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert!(body["errMsg"].as_str().unwrap().contains("another object"));

    let sign = |expires: i64| upline_proto::signed_url::sign(AK, SK.as_bytes(), "doc", "a b.mp4", expires);
    let r = n
        .http
        .get(format!("{url}?{}", sign(unix_now() + 60)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bytes);
    let r = n
        .http
        .get(format!("{url}?{}", sign(unix_now() - 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "expired signed URL");
    let forged = sign(unix_now() + 60).replace("Expires=", "Expires=9");
    assert_eq!(
        n.http
            .get(format!("{url}?{forged}"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    let r = n
        .http
        .get(format!("{}/pub/open.mp4", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "public-read bucket");
    assert_eq!(r.bytes().await.unwrap(), bytes);
    n.stop().await;
}

fn httpdate_parse(s: &str) -> i64 {
    let t = httpdate::parse_http_date(s).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}
