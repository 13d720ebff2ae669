//! `upline-torture`: the crash loop from the command line (see
//! `scripts/crash-loop.sh`). Prints a summary and, with `--json`, the
//! report as one JSON line; exits 1 when any invariant was violated.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use upline_torture::{Backend, Config};

#[derive(Parser)]
#[command(
    name = "upline-torture",
    about = "Crash loop: SIGKILL rounds against upline serve"
)]
struct Args {
    /// The upline binary [default: `upline` next to this one].
    #[arg(long)]
    upline: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "embedded")]
    backend: Backend,
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Largest upload in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_size: u64,
    /// Distinct objects at most (then new uploads replace old ones).
    #[arg(long, default_value_t = 150)]
    max_objects: usize,
    /// Largest chunk in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_chunk: u64,
    /// Random seed [default: random].
    #[arg(long)]
    seed: Option<u64>,
    /// Shortest and longest round, in milliseconds (the kill comes then).
    #[arg(long, default_value_t = 300)]
    min_round_ms: u64,
    #[arg(long, default_value_t = 4000)]
    max_round_ms: u64,
    /// Where the data directory and the node's log go [default: a temp dir, removed after a clean run].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Print the report as JSON too.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bin = args.upline.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("upline")))
            .unwrap_or_else(|| PathBuf::from("upline"))
    });
    let temp = match &args.work_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().expect("a temp dir")),
    };
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| temp.as_ref().expect("temp").path().to_owned());
    let mut cfg = Config::quick(bin, args.backend, work_dir.clone());
    cfg.rounds = args.rounds;
    cfg.concurrency = args.concurrency;
    cfg.max_size = args.max_size;
    cfg.max_chunk = args.max_chunk;
    cfg.seed = args.seed.unwrap_or_else(rand::random);
    cfg.round_ms = (args.min_round_ms, args.max_round_ms.max(args.min_round_ms));
    cfg.reverify = 8;
    cfg.max_objects = args.max_objects;
    cfg.drain_timeout = Duration::from_secs(900);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = match runtime.block_on(upline_torture::run(cfg)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("upline-torture: error: {e:#} (work dir {})", work_dir.display());
            if let Some(t) = temp {
                let _ = t.keep();
            }
            return ExitCode::from(2);
        }
    };
    println!("{}", report.summary());
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("report serializes"));
    }
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        for v in &report.violations {
            println!("violation: {v}");
        }
        if let Some(t) = temp {
            println!("work dir kept: {}", t.keep().display());
        }
        ExitCode::FAILURE
    }
}
