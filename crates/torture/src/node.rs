//! The node under test as a child process (the real `upline serve`), and
//! the services of the S3 + PostgreSQL setup, with the faults the crash
//! loop injects into them: SIGKILL of the node or of Garage, and every
//! database connection of the node cut by `pg_terminate_backend`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use upline_state::SessionStore;
use upline_storage::testing::Garage;

/// The credentials every node of the harness is started with.
pub const ACCESS_KEY: &str = "torture-access-key";
pub const SECRET_KEY: &str = "torture-secret-key-never-logged";
/// The bucket the harness uploads to.
pub const BUCKET: &str = "torture";

/// How to start the node: binary, data directory, environment.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub envs: Vec<(String, String)>,
    /// The node's stderr, appended across restarts.
    pub log: PathBuf,
}

/// A running node.
pub struct NodeProc {
    child: Child,
    pub base: String,
    /// Lines its recovery logged (read from its stderr), e.g. finished
    /// publications; shared with the thread reading the pipe.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl NodeSpec {
    /// Sets (or replaces) one variable of the node's environment, for its
    /// next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_owned(), value.to_owned()));
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--demo",
            "false",
            "--data-dir",
        ])
        .arg(&self.data_dir)
        .env("UPLINE_ACCESS_KEY", ACCESS_KEY)
        .env("UPLINE_SECRET_KEY", SECRET_KEY)
        // Recovery's own lines are counted; per-chunk lines are noise.
        .env(
            "RUST_LOG",
            "warn,upline_core=info,upline_server::app=info,upline_storage=info",
        )
        // One client address asks for every resume point at once after
        // each restart: the per-address query limit is not under test.
        .env("UPLINE_QUERY_RATE_PER_IP", "0")
        .env("UPLINE_QUERY_RATE_PER_TOKEN", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the node and kills it with SIGKILL after `after`, whatever
    /// it is doing then (opening stores, recovering, serving).
    pub fn start_and_kill(&self, after: Duration) -> anyhow::Result<()> {
        let mut child = self
            .command()
            .stderr(Stdio::null())
            .spawn()
            .context("spawn upline")?;
        std::thread::sleep(after);
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// Starts the node and waits until it serves (recovery is done by then).
    pub fn start(&self, timeout: Duration) -> anyhow::Result<NodeProc> {
        let mut child = self.command().spawn().context("spawn upline")?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let _ = writeln!(log, "--- node started (pid {}) ---", child.id());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Some(rest) = line.strip_prefix("upline: serving on ") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
                sink.lock().expect("log lines").push(line);
            }
        });
        match rx.recv_timeout(timeout) {
            Ok(base) => Ok(NodeProc { child, base, lines }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let tail: Vec<String> = lines
                    .lock()
                    .expect("log lines")
                    .iter()
                    .rev()
                    .take(20)
                    .cloned()
                    .collect();
                bail!("the node did not start within {timeout:?}; last lines: {tail:?}")
            }
        }
    }
}

impl NodeProc {
    /// SIGKILL, as a crash or an OOM kill would: no shutdown code runs.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process has died on its own (a panic, an abort).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until a logged line contains `needle`; whether one did.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < until {
            if self.count(needle) > 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// How many logged lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .expect("log lines")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which stores the node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The embedded default: local disk + SQLite in the data directory.
    Embedded,
    /// S3 (a real Garage) + PostgreSQL.
    S3Pg,
}

/// What the stores look like to the checker.
pub enum Stores {
    Fs {
        root: PathBuf,
        state: PathBuf,
    },
    S3Pg {
        s3: Arc<object_store::aws::AmazonS3>,
        pg: String,
    },
}

/// The services the node runs on, for one run of the harness.
pub struct Services {
    pub backend: Backend,
    garage: Option<Arc<Mutex<Garage>>>,
    s3_down: std::sync::atomic::AtomicBool,
    s3: Option<upline_storage::s3::S3Config>,
    pg: Option<String>,
    data_dir: PathBuf,
}

