//! The crash loop: rounds of concurrent uploads, each ended by a SIGKILL
//! of the node at a random moment (with Garage kills and database cuts in
//! between on S3 + PostgreSQL), a restart on the same data, and a check of
//! every invariant (see [`crate::check`]); then a drain that finishes every
//! upload and checks every object once more.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check;
use crate::node::{Backend, NodeProc, NodeSpec, Services};
use crate::report::Report;
use crate::upload::{Md5Mode, Upload, object_name};

/// What a run does.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `upline` binary.
    pub bin: PathBuf,
    pub backend: Backend,
    /// Data directory and node log go here.
    pub work_dir: PathBuf,
    pub rounds: usize,
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// Largest upload (sizes are drawn from 0 to this, mostly smaller).
    pub max_size: u64,
    /// Largest chunk.
    pub max_chunk: u64,
    pub seed: u64,
    /// The node is killed this long (ms, drawn uniformly) into a round.
    pub round_ms: (u64, u64),
    /// Chance per restart of one more kill while the node is starting.
    pub early_kill: f64,
    /// Chance that a new upload replaces an existing object.
    pub overwrite: f64,
    /// S3 + PostgreSQL: chances per round of a Garage kill and of a cut
    /// of the node's database connections.
    pub s3_kill: f64,
    pub db_cut: f64,
    /// Objects verified before re-verified at random each round.
    pub reverify: usize,
    /// Distinct object names at most: past it every new upload replaces an
    /// object (which bounds the disk a long run takes).
    pub max_objects: usize,
    /// How long the final drain may take.
    pub drain_timeout: Duration,
}

impl Config {
    /// A small run for CI.
    pub fn quick(bin: PathBuf, backend: Backend, work_dir: PathBuf) -> Self {
        Self {
            bin,
            backend,
            work_dir,
            rounds: 12,
            concurrency: 6,
            max_size: 16 << 20,
            max_chunk: 4 << 20,
            seed: rand::random(),
            round_ms: (150, 1500),
            early_kill: 0.15,
            overwrite: 0.1,
            s3_kill: 0.3,
            db_cut: 0.4,
            reverify: 3,
            max_objects: 60,
            drain_timeout: Duration::from_secs(180),
        }
    }
}

/// What the workers of one round share.
pub(crate) struct Pool {
    pub idle: VecDeque<Upload>,
    pub out: Vec<Upload>,
    /// Names with an upload in progress (no second upload of a name starts
    /// before the first is done, so the expected object is well defined).
    pub busy: HashSet<String>,
    /// Names whose last upload is done: candidates for an overwrite.
    pub done_names: Vec<String>,
    pub next_id: usize,
    pub allow_new: bool,
    /// Distinct object names so far.
    pub names: usize,
}

pub(crate) struct Shared {
    pub http: reqwest::Client,
    pub base: String,
    pub cfg: Config,
    pub stop: AtomicBool,
    pub pool: Mutex<Pool>,
    pub report: Mutex<Report>,
}

impl Shared {
    pub fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().expect("report")
    }

    fn take(&self, rng: &mut StdRng) -> Option<Upload> {
        let mut pool = self.pool.lock().expect("pool");
        if let Some(u) = pool.idle.pop_front() {
            return Some(u);
        }
        if !pool.allow_new {
            return None;
        }
        let id = pool.next_id;
        pool.next_id += 1;
        let full = pool.names >= self.cfg.max_objects;
        let overwrite = (full || rng.random_bool(self.cfg.overwrite)) && !pool.done_names.is_empty();
        if !overwrite {
            pool.names += 1;
        }
        let name = if overwrite {
            let i = rng.random_range(0..pool.done_names.len());
            pool.done_names.swap_remove(i)
        } else {
            object_name(id)
        };
        pool.busy.insert(name.clone());
        drop(pool);
        let max = self.cfg.max_size;
        let size = match rng.random_range(0..10) {
            0 => rng.random_range(0..=1024.min(max)),
            1..=4 => rng.random_range(0..=(1 << 20).min(max)),
            5..=7 => rng.random_range(0..=(max / 8).max(1)),
            _ => rng.random_range(0..=max),
        };
        let mode = match rng.random_range(0..4) {
            0 => Md5Mode::None,
            1 => Md5Mode::WholeOnEvery,
            2 => Md5Mode::EachChunk,
            _ => Md5Mode::WholeOnLast,
        };
        let mut r = self.report();
        r.uploads_started += 1;
        if overwrite {
            r.overwrites += 1;
        }
        Some(Upload::new(id, name, rng.random(), size, mode))
    }

    fn give_back(&self, u: Upload) {
        let mut pool = self.pool.lock().expect("pool");
        if u.done && u.confirmed {
            pool.busy.remove(&u.object);
            pool.done_names.push(u.object.clone());
        }
        pool.out.push(u);
    }
}

