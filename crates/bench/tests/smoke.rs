//! A seconds-long run of every scenario against a node in this process, so
//! the harness keeps compiling and working (the real runs: bench/run.sh).

use std::time::Duration;

use upline_bench::{Proto, Target};
use upline_server::testing::{ACCESS_KEY, SECRET_KEY, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_reports() {
    // The query scenario asks 20 times at once from one token and one IP:
    // more than the default rate limits allow (the benchmark measures the
    // query's latency, not the limiter).
    let srv = TestServer::start(|c| {
        c.query_rate_per_ip = 0;
        c.query_rate_per_token = 0;
    })
    .await;
    let t = Target {
        base: srv.base.clone(),
        proto: Proto::Upline {
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
        },
        pid: Some(std::process::id()),
    };
    let r = upline_bench::single(&t, 8 << 20, 1 << 20, false).await.unwrap();
    assert_eq!((r.bytes, r.requests, r.errors), (8 << 20, 8, 0));
    assert!(r.mib_per_s > 0.0 && r.p50_ms > 0.0 && r.p99_ms >= r.p50_ms && r.max_ms >= r.p99_ms);
    assert!(r.server_peak_rss_mib.unwrap() > 1.0 && r.server_cpu_s_per_gib.unwrap() >= 0.0);
    let r = upline_bench::single(&t, 3 << 20, 1 << 20, true).await.unwrap();
    assert_eq!((r.bytes, r.errors), (3 << 20, 0));
    let r = upline_bench::concurrent(&t, 8, 2 << 20, 512 << 10).await.unwrap();
    assert_eq!((r.bytes, r.requests, r.errors), (16 << 20, 32, 0));
    assert_eq!(
        srv.node.bytes_received() as u64,
        (8 << 20) + (3 << 20) + (16 << 20)
    );
    let r = upline_bench::lbs(&t, 4, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(r.requests > 10 && r.errors == 0, "{r:?}");
    let r = upline_bench::query(&t, 20).await.unwrap();
    assert_eq!((r.requests, r.errors), (20, 0));
}

/// The bare server stores exactly what a tus client sent: aligned blocks
/// through `O_DIRECT`, a short last chunk through the page cache, each at
/// its offset, with its default blocks and with upline's smallest. A
/// misplaced block or a dropped tail changes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_server_stores_every_byte_at_its_offset() {
    for block in [upline_bench::bare::BLOCK, 64 << 10] {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let cfg = upline_bench::bare::BareConfig {
            dir: dir.path().to_owned(),
            write: true,
            md5: true,
            block,
        };
        let server = tokio::spawn(upline_bench::bare::serve(cfg, listener));
        let t = Target {
            base,
            proto: Proto::Tus,
            pid: None,
        };
        // Chunks of 2.5 MiB + 12 KiB: blocks of either size split across
        // chunks, and a 1000-byte tail.
        let chunk = (5 << 20) / 2 + (12 << 10);
        let size = 3 * chunk as u64 + 1000;
        let sent = upline_bench::single(&t, size, chunk, false);
        let r = tokio::time::timeout(std::time::Duration::from_secs(60), sent)
            .await
            .expect("the upload finishes")
            .unwrap();
        assert_eq!((r.bytes, r.requests, r.errors), (size, 5, 0));
        let stored = std::fs::read(dir.path().join("0")).unwrap();
        let data = upline_bench::payload(chunk);
        let expected: Vec<u8> = data.iter().copied().cycle().take(size as usize).collect();
        assert_eq!(stored.len(), expected.len(), "block {block}");
        assert!(
            stored == expected,
            "stored bytes differ from the upload (block {block})"
        );
        server.abort();
    }
}
