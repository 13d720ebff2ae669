//! `upline upload`: resumable uploads of one or more files, with progress
//! bars, JSON results and exit codes a script can rely on.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use upline_client::{ChunkPolicy, Event, Uploader};

use crate::settings::{self, CommonArgs};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("discovery").required(true).args(["lbs", "node"])))]
pub struct UploadArgs {
    /// Files to upload; each gets its own session.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// LBS endpoint to discover upload nodes, e.g. http://127.0.0.1:8080/lbs.
    #[arg(long)]
    lbs: Option<String>,
    /// Upload node to use instead of an LBS (repeat for failover order).
    #[arg(long)]
    node: Vec<String>,
    /// Bucket [default: the configured default_bucket, "uploads"].
    #[arg(long)]
    bucket: Option<String>,
    /// Object name [default: the file name]; only with a single file.
    #[arg(long)]
    object: Option<String>,
    /// Upload token; without it one is signed per file with the
    /// credentials (UPLINE_ACCESS_KEY/UPLINE_SECRET_KEY or the data dir's).
    #[arg(long)]
    token: Option<String>,
    /// Files uploaded at once.
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// Fixed chunk size (e.g. 1MiB, 512k; at most 4MiB) [default: adaptive].
    #[arg(long, value_parser = chunk_size)]
    chunk_size: Option<u64>,
    /// One JSON result line per file on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    common: CommonArgs,
}

fn chunk_size(s: &str) -> Result<u64, String> {
    let n = parse_size::parse_size(s).map_err(|e| e.to_string())?;
    if n == 0 || n > upline_proto::MAX_CHUNK {
        return Err(format!("must be between 1 byte and 4MiB, got {n} bytes"));
    }
    Ok(n)
}

#[derive(serde::Serialize)]
struct JsonResult<'a> {
    file: &'a Path,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    md5: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(args: UploadArgs) -> anyhow::Result<ExitCode> {
    if args.object.is_some() && args.files.len() > 1 {
        use clap::CommandFactory;
        crate::Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--object names one file; give a single FILE with it",
            )
            .exit();
    }
    let mut cfg = settings::load(&args.common, &crate::NoFlags {})?;
    let bucket = args.bucket.clone().unwrap_or_else(|| cfg.default_bucket.clone());
    upline_proto::Bucket::parse(&bucket).with_context(|| format!("bucket {bucket:?}"))?;
    let mut builder = Uploader::builder();
    builder = match (&args.lbs, &args.token) {
        (Some(lbs), _) => builder.lbs(lbs.clone()),
        (None, _) => builder.nodes(args.node.clone()),
    };
    builder = match &args.token {
        Some(t) => builder.token(t.clone()),
        None => {
            settings::resolve_credentials(&mut cfg, false)?;
            let c = &cfg.credentials[0];
            builder.credentials(c.access_key.clone(), c.secret_key.clone())
        }
    };
    if let Some(n) = args.chunk_size {
        builder = builder.chunk_policy(ChunkPolicy::Fixed(n));
    }
    let display = Display::new(args.quiet, &args.files);
    let sink = display.clone();
    let uploader = builder.on_event(move |e| sink.event(e)).build()?;

    let runtime = tokio::runtime::Runtime::new()?;
    let results = runtime.block_on(async {
        futures_util::stream::iter(args.files.iter())
            .map(|file| {
                let uploader = uploader.clone();
                let object = match &args.object {
                    Some(o) => o.clone(),
                    None => file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                };
                let bucket = bucket.clone();
                async move { (file, uploader.upload_file(file, &bucket, &object).await) }
            })
            .buffer_unordered(args.jobs as usize)
            .collect::<Vec<_>>()
            .await
    });
    display.finish();

    let mut failed = 0;
    for (file, result) in &results {
        let line = match result {
            Ok(done) => {
                if !args.json && !args.quiet {
                    let rate = done.size as f64 / done.seconds.max(1e-9) / (1 << 20) as f64;
                    eprintln!(
                        "upline: {} -> {}/{} ({} bytes, md5 {}, {:.1}s, {rate:.1} MiB/s{})",
                        file.display(),
                        done.bucket,
                        done.object,
                        done.size,
                        done.md5,
                        done.seconds,
                        if done.resumed_from > 0 {
                            format!(", resumed at {}", done.resumed_from)
                        } else {
                            String::new()
                        },
                    );
                }
                JsonResult {
                    file,
                    ok: true,
                    bucket: Some(&done.bucket),
                    object: Some(&done.object),
                    size: Some(done.size),
                    md5: Some(&done.md5),
                    context: Some(&done.context),
                    seconds: Some(done.seconds),
                    error: None,
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("upline: error: {}: {e}", file.display());
                JsonResult {
                    file,
                    ok: false,
                    bucket: None,
                    object: None,
                    size: None,
                    md5: None,
                    context: None,
                    seconds: None,
                    error: Some(e.to_string()),
                }
            }
        };
        if args.json {
            println!("{}", serde_json::to_string(&line)?);
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Progress bars (one per file and a total), or plain warnings on stderr
/// when bars are hidden (`--quiet`, or stderr is not a terminal).
#[derive(Clone)]
struct Display {
    multi: MultiProgress,
    shown: bool,
    total: ProgressBar,
    bars: Arc<Mutex<HashMap<PathBuf, (ProgressBar, u64)>>>,
}

impl Display {
    fn new(quiet: bool, files: &[PathBuf]) -> Self {
        let shown = !quiet && std::io::stderr().is_terminal();
        let target = if shown {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let bytes: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        let total = multi.add(ProgressBar::new(bytes));
        total.set_style(style(
            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ));
        total.set_prefix(format!("{} files", files.len()));
        Self {
            multi,
            shown,
            total,
            bars: Arc::default(),
        }
    }

    fn event(&self, e: &Event) {
        let mut bars = self.bars.lock().expect("bars poisoned");
        match e {
            Event::Started {
                path,
                object,
                size,
                resumed_from,
            } => {
                let bar = self.multi.insert_before(&self.total, ProgressBar::new(*size));
                bar.set_style(style(
                    "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                ));
                bar.set_prefix(short(object));
                bar.set_position(*resumed_from);
                self.total.inc(*resumed_from);
                bars.insert(path.clone(), (bar, *resumed_from));
            }
            Event::Progress { path, acked, .. } => {
                if let Some((bar, last)) = bars.get_mut(path) {
                    bar.set_position(*acked);
                    self.total.inc(acked.saturating_sub(*last));
                    *last = *acked;
                }
            }
            Event::Warning { path, message } => self.say(&format!("warning: {}: {message}", path.display())),
            Event::Retry {
                path,
                attempt,
                reason,
            } => {
                if *attempt > 2 {
                    self.say(&format!(
                        "retrying {} (attempt {attempt}): {reason}",
                        path.display()
                    ));
                }
            }
        }
    }

    fn say(&self, line: &str) {
        if self.shown {
            let _ = self.multi.println(format!("upline: {line}"));
        } else {
            eprintln!("upline: {line}");
        }
    }

    fn finish(&self) {
        for (bar, _) in self.bars.lock().expect("bars poisoned").values() {
            bar.finish();
        }
        self.total.finish();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

fn short(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= 12 {
        name.to_owned()
    } else {
        chars[chars.len() - 12..].iter().collect()
    }
}