async fn worker(shared: Arc<Shared>, mut rng: StdRng) {
    while !shared.stop.load(Ordering::SeqCst) {
        let Some(mut up) = shared.take(&mut rng) else {
            return;
        };
        drive(&shared, &mut up, &mut rng).await;
        shared.give_back(up);
    }
}

/// Sends chunks of `up` until it is done or the round stops.
pub(crate) async fn drive(shared: &Shared, up: &mut Upload, rng: &mut StdRng) {
    let mut refusals = 0;
    loop {
        if shared.stop.load(Ordering::SeqCst) || (up.done && up.confirmed) {
            return;
        }
        let replay = up.done && !up.confirmed;
        let c = match (replay, up.last) {
            (true, Some(last)) => last,
            _ => up.next_chunk(rng, shared.cfg.max_chunk),
        };
        let first = up.ctx.is_none();
        let a = up.send(&shared.http, &shared.base, c).await;
        shared.report().chunks_sent += 1;
        match a.status {
            200 => {
                refusals = 0;
                if a.offset() != Some(c.end()) {
                    shared.report().violation(format!(
                        "upload {} ({}): 200 for chunk {c:?} says offset {:?}",
                        up.id,
                        up.object,
                        a.offset()
                    ));
                }
                match (&up.ctx, a.context()) {
                    (None, Some(ctx)) => up.ctx = Some(ctx.to_owned()),
                    (Some(mine), Some(theirs)) if mine == theirs => {}
                    (mine, theirs) => shared.report().violation(format!(
                        "upload {}: 200 with context {theirs:?}, expected {mine:?}",
                        up.id
                    )),
                }
                if replay {
                    up.confirmed = true;
                    shared.report().uploads_completed += 1;
                    continue;
                }
                up.acked = c.end();
                up.last = Some(c);
                up.pending = None;
                {
                    let mut r = shared.report();
                    r.chunks_acked += 1;
                    r.bytes_acked += c.len;
                    if c.complete {
                        up.done = true;
                        up.confirmed = true;
                        r.uploads_completed += 1;
                    }
                }
            }
            0 => {
                {
                    let mut r = shared.report();
                    r.answers_lost += 1;
                    if first {
                        // The session may exist, but nobody will ever know
                        // its context: start another one, as a client would.
                        r.first_chunks_unanswered += 1;
                    }
                }
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
            }
            500..=599 => {
                shared.report().answers_5xx += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
            }
            400 => {
                shared.report().answers_400 += 1;
                refusals += 1;
                if refusals > 200 {
                    shared.report().violation(format!(
                        "upload {} ({}): refused 200 times in a row, last: {}",
                        up.id,
                        up.object,
                        a.err_msg()
                    ));
                    return;
                }
                if first {
                    shared.report().violation(format!(
                        "upload {}: a first chunk refused: {}",
                        up.id,
                        a.err_msg()
                    ));
                    return;
                }
                resync(shared, up, &a).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
            }
            s => {
                shared.report().violation(format!(
                    "upload {} ({}): chunk {c:?} answered {s}: {}",
                    up.id, up.object, a.body
                ));
                return;
            }
        }
    }
}

/// After a 400: where does the node say the upload is? Only the pending
/// chunk having been committed (its answer lost) explains a move.
async fn resync(shared: &Shared, up: &mut Upload, refusal: &crate::upload::Answer) {
    let q = up.query(&shared.http, &shared.base).await;
    match (q.status, q.offset()) {
        (200, Some(at)) if at == up.acked => {}
        (200, Some(at)) if up.pending.is_some_and(|p| p.end() == at) => {
            let p = up.pending.take().expect("pending");
            up.acked = at;
            up.last = Some(p);
            if p.complete {
                up.done = true;
                up.confirmed = false;
            }
            let mut r = shared.report();
            r.chunks_acked += 1;
            r.bytes_acked += p.len;
        }
        (200, Some(at)) => shared.report().violation(format!(
            "upload {} ({}): after a 400 ({}), the resume point is {at}, acknowledged {} (pending {:?})",
            up.id,
            up.object,
            refusal.err_msg(),
            up.acked,
            up.pending
        )),
        (0 | 500..=599, _) => {}
        (s, _) => shared.report().violation(format!(
            "upload {} ({}): resume query answered {s}: {}",
            up.id, up.object, q.body
        )),
    }
}

