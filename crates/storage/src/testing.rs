//! A real Garage (an S3-compatible distributed store) for tests: started
//! from the `garage` binary (`UPLINE_GARAGE_BIN`, or `garage` on the PATH
//! or in `~/.cargo/bin`, where `scripts/services.sh` installs it), on free
//! local ports, with its data in a temp directory; killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::s3::S3Config;

/// A running single-node Garage with one access key.
pub struct Garage {
    child: Child,
    bin: PathBuf,
    config: PathBuf,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port()
}

/// The garage binary to run.
pub fn garage_bin() -> PathBuf {
    if let Ok(p) = std::env::var("UPLINE_GARAGE_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo = Path::new(&home).join(".cargo/bin/garage");
    if cargo.is_file() {
        cargo
    } else {
        PathBuf::from("garage")
    }
}

impl Garage {
    /// Starts Garage and configures a layout and a key. Panics with what to
    /// do when the binary is missing.
    pub fn start() -> Garage {
        let dir = tempfile::tempdir().expect("temp dir");
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let secret: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(rpc as u8));
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!(
            "metadata_dir = \"{m}\"\ndata_dir = \"{d}\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{hex}\"\n\
             [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
            m = dir.path().join("meta").display(),
            d = dir.path().join("data").display(),
        );
        std::fs::write(&config, text).expect("garage config");
        let bin = garage_bin();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); scripts/services.sh installs Garage",
                    bin.display()
                )
            });
        let mut g = Garage {
            child,
            bin,
            config,
            endpoint: format!("http://127.0.0.1:{s3}"),
            access_key: String::new(),
            secret_key: String::new(),
            _dir: dir,
        };
        // `node id` reads the key from disk; `status` needs the server up.
        let node_id = g.retry("node id", &["node", "id", "-q"]);
        let node_id = node_id.trim().split('@').next().unwrap_or_default().to_owned();
        g.retry("status", &["status"]);
        g.retry(
            "layout assign",
            &["layout", "assign", "-z", "dc1", "-c", "1G", &node_id],
        );
        g.retry("layout apply", &["layout", "apply", "--version", "1"]);
        let out = g.cli(&["key", "create", "upline-test"]).expect("key create");
        let field = |name: &str| {
            out.lines()
                .find(|l| l.trim_start().starts_with(name))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in: {out}"))
        };
        g.access_key = field("Key ID");
        g.secret_key = field("Secret key");
        g
    }

    /// Runs a command until it succeeds (the server is starting).
    fn retry(&self, what: &str, args: &[&str]) -> String {
        let started = Instant::now();
        loop {
            match self.cli(args) {
                Ok(out) => return out,
                Err(e) if started.elapsed() > Duration::from_secs(30) => panic!("garage {what}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs a garage CLI command against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Creates a bucket the key may use; retries while the layout settles.
    pub fn bucket(&self, name: &str) -> S3Config {
        let started = Instant::now();
        while let Err(e) = self.cli(&["bucket", "create", name]) {
            assert!(started.elapsed() < Duration::from_secs(30), "bucket create: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            "upline-test",
        ])
        .expect("bucket allow");
        self.config_for(name)
    }

    pub fn config_for(&self, bucket: &str) -> S3Config {
        S3Config {
            bucket: bucket.to_owned(),
            endpoint: Some(self.endpoint.clone()),
            region: "garage".into(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            part_size: crate::s3::MIN_PART,
            layout: crate::s3::Layout::Auto,
        }
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same data and ports (after
    /// [`Garage::kill`]; a running one is killed first) and waits until
    /// its S3 port answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
        let started = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("garage did not listen on {addr} again"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bucket of `cfg` as a plain S3 client sees it (the same client the
/// store builds): tests and the crash loop's checker look under upline's
/// keys with it, and make what a crashed node would have left.
pub fn plain_client(cfg: &S3Config) -> object_store::Result<object_store::aws::AmazonS3> {
    crate::s3::client(cfg)
}
