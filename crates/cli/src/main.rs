//! The `upline` command: `serve` runs an upload node, `token` mints an
//! upload token with the node's credentials, `upload` uploads files.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;
use upline_proto::PutPolicy;

mod admin;
mod settings;
mod upload;

use settings::{CommonArgs, CredentialSource};

#[derive(Parser)]
#[command(name = "upline", version, about = "Resumable media upload service")]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an upload node on the embedded default (local disk + SQLite).
    Serve(ServeArgs),
    /// Print an upload token signed with the node's credentials.
    Token(TokenArgs),
    /// Upload files, resumably (re-run the same command to resume).
    Upload(upload::UploadArgs),
    /// Apps of the backend API.
    #[command(subcommand)]
    App(admin::AppCmd),
    /// Print a signed download URL for an object.
    Url(admin::UrlArgs),
    /// Uploads in progress.
    #[command(subcommand)]
    Uploads(admin::UploadsCmd),
    /// Published objects.
    #[command(subcommand)]
    Objects(admin::ObjectsCmd),
}

#[derive(clap::Args, Serialize)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Base URL clients reach this node by, e.g. http://upload.example.com.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    public_url: Option<String>,
    /// Blob storage: fs://PATH or s3://BUCKET?endpoint=http://HOST:PORT&region=R [default: fs://DATA_DIR/blobs].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<String>,
    /// Session state: embedded or postgres://USER@HOST/DB [default: embedded].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    /// node (uploads and LBS) or lbs (only /lbs, listing the registry's nodes).
    #[arg(long, value_parser = ["node", "lbs"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    /// Serve the demo page at /demo and its dev-only token endpoint [default: only on loopback with the embedded default].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    demo: Option<bool>,
    #[command(flatten)]
    #[serde(skip)]
    common: CommonArgs,
}

#[derive(clap::Args)]
struct TokenArgs {
    #[arg(long)]
    bucket: String,
    #[arg(long)]
    object: String,
    /// Lifetime of the token in seconds.
    #[arg(long, default_value_t = 3600)]
    expires_in: u64,
    /// URL called when the upload completes.
    #[arg(long)]
    callback_url: Option<String>,
    /// Body template of that call (variables: see docs/PROTOCOL-DECISIONS.md).
    #[arg(long)]
    callback_body: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Serialize)]
pub(crate) struct NoFlags {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).map(|()| ExitCode::SUCCESS),
        Command::Token(args) => token(args).map(|()| ExitCode::SUCCESS),
        Command::Upload(args) => upload::run(args),
        Command::App(cmd) => admin::app(cmd).map(|()| ExitCode::SUCCESS),
        Command::Url(args) => admin::url(args).map(|()| ExitCode::SUCCESS),
        Command::Uploads(cmd) => admin::uploads(cmd).map(|()| ExitCode::SUCCESS),
        Command::Objects(cmd) => admin::objects(cmd).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("upline: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cfg = settings::load(&args.common, &args)?;
    let source = settings::resolve_credentials(&mut cfg, true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads())
        .enable_all()
        .max_blocking_threads(upline_server::BLOCKING_THREADS)
        .build()?;
    tracing::debug!(
        workers = runtime.metrics().num_workers(),
        blocking_max = upline_server::BLOCKING_THREADS,
        "runtime started"
    );
    runtime.block_on(async move {
        let app = upline_server::App::build(cfg.clone()).await?;
        let access_key = &cfg.credentials[0].access_key;
        let origin = match source {
            CredentialSource::Environment => "from UPLINE_ACCESS_KEY/UPLINE_SECRET_KEY".to_owned(),
            CredentialSource::ConfigFile => "from the config file".to_owned(),
            CredentialSource::Generated(p) => format!("kept in {}", p.display()),
        };
        let scheme = if cfg.tls_cert.is_some() { "https" } else { "http" };
        eprintln!(
            "upline: serving on {scheme}://{} (data dir {}), access key {access_key} {origin}",
            app.local_addr(),
            cfg.data_dir.display()
        );
        if upline_server::demo::enabled(&cfg) {
            demo_notice(&cfg, app.local_addr());
        }
        app.run(shutdown_signal()).await;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Where the demo is, and a warning when it was turned on where anyone
/// who reaches the node could get upload tokens from it.
fn demo_notice(cfg: &upline_server::ServerConfig, addr: SocketAddr) {
    eprintln!("upline: demo page at http://{addr}/demo (dev only; demo = false turns it off)");
    if !cfg.listen.ip().is_loopback() {
        eprintln!(
            "upline: warning: the demo is on at a non-loopback address: anyone who reaches {addr} can get upload tokens from /demo/token"
        );
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown signal received");
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let mut cfg = settings::load(&args.common, &NoFlags {})?;
    settings::resolve_credentials(&mut cfg, true)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let policy = PutPolicy {
        bucket: upline_proto::Bucket::parse(&args.bucket)?.to_string(),
        object: upline_proto::ObjectKey::parse(&args.object)?.to_string(),
        expires: Some((now + args.expires_in) as i64),
        callback_url: args.callback_url,
        callback_body: args.callback_body,
        ..Default::default()
    };
    let cred = &cfg.credentials[0];
    println!("{}", policy.sign(&cred.access_key, cred.secret_key.as_bytes()));
    Ok(())
}
