//! `upline-bench`: load against an upline node or a tus 1.0 server; one
//! JSON report line per scenario on stdout.

use std::time::Duration;

use clap::{Parser, Subcommand};
use upline_bench::{Proto, Target};

#[derive(Parser)]
#[command(name = "upline-bench", about = "Load generator for upline and tus servers")]
struct Cli {
    /// Base URL of the server (http://127.0.0.1:8080); for s3-plain, the
    /// S3 endpoint.
    #[arg(long, default_value = "")]
    url: String,
    /// upline or tus.
    #[arg(long, default_value = "upline", value_parser = ["upline", "tus"])]
    proto: String,
    /// The server's process id, for its RSS and CPU figures.
    #[arg(long)]
    pid: Option<u32>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// One upload over one keep-alive connection.
    Single {
        #[arg(long, default_value = "1GiB", value_parser = size)]
        size: u64,
        #[arg(long, default_value = "4MiB", value_parser = size)]
        chunk: u64,
        /// Send each chunk's Content-MD5.
        #[arg(long)]
        md5: bool,
    },
    /// Many uploads at once.
    Concurrent {
        #[arg(long, default_value_t = 256)]
        uploads: usize,
        #[arg(long, default_value = "16MiB", value_parser = size)]
        size: u64,
        #[arg(long, default_value = "1MiB", value_parser = size)]
        chunk: u64,
    },
    /// GET /lbs from many connections.
    Lbs {
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Resume-point queries of one session.
    Query {
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// A plain S3 multipart upload to `--url` (credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), the S3 backend's baseline.
    S3Plain {
        #[arg(long)]
        bucket: String,
        #[arg(long, default_value = "1GiB", value_parser = size)]
        size: u64,
        #[arg(long, default_value = "8MiB", value_parser = size)]
        part_size: u64,
    },
    /// One core's speed of the MD5 the node uses (fast-md5), in
    /// 4 MiB updates, best of five: the ceiling of uploads with Content-MD5.
    Md5Speed,
    /// Serves the least durable tus server (`bare`) on a free port, printed
    /// first: the stop-and-wait limit that upline is measured against.
    BareServer {
        /// Where the uploaded files go.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Receive and drop the bytes: the loopback and HTTP limit alone.
        #[arg(long)]
        no_write: bool,
        /// Hash every body with MD5 on its own thread, as upline does for
        /// Content-MD5.
        #[arg(long)]
        md5: bool,
        /// Bytes per direct write: 64KiB is what upline's blocks shrink to
        /// with 256 uploads at once (its memory budget).
        #[arg(long, default_value = "1MiB", value_parser = size)]
        block: u64,
    },
    /// Starts Garage (as the tests do) with a bucket `bench`, prints its
    /// endpoint and keys as JSON, and runs until stdin closes.
    Garage,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.scenario, Scenario::BareServer { .. }) {
        // As many async workers as an upload node starts: half the cores.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        rt.worker_threads((cores / 2).max(1));
    }
    rt.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let proto = match cli.proto.as_str() {
        "tus" => Proto::Tus,
        _ => Proto::Upline {
            access_key: std::env::var("UPLINE_ACCESS_KEY").unwrap_or_default(),
            secret_key: std::env::var("UPLINE_SECRET_KEY").unwrap_or_default(),
        },
    };
    let t = Target {
        base: cli.url.trim_end_matches('/').to_owned(),
        proto,
        pid: cli.pid,
    };
    let report = match cli.scenario {
        Scenario::Single { size, chunk, md5 } => upline_bench::single(&t, size, chunk as usize, md5).await?,
        Scenario::Concurrent { uploads, size, chunk } => {
            upline_bench::concurrent(&t, uploads, size, chunk as usize).await?
        }
        Scenario::Lbs { connections, seconds } => {
            upline_bench::lbs(&t, connections, Duration::from_secs(seconds)).await?
        }
        Scenario::Query { count } => upline_bench::query(&t, count).await?,
        Scenario::S3Plain {
            bucket,
            size,
            part_size,
        } => {
            let target = upline_bench::s3::S3Target {
                endpoint: t.base.clone(),
                bucket,
                access_key: std::env::var("AWS_ACCESS_KEY_ID")?,
                secret_key: std::env::var("AWS_SECRET_ACCESS_KEY")?,
            };
            upline_bench::s3::plain_multipart(&target, size, part_size as usize).await?
        }
        Scenario::BareServer {
            dir,
            no_write,
            md5,
            block,
        } => {
            let cfg = upline_bench::bare::BareConfig {
                dir,
                write: !no_write,
                md5,
                block: usize::try_from(block)?,
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("{}", listener.local_addr()?.port());
            return upline_bench::bare::serve(cfg, listener).await;
        }
        Scenario::Md5Speed => {
            let mib_per_s = tokio::task::spawn_blocking(upline_bench::md5_speed).await?;
            println!(
                "{}",
                serde_json::json!({ "scenario": "md5-speed", "mib_per_s": mib_per_s })
            );
            return Ok(());
        }
        Scenario::Garage => {
            let garage = tokio::task::spawn_blocking(upline_storage::testing::Garage::start).await?;
            let bucket = garage.bucket("bench");
            let info = serde_json::json!({
                "endpoint": garage.endpoint,
                "bucket": bucket.bucket,
                "access_key": garage.access_key,
                "secret_key": garage.secret_key,
            });
            println!("{info}");
            tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
            })
            .await??;
            drop(garage);
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
