//! The real `upline` binary as a child process, and helpers shared by
//! the command line's tests.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use upline_proto::PutPolicy;
pub use upline_server::testing::data;

pub const AK: &str = "proc-test-access";
pub const SK: &str = "proc-test-secret-do-not-log";

pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

pub fn upline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_upline"))
}

impl Proc {
    pub fn serve(dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        Self::serve_on("127.0.0.1:0", dir, extra, envs)
    }

    /// A node on a given address (a restart on the same port).
    pub fn serve_on(listen: &str, dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = upline();
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args(extra);
        cmd.env_remove("UPLINE_ACCESS_KEY")
            .env_remove("UPLINE_SECRET_KEY")
            .env("RUST_LOG", "debug");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line.strip_prefix("upline: serving on http://").map(|rest| {
                    rest.split_whitespace()
                        .next()
                        .unwrap()
                        .parse::<SocketAddr>()
                        .unwrap()
                });
                sink.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no start: {:?}", log.lock().unwrap()));
        Proc { child, addr, log }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A failed test must not leave nodes running (they hold ports and
/// database connections).
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn env_creds() -> [(&'static str, &'static str); 2] {
    [("UPLINE_ACCESS_KEY", AK), ("UPLINE_SECRET_KEY", SK)]
}

pub fn token(object: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    PutPolicy {
        bucket: "doc".into(),
        object: object.into(),
        expires: Some(now + 3600),
        ..Default::default()
    }
    .sign(AK, SK.as_bytes())
}

/// One chunk of `doc/film.mp4`; a request that got no answer (the node
/// was killed) reads as status 0.
pub async fn post(
    http: &reqwest::Client,
    base: &str,
    t: &str,
    offset: u64,
    complete: bool,
    ctx: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut url = format!("{base}/doc/film.mp4?offset={offset}&complete={complete}&version=1.0");
    if let Some(c) = ctx {
        url.push_str(&format!("&context={c}"));
    }
    match http.post(url).header("x-nos-token", t).body(body).send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or_default()),
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// Where a published object's bytes are on disk, by its session context.
pub fn published(dir: &Path, ctx: &str) -> std::path::PathBuf {
    dir.join("blobs/objects").join(&ctx[..2]).join(ctx)
}
