//! Typed configuration of a node. The command line fills it from flags,
//! environment variables and a TOML file (see the README's configuration table).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A secret value from the configuration: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One credential pair tokens may be signed with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub access_key: String,
    pub secret_key: String,
}

impl ServerConfig {
    /// The base URL of this node for links it hands out.
    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None if self.tls_cert.is_some() => format!("https://{}", self.listen),
            None => format!("http://{}", self.listen),
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the embedded database and the blobs live.
    pub data_dir: PathBuf,
    /// The base URL clients reach this node by (`http://host:port`);
    /// default: `http://` + the address the client connected to.
    pub public_url: Option<String>,
    /// Largest chunk body, bytes.
    pub max_chunk: u64,
    /// Refuse tokens without `Expires` (the original service accepts them).
    pub require_expires: bool,
    /// Seconds a session may stay idle before it is collected.
    pub session_ttl_secs: u64,
    /// Seconds between collection passes.
    pub collect_interval_secs: u64,
    /// Seconds a completion callback may take.
    pub callback_timeout_secs: u64,
    /// Seconds a multipart upload no record names must be old before the
    /// start-up recovery aborts it (S3).
    pub orphan_grace_secs: u64,
    /// Origins allowed by CORS; empty means any origin.
    pub cors_origins: Vec<String>,
    /// Seconds to let requests in flight finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Seconds a client may take to send its request headers.
    pub header_timeout_secs: u64,
    /// Credential pairs; see the credentials rules in the README.
    pub credentials: Vec<Credential>,
    /// The bucket `upline upload` uses when `--bucket` is not given.
    pub default_bucket: String,
    /// Buckets whose objects anyone may download.
    pub public_buckets: Vec<String>,
    /// 64 hex digits sealing app secrets at rest; default: generated once
    /// into `DATA_DIR/master.key` (mode 0600). Nodes sharing a database
    /// must share it.
    pub master_key: Option<Secret>,
    /// Lifetime of the upload tokens the app API's init returns.
    pub app_token_ttl_secs: u64,
    /// How long a notification to an app is retried.
    pub notify_for_secs: u64,
    /// First retry delay of a notification (doubling, at most 10 minutes).
    pub notify_base_delay_secs: u64,
    /// Milliseconds between passes of the app API's worker (completions,
    /// notifications).
    pub worker_interval_ms: u64,
    /// Where blobs live: `fs://PATH` or
    /// `s3://BUCKET?endpoint=http://HOST:PORT&region=R`; default
    /// `fs://DATA_DIR/blobs`.
    pub storage: Option<String>,
    /// Where session state lives: `embedded` (SQLite in the data dir, the
    /// default) or `postgres://USER@HOST/DB`.
    pub state: Option<String>,
    /// `node` (uploads and LBS) or `lbs` (only `/lbs`, from the registry).
    pub role: Role,
    /// LBS preference of this node: smaller is listed first.
    pub priority: i32,
    /// Milliseconds between this node's heartbeats.
    pub heartbeat_ms: u64,
    /// A node whose last heartbeat is older than this is not listed.
    pub node_ttl_ms: u64,
    /// S3 part size in bytes (chunks are coalesced into parts this big).
    pub s3_part_size: u64,
    /// How sessions are laid out on S3: `auto` (one part per chunk where
    /// the store takes small parts, probed at start), `parts` or `chunks`.
    pub s3_layout: String,
    /// S3 credentials, when not in `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`.
    pub s3_access_key: Option<String>,
    pub s3_secret_key: Option<Secret>,
    /// The demo page at `/demo` and its dev-only token endpoint; default:
    /// on only for the embedded default bound to loopback (see `demo.rs`).
    pub demo: Option<bool>,
    /// Hash every published object once after start and quarantine those
    /// whose bytes do not match their recorded MD5 (reads all the bytes;
    /// sizes are always checked, and every full download is verified).
    pub verify_objects_at_start: bool,
    /// Threads that run the node's async work (HTTP, the upload path's
    /// copies); 0 = half the cores (all of them for `--role lbs`) — see
    /// [`worker_threads`](Self::worker_threads).
    pub worker_threads: usize,
    /// Most connections served at once; past it a few more are answered
    /// 503 and closed, the rest closed at accept (see `limits.rs`).
    pub max_connections: usize,
    /// Seconds a request body may send nothing before the chunk fails
    /// (nothing committed) and the connection is closed.
    pub body_idle_timeout_secs: u64,
    /// Resume-point queries per second (and burst) one client IP may make
    /// (IPv6: one /64); 0 turns the limit off.
    pub query_rate_per_ip: u32,
    /// Resume-point queries per second (and burst) one token may make; 0
    /// turns the limit off.
    pub query_rate_per_token: u32,
    /// PEM certificate chain; with `tls_key`, the node serves HTTPS only
    /// and reloads both files on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// What a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An upload node (which also answers `/lbs`).
    #[default]
    Node,
    /// Only the LBS.
    Lbs,
}

impl ServerConfig {
    /// The async worker threads to start: `worker_threads`, or for an
    /// upload node half the cores (at least one), for an LBS-only node all
    /// of them.
    ///
    /// Why not one per core (tokio's default) on an upload node: the other
    /// half is where its blocking work runs — direct writes, `fdatasync`,
    /// SQLite commits, MD5 — beside the kernel's network stack. Measured on
    /// 2 cores (`BENCHMARKS.md`), one worker instead of two: 256 concurrent
    /// uploads 595 → 850 MiB/s at 40 % less CPU per GiB (fewer wake-ups
    /// across cores), a single stream +9 % — and `/lbs` answered by that
    /// node 18 % slower (48k against 59k requests a second), which is why
    /// a node that only answers `/lbs`, with no blocking work, keeps one
    /// worker per core.
    pub fn worker_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self.role {
            Role::Lbs => cores,
            Role::Node => (cores / 2).max(1),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            data_dir: PathBuf::from("./upline-data"),
            public_url: None,
            max_chunk: upline_proto::MAX_CHUNK,
            require_expires: true,
            session_ttl_secs: 7 * 24 * 3600,
            collect_interval_secs: 600,
            callback_timeout_secs: 10,
            orphan_grace_secs: 3600,
            cors_origins: Vec::new(),
            shutdown_grace_secs: 30,
            header_timeout_secs: 30,
            credentials: Vec::new(),
            default_bucket: "uploads".into(),
            public_buckets: Vec::new(),
            master_key: None,
            app_token_ttl_secs: 24 * 3600,
            notify_for_secs: 24 * 3600,
            notify_base_delay_secs: 5,
            worker_interval_ms: 1000,
            storage: None,
            state: None,
            role: Role::Node,
            priority: 100,
            heartbeat_ms: 1000,
            node_ttl_ms: 3000,
            s3_part_size: 8 * 1024 * 1024,
            s3_layout: "auto".into(),
            s3_access_key: None,
            s3_secret_key: None,
            demo: None,
            verify_objects_at_start: false,
            worker_threads: 0,
            max_connections: 512,
            body_idle_timeout_secs: 60,
            query_rate_per_ip: 20,
            query_rate_per_token: 5,
            tls_cert: None,
            tls_key: None,
        }
    }
}
