//! HTTPS from `tls_cert`/`tls_key`, and a new pair picked up on SIGHUP
//! without a restart: uploads over TLS with a client that trusts only the
//! node's self-signed certificate, then a certificate swap.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use upline_proto::PutPolicy;
use upline_server::testing::{ACCESS_KEY, SECRET_KEY};
use upline_server::{App, Credential, ServerConfig, unix_now};

const HOST: &str = "upline.test";

/// A self-signed pair for [`HOST`], as PEM: (certificate, key, DER).
fn pair() -> (String, String, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem(), c.cert.der().to_vec())
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    // Written aside and renamed, as a certificate tool would.
    std::fs::write(dir.join("cert.tmp"), cert).unwrap();
    std::fs::write(dir.join("key.tmp"), key).unwrap();
    std::fs::rename(dir.join("cert.tmp"), dir.join("cert.pem")).unwrap();
    std::fs::rename(dir.join("key.tmp"), dir.join("key.pem")).unwrap();
}

/// A client that trusts only `cert_pem`, reaching the node as [`HOST`].
fn client(cert_pem: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve(HOST, addr)
        .tls_info(true)
        .build()
        .unwrap()
}

fn token(object: &str) -> String {
    PutPolicy {
        bucket: "doc".into(),
        object: object.into(),
        expires: Some(unix_now() + 3600),
        ..Default::default()
    }
    .sign(ACCESS_KEY, SECRET_KEY.as_bytes())
}

/// The certificate the node showed on a new connection, and the answer.
async fn peer_cert(c: &reqwest::Client, url: &str) -> reqwest::Result<(Vec<u8>, reqwest::StatusCode)> {
    let resp = c.get(url).send().await?;
    let der = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("a TLS connection")
        .to_vec();
    Ok((der, resp.status()))
}

#[tokio::test]
async fn uploads_over_tls_and_a_new_certificate_on_sighup() {
    let tmp = Arc::new(tempfile::tempdir().unwrap());
    let certs = tempfile::tempdir().unwrap();
    let (cert1, key1, der1) = pair();
    write_pair(certs.path(), &cert1, &key1);
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: tmp.path().to_path_buf(),
        credentials: vec![Credential {
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
        }],
        tls_cert: Some(certs.path().join("cert.pem")),
        tls_key: Some(certs.path().join("key.pem")),
        ..Default::default()
    };
    let app = App::build(cfg.clone()).await.unwrap();
    let addr = app.local_addr();
    let tls = app.tls().expect("TLS is on");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let base = format!("https://{HOST}:{}", addr.port());
    let old = client(&cert1, addr);

    // A two-chunk upload and a query, over TLS.
    let t = token("clip.mp4");
    let body = upline_server::testing::data(300_000, 9);
    let r: serde_json::Value = old
        .post(format!("{base}/doc/clip.mp4?offset=0&complete=false&version=1.0"))
        .header("x-nos-token", &t)
        .body(body[..200_000].to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ctx = r["context"].as_str().unwrap().to_owned();
    let q: serde_json::Value = old
        .get(format!(
            "{base}/doc/clip.mp4?uploadContext&context={ctx}&version=1.0"
        ))
        .header("x-nos-token", &t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(q["offset"], 200_000);
    let resp = old
        .post(format!(
            "{base}/doc/clip.mp4?offset=200000&complete=true&version=1.0&context={ctx}"
        ))
        .header("x-nos-token", &t)
        .body(body[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The LBS lists this node by https.
    let lbs: serde_json::Value = old
        .get(format!("{base}/lbs?version=1.0&bucketname=doc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        lbs["upload"][0].as_str().unwrap().starts_with("https://"),
        "{lbs}"
    );
    assert!(lbs["lbs"].as_str().unwrap().starts_with("https://"), "{lbs}");
    // Plain HTTP on the TLS port gets no answer.
    assert!(
        reqwest::get(format!("http://{addr}/healthz")).await.is_err(),
        "plain HTTP is not served"
    );
    let (der, _) = peer_cert(&old, &format!("{base}/healthz")).await.unwrap();
    assert_eq!(der, der1);

    // A broken pair is refused and the old one kept.
    std::fs::write(certs.path().join("key.pem"), "not a key").unwrap();
    assert!(tls.reload().is_err());
    let fresh = client(&cert1, addr);
    assert_eq!(
        peer_cert(&fresh, &format!("{base}/healthz")).await.unwrap().0,
        der1
    );

    // A new pair, SIGHUP: new connections get it; the listener and the
    // connections already open stay.
    let (cert2, key2, der2) = pair();
    write_pair(certs.path(), &cert2, &key2);
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let new = client(&cert2, addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match peer_cert(&new, &format!("{base}/healthz")).await {
            Ok((der, st)) => {
                assert_eq!(der, der2);
                assert_eq!(st, 200);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "the new certificate never served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client trusting only the old certificate cannot connect anew...
    let stale = client(&cert1, addr);
    assert!(stale.get(format!("{base}/healthz")).send().await.is_err());
    // ...while the connection it had open still serves.
    let (der, st) = peer_cert(&old, &format!("{base}/healthz")).await.unwrap();
    assert_eq!((der, st.as_u16()), (der1, 200));

    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn a_half_configured_or_unreadable_pair_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: tmp.path().to_path_buf(),
        credentials: vec![Credential {
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
        }],
        ..Default::default()
    };
    let half = ServerConfig {
        tls_cert: Some(tmp.path().join("cert.pem")),
        ..base.clone()
    };
    let e = App::build(half).await.err().expect("refused").to_string();
    assert!(e.contains("tls_cert and tls_key"), "{e}");
    let missing = ServerConfig {
        tls_cert: Some(tmp.path().join("cert.pem")),
        tls_key: Some(tmp.path().join("key.pem")),
        ..base.clone()
    };
    let e = App::build(missing).await.err().expect("refused").to_string();
    assert!(e.contains("cert.pem"), "{e}");
    // A key of another certificate.
    let (cert, _, _) = pair();
    let (_, other_key, _) = pair();
    write_pair(tmp.path(), &cert, &other_key);
    let mismatched = ServerConfig {
        tls_cert: Some(tmp.path().join("cert.pem")),
        tls_key: Some(tmp.path().join("key.pem")),
        ..base
    };
    let e = App::build(mismatched).await.err().expect("refused").to_string();
    assert!(e.contains("does not fit"), "{e}");
}