/// Runs the crash loop.
pub async fn run(cfg: Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.work_dir)?;
    let data_dir = cfg.work_dir.join("data");
    let services = Services::start(cfg.backend, &data_dir).await?;
    let mut spec = NodeSpec {
        bin: cfg.bin.clone(),
        data_dir: data_dir.clone(),
        envs: services.node_envs(),
        log: cfg.work_dir.join("node.log"),
    };
    // One node at a time: no other node is about to name an upload, so
    // every restart's recovery aborts each unnamed one, and the checks
    // would catch an abort of an upload a session still needs.
    spec.set_env("UPLINE_ORPHAN_GRACE_SECS", "0");
    let stores = services.stores()?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut report = Report {
        backend: format!("{:?}", cfg.backend),
        seed: cfg.seed,
        ..Default::default()
    };
    let mut uploads: BTreeMap<usize, Upload> = BTreeMap::new();
    let mut next_id = 0usize;
    let mut node = start_node(&spec, &mut report)?;

    for round in 0..cfg.rounds {
        let shared = round_shared(&cfg, &http, &node, &mut uploads, next_id, true, report);
        let workers: Vec<_> = (0..cfg.concurrency)
            .map(|_| tokio::spawn(worker(shared.clone(), StdRng::seed_from_u64(rng.random()))))
            .collect();
        let length = Duration::from_millis(rng.random_range(cfg.round_ms.0..=cfg.round_ms.1));
        let faults = inject_faults(&services, &cfg, length, &mut rng, &shared).await;
        tokio::time::sleep(length.saturating_sub(faults)).await;
        shared.stop.store(true, Ordering::SeqCst);
        node.kill9();
        for w in workers {
            w.await?;
        }
        (report, next_id) = finish_round(shared, &mut uploads);
        report.node_kills += 1;
        report.rounds = round + 1;
        services.restart_s3().await?;
        if cfg.backend == Backend::S3Pg {
            // Each start picks an S3 layout for the sessions it starts and
            // carries on the others' in theirs: nodes set differently on
            // one bucket, one after the other.
            let layout = if rng.random_bool(0.5) { "parts" } else { "chunks" };
            spec.set_env("UPLINE_S3_LAYOUT", layout);
        }
        if rng.random_bool(cfg.early_kill) {
            spec.start_and_kill(Duration::from_millis(rng.random_range(0..60)))?;
            report.early_kills += 1;
        }
        node = start_node(&spec, &mut report)?;
        let shared = round_shared(&cfg, &http, &node, &mut uploads, next_id, false, report);
        check::after_restart(&shared, &stores, &mut rng).await;
        (report, next_id) = finish_round(shared, &mut uploads);
        eprintln!(
            "torture: round {} done: {} uploads ({} completed), {} violations",
            round + 1,
            report.uploads_started,
            report.uploads_completed,
            report.violations.len()
        );
        if report.violations.len() > 20 {
            break;
        }
    }

    // Drain: every upload finishes, with no more kills.
    let shared = round_shared(&cfg, &http, &node, &mut uploads, next_id, false, report);
    let workers: Vec<_> = (0..cfg.concurrency)
        .map(|_| tokio::spawn(worker(shared.clone(), StdRng::seed_from_u64(rng.random()))))
        .collect();
    let drained = tokio::time::timeout(cfg.drain_timeout, async {
        for w in workers {
            let _ = w.await;
        }
    })
    .await;
    if drained.is_err() {
        shared.stop.store(true, Ordering::SeqCst);
        shared.report().violation(format!(
            "the drain did not finish within {:?}: stuck sessions",
            cfg.drain_timeout
        ));
    }
    (report, next_id) = finish_round(shared, &mut uploads);
    for u in uploads.values().filter(|u| !(u.done && u.confirmed)) {
        report.violation(format!(
            "upload {} ({}) never finished: acked {} of {}, pending {:?}",
            u.id, u.object, u.acked, u.size, u.pending
        ));
    }
    // One last crash with nothing in flight, then everything is checked.
    node.kill9();
    report.node_kills += 1;
    let node = start_node(&spec, &mut report)?;
    let shared = round_shared(&cfg, &http, &node, &mut uploads, next_id, false, report);
    check::after_restart(&shared, &stores, &mut rng).await;
    check::verify_all(&shared).await;
    (report, _) = finish_round(shared, &mut uploads);
    node.kill9();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Starts the node and waits for its scrub of the published objects, so
