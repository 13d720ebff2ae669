//! Three upline nodes on Garage (S3) and PostgreSQL: chunks go to the nodes
//! in turn, one node is killed mid-upload and the client carries on through
//! the LBS, two nodes race on one session, and the object is read back
//! through a node that never saw a chunk.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use upline_state::testing::fresh_database;
use upline_storage::testing::Garage;

const CHUNK: usize = 4 << 20;

async fn lbs(http: &reqwest::Client, node: &str) -> Vec<String> {
    let r: serde_json::Value = http
        .get(format!("{node}/lbs?version=1.0&bucketname=doc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["upload"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_garage_and_postgres() {
    let garage = Garage::start();
    let s3 = garage.bucket("media");
    let pg = fresh_database().await;
    let storage = format!("s3://media?endpoint={}&region=garage", s3.endpoint.unwrap());
    let master = "ab".repeat(32);
    let envs = [
        ("UPLINE_ACCESS_KEY", AK),
        ("UPLINE_SECRET_KEY", SK),
        ("AWS_ACCESS_KEY_ID", garage.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret_key.as_str()),
        ("UPLINE_MASTER_KEY", master.as_str()),
        ("UPLINE_HEARTBEAT_MS", "200"),
        ("UPLINE_NODE_TTL_MS", "1500"),
        ("UPLINE_STATE", pg.as_str()),
        ("UPLINE_STORAGE", storage.as_str()),
    ];
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Proc> = (0..3).map(|i| Proc::serve(dirs[i].path(), &[], &envs)).collect();
    let http = reqwest::Client::new();
    let all: BTreeSet<String> = nodes.iter().map(Proc::base).collect();
    let started = Instant::now();
    while lbs(&http, &nodes[0].base())
        .await
        .into_iter()
        .collect::<BTreeSet<_>>()
        != all
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the LBS never listed all three nodes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An LBS-only process lists the same nodes and serves nothing else.
    let lbs_dir = tempfile::tempdir().unwrap();
    let lbs_only = Proc::serve(lbs_dir.path(), &["--role", "lbs"], &envs);
    assert_eq!(
        lbs(&http, &lbs_only.base())
            .await
            .into_iter()
            .collect::<BTreeSet<_>>(),
        all
    );
    let refused = post(&http, &lbs_only.base(), &token("x"), 0, true, None, b"x".to_vec()).await;
    assert_eq!(refused.0, 404, "an LBS takes no uploads");

    let t = token("film.mp4");
    let mut want = data(100 << 20, 21);
    let (mut offset, mut ctx, mut turn) = (0usize, None::<String>, 0usize);
    let mut live = lbs(&http, &nodes[0].base()).await;
    live.dedup();
    let mut killed: Option<String> = None;
    while offset < want.len() {
        let end = (offset + CHUNK).min(want.len());
        let complete = end == want.len();
        if offset == 8 * CHUNK && killed.is_none() {
            let victim = nodes.remove(2);
            killed = Some(victim.base());
            victim.kill9();
        }
        if offset == 14 * CHUNK {
            // Two nodes race on the session with different bytes.
            let alt = data(CHUNK, 99);
            let (a, b) = (nodes[0].base(), nodes[1].base());
            let (ra, rb) = tokio::join!(
                post(
                    &http,
                    &a,
                    &t,
                    offset as u64,
                    false,
                    ctx.as_deref(),
                    want[offset..end].to_vec()
                ),
                post(&http, &b, &t, offset as u64, false, ctx.as_deref(), alt.clone()),
            );
            let (sa, sb) = (ra.0, rb.0);
            let mut statuses = [sa, sb];
            statuses.sort();
            assert_eq!(statuses, [200, 400], "exactly one racer wins");
            if sb == 200 {
                want[offset..end].copy_from_slice(&alt);
            }
            offset = end;
            continue;
        }
        let node = live[turn % live.len()].clone();
        turn += 1;
        match post(
            &http,
            &node,
            &t,
            offset as u64,
            complete,
            ctx.as_deref(),
            want[offset..end].to_vec(),
        )
        .await
        {
            (200, b) => {
                assert_eq!(b["offset"], end as u64, "{b}");
                ctx = Some(b["context"].as_str().unwrap().to_owned());
                offset = end;
            }
            failure => {
                // The node is gone: back to the LBS (of a live node) until
                // it no longer lists the dead one; the chunk is sent again.
                assert_eq!(
                    Some(&node),
                    killed.as_ref(),
                    "only the killed node fails: {failure:?}"
                );
                let started = Instant::now();
                loop {
                    live = lbs(&http, &nodes[0].base()).await;
                    if !live.contains(&node) {
                        break;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "the LBS still lists the killed node"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                live.dedup();
            }
        }
    }
    assert!(killed.is_some());
    assert!(
        !lbs(&http, &nodes[1].base())
            .await
            .contains(killed.as_ref().unwrap())
    );

    // A node that never saw a chunk serves the object, byte-exact.
    let fresh = Proc::serve(dirs[3].path(), &[], &envs);
    let got = http
        .get(format!("{}/doc/film.mp4", fresh.base()))
        .header("x-nos-token", &t)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), want.len());
    let first_diff = got.iter().zip(want.iter()).position(|(a, b)| a != b);
    if let Some(d) = first_diff {
        let last_diff = got.iter().zip(want.iter()).rposition(|(a, b)| a != b).unwrap();
        let alt = data(CHUNK, 99);
        let orig = data(100 << 20, 21);
        eprintln!(
            "diff {d}..={last_diff}; got==alt {} got==orig {} zeros {}",
            got[d..d + 16] == alt[..16],
            got[d..d + 16] == orig[d..d + 16],
            got[d..d + 16].iter().all(|b| *b == 0)
        );
    }
    assert!(
        got == want,
        "the object read through a fresh node is byte-exact; first difference at {first_diff:?}"
    );
    for n in nodes {
        n.kill9();
    }
    fresh.kill9();
    lbs_only.kill9();
}
