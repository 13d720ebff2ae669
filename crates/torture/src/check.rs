//! The invariants checked after every restart:
//!
//! 1. every acknowledged offset is still there: the resume point of each
//!    session is the acknowledged offset, or that plus the one chunk that
//!    was in flight without an answer (committed before the kill);
//! 2. nothing leaks: every staged blob belongs to an open session, every
//!    published blob to an object record (checked in the stores themselves,
//!    right after recovery and before any new request);
//! 3. every session continues: the next chunk of each open session is
//!    accepted at once (no lock or lease left behind by the dead node), and
//!    a final chunk committed without an answer is confirmed by its replay;
//! 4. every completed object is byte-exact: downloaded and compared with
//!    the pattern, ETag with the MD5 (new ones, and old ones at random).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::node::{Stores, open_state};
use crate::run::Shared;
use crate::upload::Upload;

/// Requests the checker keeps in flight at once.
const PARALLEL: usize = 8;

fn take_all(shared: &Shared) -> Vec<Upload> {
    let mut pool = shared.pool.lock().expect("pool");
    let mut all: Vec<Upload> = pool.idle.drain(..).collect();
    all.append(&mut pool.out);
    all
}

fn put_back(shared: &Shared, all: Vec<Upload>) {
    let mut pool = shared.pool.lock().expect("pool");
    for u in all {
        if u.done && u.confirmed {
            pool.out.push(u);
        } else {
            pool.idle.push_back(u);
        }
    }
}

/// Checks 1–4 on a node that has just restarted.
pub(crate) async fn after_restart(shared: &Shared, stores: &Stores, rng: &mut StdRng) {
    let all = take_all(shared);
    // Finished uploads whose object a later upload replaced: their
    // sessions were checked when they finished.
    let latest = expected(&all);
    let superseded: HashSet<usize> = all
        .iter()
        .filter(|u| u.done && u.confirmed && latest.get(&u.object).is_some_and(|&id| id != u.id))
        .map(|u| u.id)
        .collect();
    let all = resume_points(shared, all, &superseded).await;
    leaks(shared, stores).await;
    let seeds: Vec<u64> = (0..all.len()).map(|_| rng.random()).collect();
    let mut all = futures_util::stream::iter(all.into_iter().zip(seeds))
        .map(|(u, seed)| continue_session(shared, u, seed))
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
    all.sort_by_key(|u| u.id);
    let all = verify(shared, all, rng).await;
    put_back(shared, all);
}