/// that the checks see the stores as recovery and the scrub left them.
fn start_node(spec: &NodeSpec, report: &mut Report) -> anyhow::Result<NodeProc> {
    let node = spec.start(Duration::from_secs(60))?;
    if !node.wait_for("scrub of published objects", Duration::from_secs(120)) {
        report.violation("the scrub after start did not finish within 120 s");
    }
    report.publications_finished_at_start += node.count("finishing an interrupted publication") as u64;
    report.orphans_deleted_at_start += node.count("deleting staged bytes of no session") as u64;
    report.unreferenced_deleted_at_start += node.count("deleting published bytes no object points at") as u64;
    report.starts_in_parts_layout += node.count("S3 store open layout=Parts") as u64;
    report.starts_in_chunks_layout += node.count("S3 store open layout=Chunks") as u64;
    report.uploads_aborted_at_start += node.count("aborted a multipart upload no record names") as u64;
    for line in node.lines.lock().expect("log lines").iter() {
        if line.contains("quarantined") && !line.contains("scrub of published objects done")
            || line.contains("scrub of published objects failed")
            || line.contains("missing from storage")
        {
            report.violation(format!("at start: {line}"));
        }
    }
    Ok(node)
}

/// Shares the uploads of the run with the workers of one round: the
/// unfinished ones first in line, the finished ones kept for checks.
fn round_shared(
    cfg: &Config,
    http: &reqwest::Client,
    node: &NodeProc,
    uploads: &mut BTreeMap<usize, Upload>,
    next_id: usize,
    allow_new: bool,
    report: Report,
) -> Arc<Shared> {
    let mut idle = VecDeque::new();
    let mut out = Vec::new();
    let mut busy = HashSet::new();
    let mut done_names = Vec::new();
    let mut latest: BTreeMap<String, usize> = BTreeMap::new();
    let names = uploads.values().map(|u| &u.object).collect::<HashSet<_>>().len();
    for (_, u) in std::mem::take(uploads) {
        latest.insert(u.object.clone(), u.id);
        if u.done && u.confirmed {
            out.push(u);
        } else {
            busy.insert(u.object.clone());
            idle.push_back(u);
        }
    }
    for (name, _) in latest {
        if !busy.contains(&name) {
            done_names.push(name);
        }
    }
    Arc::new(Shared {
        http: http.clone(),
        base: node.base.clone(),
        cfg: cfg.clone(),
        stop: AtomicBool::new(false),
        pool: Mutex::new(Pool {
            idle,
            out,
            busy,
            done_names,
            next_id,
            allow_new,
            names,
        }),
        report: Mutex::new(report),
    })
}

fn finish_round(shared: Arc<Shared>, uploads: &mut BTreeMap<usize, Upload>) -> (Report, usize) {
    let shared = match Arc::try_unwrap(shared) {
        Ok(s) => s,
        Err(_) => panic!("a worker outlived its round"),
    };
    let pool = shared.pool.into_inner().expect("pool");
    for u in pool.idle.into_iter().chain(pool.out) {
        uploads.insert(u.id, u);
    }
    (shared.report.into_inner().expect("report"), pool.next_id)
}

/// S3 + PostgreSQL: at random moments of the round, Garage is killed (and
/// restarted a little later) and the node's database connections are cut.
/// Returns how much of the round it waited.
async fn inject_faults(
    services: &Services,
    cfg: &Config,
    length: Duration,
    rng: &mut StdRng,
    shared: &Shared,
) -> Duration {
    if services.backend != Backend::S3Pg {
        return Duration::ZERO;
    }
    let mut waited = Duration::ZERO;
    let mut events: Vec<(Duration, u8)> = Vec::new();
    if rng.random_bool(cfg.db_cut) {
        events.push((length.mul_f64(rng.random_range(0.0..0.9)), 0));
    }
    if rng.random_bool(cfg.s3_kill) {
        events.push((length.mul_f64(rng.random_range(0.0..0.6)), 1));
    }
    events.sort();
    for (at, what) in events {
        if at > waited {
            tokio::time::sleep(at - waited).await;
            waited = at;
        }
        if what == 0 {
            match services.cut_database().await {
                Ok(n) => {
                    let mut r = shared.report();
                    r.db_cuts += 1;
                    r.db_connections_cut += n;
                }
                Err(e) => eprintln!("torture: could not cut the database connections: {e}"),
            }
        } else {
            services.kill_s3().await;
            shared.report().s3_kills += 1;
            let down = Duration::from_millis(rng.random_range(100..1500));
            tokio::time::sleep(down).await;
            waited += down;
            if let Err(e) = services.restart_s3().await {
                shared
                    .report()
                    .violation(format!("garage did not come back: {e}"));
            }
        }
    }
    waited
}
