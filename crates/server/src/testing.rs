//! A node on a random port with a temp data directory, for the tests of
//! this and other crates (the client's, the command line's). Not for
//! production use: it panics on any start-up failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use upline_core::Node;

use crate::{App, Credential, ServerConfig};

/// Test credentials every [`TestServer`] accepts.
pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-0123456789";

/// A running node; stopped (gracefully) by [`TestServer::stop`] or when
/// the test's runtime ends.
pub struct TestServer {
    pub base: String,
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    /// Keeps the data directory alive across restarts ([`TestServer::start_in`]).
    pub tmp: Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// A node with default settings changed by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        Self::start_in(Arc::new(tempfile::tempdir().expect("temp dir")), tweak).await
    }

    /// A node on an existing data directory (a restart).
    pub async fn start_in(tmp: Arc<tempfile::TempDir>, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut cfg = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: tmp.path().to_path_buf(),
            credentials: vec![Credential {
                access_key: ACCESS_KEY.into(),
                secret_key: SECRET_KEY.into(),
            }],
            ..Default::default()
        };
        tweak(&mut cfg);
        let app = App::build(cfg).await.expect("test node starts");
        let addr = app.local_addr();
        let node = app.node();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async {
            let _ = rx.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            addr,
            node,
            tmp,
            stop: Some(tx),
            task,
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }

    /// Stops the node and waits until it has let go of its data directory.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Creates an app of the backend API, as `upline app create` does (a
    /// second handle on the node's database, sharing its master key).
    pub async fn create_app(&self, name: &str) -> upline_apps::NewApp {
        let cfg = ServerConfig {
            data_dir: self.data_dir(),
            ..Default::default()
        };
        let state =
            upline_state::EmbeddedStore::open(self.tmp.path().join("state.db")).expect("database opens");
        let sealer = upline_apps::Sealer::new(&crate::secrets::master_key(&cfg).expect("master key"));
        upline_apps::create_app(&state, &sealer, name, None, crate::unix_now())
            .await
            .expect("app created")
    }

    /// The published bytes of `bucket/object`, if it exists.
    pub async fn object_bytes(&self, bucket: &str, object: &str) -> Option<Vec<u8>> {
        let rec = self.node.object(bucket, object).await.expect("state readable")?;
        let mut s = self
            .node
            .read_object(&rec, 0, rec.size)
            .await
            .expect("object readable");
        let mut out = Vec::new();
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b.expect("object readable"));
        }
        Some(out)
    }
}

/// Deterministic pseudo-random test bytes (xorshift), different per seed.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
