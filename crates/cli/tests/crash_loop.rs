//! The crash loop, bounded for CI: the real `upline serve` under concurrent
//! uploads, SIGKILLed at random moments and restarted on the same data,
//! with every invariant checked after each restart (see `upline-torture`).
//! `scripts/crash-loop.sh` runs the long version; RELIABILITY.md has its
//! figures. A failure prints the seed: `upline-torture --seed N` replays
//! the same choices (the kill moments fall where the timing puts them).

use std::path::PathBuf;
use std::time::Duration;

use upline_torture::{Backend, Config};

fn config(backend: Backend, dir: &std::path::Path) -> Config {
    let mut cfg = Config::quick(
        PathBuf::from(env!("CARGO_BIN_EXE_upline")),
        backend,
        dir.to_path_buf(),
    );
    if let Some(seed) = std::env::var("UPLINE_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        cfg.seed = seed;
    }
    cfg
}

async fn run(cfg: Config, dir: tempfile::TempDir) {
    let report = upline_torture::run(cfg).await.expect("the crash loop runs");
    eprintln!("{}", report.summary());
    // Kept for a look at the node's log when something was found.
    let dir = if report.violations.is_empty() {
        dir.path().to_owned()
    } else {
        dir.keep()
    };
    assert!(
        report.violations.is_empty(),
        "seed {}: {} violations (node log in {}):\n{}",
        report.seed,
        report.violations.len(),
        dir.display(),
        report.violations.join("\n")
    );
    assert!(
        report.node_kills as usize > report.rounds,
        "every round ended in a kill"
    );
    assert!(
        report.uploads_completed > 0 && report.bytes_verified > 0,
        "work was done and checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Embedded, dir.path());
    cfg.rounds = 15;
    run(cfg, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_s3_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::S3Pg, dir.path());
    cfg.rounds = 10;
    cfg.drain_timeout = Duration::from_secs(240);
    run(cfg, dir).await;
}
