//! How long one durable offset advance takes on the embedded store: the
//! part of every chunk's latency that is the state commit.
//!
//! `cargo run --release -p upline-state --example advance_latency -- [DIR] [N] [GAP_US]`
//! (DIR defaults to a temporary directory under `/var/tmp`, on the disk;
//! GAP_US, a pause between advances standing for a chunk's transfer, 0).

use std::time::Instant;

use upline_state::{Advance, EmbeddedStore, SessionStore, Start};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "/var/tmp".into());
    let n: usize = args.next().map(|s| s.parse().expect("N")).unwrap_or(3000);
    let gap = std::time::Duration::from_micros(args.next().map(|s| s.parse().expect("GAP_US")).unwrap_or(0));
    let tmp = tempfile::tempdir_in(dir).expect("temporary directory");
    let store = EmbeddedStore::open(tmp.path().join("state.db")).expect("open");
    let advance = |start, now| Advance {
        start,
        chunk_len: 4 << 20,
        md5_claim: None,
        complete: None,
        now,
        lease: None,
    };
    let new = Start::New {
        bucket: "b".into(),
        object: "o".into(),
        content_type: String::new(),
        tag: None,
    };
    store.advance("ctx", advance(new, 0)).await.expect("first");
    let mut offset = 4u64 << 20;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let t = Instant::now();
        let a = store
            .advance("ctx", advance(Start::At(offset), i as i64))
            .await
            .expect("advance");
        took.push(t.elapsed());
        offset = a.session.offset;
    }
    took.sort();
    let at = |q: f64| took[((n as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
    let mean = took.iter().map(|d| d.as_secs_f64()).sum::<f64>() / n as f64 * 1e3;
    println!(
        "{n} advances: mean {mean:.3} ms, p50 {:.3}, p90 {:.3}, p99 {:.3}, max {:.3}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}
