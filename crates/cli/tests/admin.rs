//! Administration commands on the data directory of a running node.

mod common;

use std::process::Output;

use common::*;

fn run(dir: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = upline();
    c.args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("UPLINE_ACCESS_KEY")
        .env_remove("UPLINE_SECRET_KEY");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_urls_uploads_and_objects_while_the_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let node = Proc::serve(dir.path(), &[], &env_creds());
    let d = dir.path();

    // Apps: created while the node runs, listed without secrets.
    let line: serde_json::Value =
        serde_json::from_str(&ok(&run(d, &["app", "create", "my app", "--json"], &[]))).unwrap();
    let (key, secret) = (
        line["appKey"].as_str().unwrap(),
        line["appSecret"].as_str().unwrap(),
    );
    assert_eq!((key.len(), secret.len()), (32, 32));
    let list = ok(&run(d, &["app", "list"], &[]));
    assert!(
        list.contains(key) && list.contains("my app") && !list.contains(secret),
        "{list}"
    );
    let db = std::fs::read(d.join("state.db")).unwrap();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is not stored in clear"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(d.join("master.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // An upload in progress and a finished one.
    let http = reqwest::Client::new();
    let post = |object: &str, complete: bool, body: Vec<u8>| {
        let url = format!(
            "{}/doc/{object}?offset=0&complete={complete}&version=1.0",
            node.base()
        );
        http.post(url)
            .header("x-nos-token", token(object))
            .body(body)
            .send()
    };
    let open: serde_json::Value = post("open.mp4", false, vec![1; 1234])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ctx = open["context"].as_str().unwrap();
    assert_eq!(post("done.mp4", true, vec![2; 99]).await.unwrap().status(), 200);

    let uploads = ok(&run(d, &["uploads", "list"], &[]));
    assert!(
        uploads.contains(ctx) && uploads.contains("1234") && uploads.contains("open.mp4"),
        "{uploads}"
    );
    assert!(!uploads.contains("done.mp4"));
    let objects = ok(&run(d, &["objects", "list", "--bucket", "doc"], &[]));
    assert!(
        objects.contains("done.mp4") && objects.contains("99"),
        "{objects}"
    );

    // A signed URL downloads; the node's public URL comes from the environment.
    let env = [
        ("UPLINE_ACCESS_KEY", AK),
        ("UPLINE_SECRET_KEY", SK),
        ("UPLINE_PUBLIC_URL", &node.base()),
    ];
    let url = ok(&run(
        d,
        &[
            "url",
            "--bucket",
            "doc",
            "--object",
            "done.mp4",
            "--expires-in",
            "60",
        ],
        &env,
    ));
    let r = reqwest::get(url.trim()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 99);

    // Abort the open upload: its session and bytes go.
    ok(&run(d, &["uploads", "abort", ctx], &[]));
    let q = format!(
        "{}/doc/open.mp4?uploadContext&context={ctx}&version=1.0",
        node.base()
    );
    let r = http
        .get(q)
        .header("x-nos-token", token("open.mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(!d.join("blobs/staging").join(ctx).exists());
    assert!(
        !run(d, &["uploads", "abort", ctx], &[]).status.success(),
        "unknown now"
    );
    // A context may start with '-' (URL-safe base64): it is the argument,
    // not an option (this test failed now and then on such contexts).
    let dash = run(d, &["uploads", "abort", "-Xq0"], &[]);
    let err = String::from_utf8_lossy(&dash.stderr);
    assert!(
        !dash.status.success() && !err.contains("unexpected argument"),
        "{err}"
    );

    // Remove the finished object.
    ok(&run(d, &["objects", "rm", "doc", "done.mp4"], &[]));
    assert!(!ok(&run(d, &["objects", "list"], &[])).contains("done.mp4"));
    let r = http
        .get(format!("{}/doc/done.mp4", node.base()))
        .header("x-nos-token", token("done.mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    node.kill9();
}

#[test]
fn administration_without_a_database_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["objects", "list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no upline database"));
}