async fn resume_points(shared: &Shared, all: Vec<Upload>, superseded: &HashSet<usize>) -> Vec<Upload> {
    futures_util::stream::iter(all)
        .map(|mut u| async move {
            if u.ctx.is_none() || (u.done && u.confirmed && (u.verified || superseded.contains(&u.id))) {
                return u;
            }
            let a = u.query(&shared.http, &shared.base).await;
            let mut r = shared.report();
            r.sessions_checked += 1;
            let pending = u.pending.filter(|p| p.offset == u.acked);
            match (a.status, a.offset()) {
                (200, Some(q)) if q == u.acked => {
                    if pending.is_some() {
                        r.in_flight_not_committed += 1;
                    }
                    if u.done && q != u.size {
                        r.violation(format!(
                            "upload {} ({}): complete at {} but the resume point is {q}",
                            u.id, u.object, u.size
                        ));
                    }
                }
                (200, Some(q)) if pending.is_some_and(|p| p.end() == q) => {
                    let p = pending.expect("pending");
                    r.in_flight_committed += 1;
                    r.chunks_acked += 1;
                    r.bytes_acked += p.len;
                    u.acked = q;
                    u.last = Some(p);
                    u.pending = None;
                    if p.complete {
                        u.done = true;
                        u.confirmed = false;
                    }
                }
                (200, Some(q)) => r.violation(format!(
                    "upload {} ({}): resume point {q} after a restart, acknowledged {} (in flight: {:?}){}",
                    u.id,
                    u.object,
                    u.acked,
                    u.pending,
                    if q < u.acked {
                        ": ACKNOWLEDGED BYTES LOST"
                    } else {
                        ""
                    }
                )),
                (404, _) => r.violation(format!(
                    "upload {} ({}): session lost after a restart (404) with {} bytes acknowledged",
                    u.id, u.object, u.acked
                )),
                (s, _) => r.violation(format!(
                    "upload {} ({}): resume query answered {s}: {}",
                    u.id, u.object, a.body
                )),
            }
            u
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await
}

/// Sends the next chunk of an open session (or replays the final chunk of
/// one the query showed complete) until it is accepted; a session that
/// cannot move within the deadline is stuck.
async fn continue_session(shared: &Shared, mut u: Upload, seed: u64) -> Upload {
    use rand::SeedableRng;
    let Some(ctx) = u.ctx.clone() else { return u };
    if u.done && u.confirmed {
        return u;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let replay = u.done;
        let c = match (replay, u.last) {
            (true, Some(l)) => l,
            _ => u.next_chunk(&mut rng, shared.cfg.max_chunk),
        };
        let a = u.send(&shared.http, &shared.base, c).await;
        shared.report().chunks_sent += 1;
        if a.status == 200 && a.offset() == Some(c.end()) && a.context() == Some(ctx.as_str()) {
            let mut r = shared.report();
            r.sessions_continued += 1;
            if replay {
                u.confirmed = true;
                r.uploads_completed += 1;
            } else {
                u.acked = c.end();
                u.last = Some(c);
                u.pending = None;
                r.chunks_acked += 1;
                r.bytes_acked += c.len;
                if c.complete {
                    u.done = true;
                    u.confirmed = true;
                    r.uploads_completed += 1;
                }
            }
            return u;
        }
        last = format!("{} {}", a.status, a.body);
        match a.status {
            0 => shared.report().answers_lost += 1,
            500..=599 => shared.report().answers_5xx += 1,
            400 => shared.report().answers_400 += 1,
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.report().violation(format!(
        "upload {} ({}): stuck after a restart: its next chunk at {} was not accepted (last answer: {last})",
        u.id, u.object, u.acked
    ));
    u
}

/// The upload whose bytes each name must hold now: the latest finished
/// one, for names with no upload in progress.
fn expected(all: &[Upload]) -> BTreeMap<String, usize> {
    let busy: HashSet<&str> = all
        .iter()
        .filter(|u| !(u.done && u.confirmed))
        .map(|u| u.object.as_str())
        .collect();
    let mut latest = BTreeMap::new();
    for u in all
        .iter()
        .filter(|u| u.done && u.confirmed && !busy.contains(u.object.as_str()))
    {
        let e = latest.entry(u.object.clone()).or_insert(u.id);
        *e = (*e).max(u.id);
    }
    latest
}

async fn verify(shared: &Shared, all: Vec<Upload>, rng: &mut StdRng) -> Vec<Upload> {
    let latest = expected(&all);
    let mut old: Vec<usize> = all
        .iter()
        .filter(|u| u.verified && latest.get(&u.object) == Some(&u.id))
        .map(|u| u.id)
        .collect();
    old.shuffle(rng);
    old.truncate(shared.cfg.reverify);
    let again: HashSet<usize> = old.into_iter().collect();
    check_objects(shared, all, |u| {
        latest.get(&u.object) == Some(&u.id) && (!u.verified || again.contains(&u.id))
    })
    .await
}

/// Downloads and compares every object (the end of a run).
pub(crate) async fn verify_all(shared: &Shared) {
    let all = take_all(shared);
    let latest = expected(&all);
    let all = check_objects(shared, all, |u| latest.get(&u.object) == Some(&u.id)).await;
    put_back(shared, all);
}

async fn check_objects(shared: &Shared, all: Vec<Upload>, pick: impl Fn(&Upload) -> bool) -> Vec<Upload> {
    let (todo, mut rest): (Vec<Upload>, Vec<Upload>) = all.into_iter().partition(|u| pick(u));
    let checked: Vec<Upload> = futures_util::stream::iter(todo)
        .map(|mut u| async move {
            match u.verify(&shared.http, &shared.base).await {
                Ok(n) => {
                    u.verified = true;
                    let mut r = shared.report();
                    r.objects_verified += 1;
                    r.bytes_verified += n;
                }
                Err((status, msg)) => shared.report().violation(format!(
                    "object {} (upload {}, {} bytes): {msg} (status {status})",
                    u.object, u.id, u.size
                )),
            }
            u
        })
        .buffer_unordered(4)
        .collect()
        .await;
    rest.extend(checked);
    rest.sort_by_key(|u| u.id);
    rest
}

/// Every staged blob belongs to an open session, every published blob to
/// an object record.
async fn leaks(shared: &Shared, stores: &Stores) {
    let state = match open_state(stores).await {
        Ok(s) => s,
        Err(e) => {
            shared
                .report()
                .violation(format!("cannot open the session store: {e}"));
            return;
        }
    };
    let (staged, published) = match list_blobs(stores).await {
        Ok(x) => x,
        Err(e) => {
            shared.report().violation(format!("cannot list the blobs: {e}"));
            return;
        }
    };
    let records = match state.list_objects(None, usize::MAX >> 1).await {
        Ok(r) => r,
        Err(e) => {
            shared.report().violation(format!("cannot list the objects: {e}"));
            return;
        }
    };
    let referenced: HashSet<String> = records.into_iter().map(|r| r.blob).collect();
    for id in &staged {
        match state.get(id).await {
            Ok(Some(s)) if s.completed_at.is_none() => {}
            Ok(Some(_)) => shared
                .report()
                .violation(format!("staged blob {id} belongs to a completed session")),
            Ok(None) => shared
                .report()
                .violation(format!("staged blob {id} belongs to no session (leaked)")),
            Err(e) => shared.report().violation(format!("session store: {e}")),
        }
    }
    for id in &published {
        if !referenced.contains(id) {
            shared
                .report()
                .violation(format!("published blob {id} belongs to no object (leaked)"));
        }
    }
    shared.report().stored_items_checked += (staged.len() + published.len()) as u64;
}

/// The staged and the published blob ids, from the store itself.
async fn list_blobs(stores: &Stores) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    match stores {
        Stores::Fs { root, .. } => {
            let names = |dir: std::path::PathBuf| -> anyhow::Result<Vec<(String, bool)>> {
                let mut out = Vec::new();
                if dir.exists() {
                    for e in std::fs::read_dir(&dir)? {
                        let e = e?;
                        out.push((
                            e.file_name().to_string_lossy().into_owned(),
                            e.file_type()?.is_dir(),
                        ));
                    }
                }
                Ok(out)
            };
            let staged = names(root.join("staging"))?.into_iter().map(|(n, _)| n).collect();
            let mut published = Vec::new();
            for (shard, is_dir) in names(root.join("objects"))? {
                if !is_dir {
                    published.push(shard);
                    continue;
                }
                published.extend(
                    names(root.join("objects").join(&shard))?
                        .into_iter()
                        .map(|(n, _)| n),
                );
            }
            Ok((staged, published))
        }
        Stores::S3Pg { s3, .. } => {
            use object_store::ObjectStore;
            use object_store::path::Path;
            let listing = s3.list_with_delimiter(Some(&Path::from("staging"))).await?;
            let staged = listing
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_owned))
                .collect();
            let mut published = Vec::new();
            let mut objects = s3.list(Some(&Path::from("blobs")));
            while let Some(meta) = objects.next().await {
                let meta = meta?;
                published.push(meta.location.filename().unwrap_or_default().to_owned());
            }
            Ok((staged, published))
        }
    }
}