impl Services {
    /// Starts what `backend` needs (Garage and a fresh database for
    /// S3 + PostgreSQL; nothing for the embedded default).
    pub async fn start(backend: Backend, data_dir: &Path) -> anyhow::Result<Services> {
        let mut s = Services {
            backend,
            garage: None,
            s3_down: Default::default(),
            s3: None,
            pg: None,
            data_dir: data_dir.to_owned(),
        };
        if backend == Backend::S3Pg {
            let garage = tokio::task::spawn_blocking(Garage::start).await?;
            s.s3 = Some(garage.bucket("torture-media"));
            s.garage = Some(Arc::new(Mutex::new(garage)));
            s.pg = Some(upline_state::testing::fresh_database().await);
        }
        Ok(s)
    }

    /// The node's environment for these services.
    pub fn node_envs(&self) -> Vec<(String, String)> {
        let mut envs = Vec::new();
        if let (Some(s3), Some(pg)) = (&self.s3, &self.pg) {
            let endpoint = s3.endpoint.clone().unwrap_or_default();
            envs.push((
                "UPLINE_STORAGE".into(),
                format!("s3://{}?endpoint={endpoint}&region={}", s3.bucket, s3.region),
            ));
            envs.push(("UPLINE_STATE".into(), pg.clone()));
            envs.push(("AWS_ACCESS_KEY_ID".into(), s3.access_key.clone()));
            envs.push(("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key.clone()));
            envs.push(("UPLINE_MASTER_KEY".into(), "7e".repeat(32)));
            // Part size at S3's minimum, so parts fill often.
            envs.push(("UPLINE_S3_PART_SIZE".into(), (5u64 << 20).to_string()));
        }
        envs
    }

    /// How the checker reads the stores.
    pub fn stores(&self) -> anyhow::Result<Stores> {
        match (&self.s3, &self.pg) {
            (Some(s3), Some(pg)) => {
                let client = upline_storage::testing::plain_client(s3)?;
                Ok(Stores::S3Pg {
                    s3: Arc::new(client),
                    pg: pg.clone(),
                })
            }
            _ => Ok(Stores::Fs {
                root: self.data_dir.join("blobs"),
                state: self.data_dir.join("state.db"),
            }),
        }
    }

    /// SIGKILLs Garage; `restart_s3` brings it back on the same data.
    pub async fn kill_s3(&self) {
        if let Some(g) = self.garage.clone() {
            self.s3_down.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = tokio::task::spawn_blocking(move || g.lock().expect("garage").kill()).await;
        }
    }

    /// Restarts Garage if it was killed.
    pub async fn restart_s3(&self) -> anyhow::Result<()> {
        if let Some(g) = self.garage.clone()
            && self.s3_down.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            tokio::task::spawn_blocking(move || g.lock().expect("garage").restart())
                .await?
                .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// Terminates every connection to the node's database (the node's
    /// pool, and nothing else: the checker connects afresh each time).
    /// Returns how many were cut.
    pub async fn cut_database(&self) -> anyhow::Result<u64> {
        let Some(pg) = &self.pg else { return Ok(0) };
        let db = pg.rsplit('/').next().unwrap_or_default().to_owned();
        let (client, conn) =
            tokio_postgres::connect(&upline_state::testing::admin_url(), tokio_postgres::NoTls).await?;
        let task = tokio::spawn(conn);
        let rows = client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db],
            )
            .await?;
        drop(client);
        let _ = task.await;
        Ok(rows.len() as u64)
    }
}

/// Opens the session store the node uses, as a second client of it.
pub async fn open_state(stores: &Stores) -> anyhow::Result<Arc<dyn SessionStore>> {
    Ok(match stores {
        Stores::Fs { state, .. } => Arc::new(upline_state::EmbeddedStore::open(state)?),
        Stores::S3Pg { pg, .. } => Arc::new(upline_state::PgStore::connect(pg).await?),
    })
}
