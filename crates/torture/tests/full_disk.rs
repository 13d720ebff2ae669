//! A disk that fills up, for real: the node's data directory on a small
//! file system — tmpfs (no O_DIRECT: the page-cache path) and a
//! loop-mounted ext4 image (the O_DIRECT path) — filled with a ballast file
//! while uploads run. A chunk that does not fit gets 500 with the
//! protocol's JSON error and leaves its offset; the node keeps answering
//! queries and downloads and takes the chunks that fit; it restarts on the
//! full disk; and once space returns the refused chunk goes through and
//! every object is byte-exact, with nothing left in staging.
//!
//! Mounting needs root (CI runs as root); where mounting is impossible the
//! variant is skipped with a message saying why.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use upline_proto::PutPolicy;
use upline_server::testing::{ACCESS_KEY, SECRET_KEY, TestServer};
use upline_torture::pattern;

/// A file system mounted for one test, unmounted on drop.
struct Mount {
    point: tempfile::TempDir,
    _image: Option<tempfile::NamedTempFile>,
}

impl Mount {
    fn tmpfs(mib: u64) -> Result<Mount, String> {
        let point = tempfile::tempdir().map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(point.path()))?;
        Ok(Mount { point, _image: None })
    }

    fn ext4(mib: u64) -> Result<Mount, String> {
        let image = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        image.as_file().set_len(mib << 20).map_err(|e| e.to_string())?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image.path()))?;
        let point = tempfile::tempdir().map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image.path())
            .arg(point.path()))?;
        Ok(Mount {
            point,
            _image: Some(image),
        })
    }

    fn path(&self) -> &Path {
        self.point.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if run(Command::new("umount").arg(self.point.path())).is_err() {
            let _ = run(Command::new("umount").arg("-l").arg(self.point.path()));
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Fills the file system with `ballast` until a write fails, then frees
/// `keep` bytes of it. Returns the ballast's size.
fn fill(ballast: &Path, keep: u64) -> u64 {
    let mut f = std::fs::File::create(ballast).unwrap();
    let block = vec![0x5au8; 256 << 10];
    while f.write_all(&block).is_ok() {}
    // With what a partial write got in, durably.
    let size = f.metadata().unwrap().len();
    let _ = f.sync_all();
    f.set_len(size.saturating_sub(keep)).unwrap();
    f.sync_all().unwrap();
    size
}

fn token(object: &str) -> String {
    PutPolicy {
        bucket: "disk".into(),
        object: object.into(),
        expires: Some(upline_server::unix_now() + 3600),
        ..Default::default()
    }
    .sign(ACCESS_KEY, SECRET_KEY.as_bytes())
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn chunk(
        &self,
        object: &str,
        seed: u64,
        offset: u64,
        len: u64,
        complete: bool,
        ctx: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut url = format!(
            "{}/disk/{object}?offset={offset}&complete={complete}&version=1.0",
            self.base
        );
        if let Some(c) = ctx {
            url.push_str(&format!("&context={c}"));
        }
        let r = self
            .http
            .post(url)
            .header("x-nos-token", token(object))
            .body(pattern::bytes(seed, offset, len as usize))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    async fn offset(&self, object: &str, ctx: &str) -> u64 {
        let r: serde_json::Value = self
            .http
            .get(format!(
                "{}/disk/{object}?uploadContext&context={ctx}&version=1.0",
                self.base
            ))
            .header("x-nos-token", token(object))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["offset"].as_u64().unwrap_or_else(|| panic!("query: {r}"))
    }

    async fn object(&self, object: &str) -> (u16, Vec<u8>) {
        let r = self
            .http
            .get(format!("{}/disk/{object}", self.base))
            .header("x-nos-token", token(object))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }
}

fn tweak(c: &mut upline_server::ServerConfig) {
    c.query_rate_per_ip = 0;
    c.query_rate_per_token = 0;
}

/// The scenario, on a data directory inside `mount`.
async fn fills_up_and_recovers(mount: &Mount, what: &str) {
    let data = Arc::new(tempfile::tempdir_in(mount.path()).unwrap());
    let mut node = TestServer::start_in(data.clone(), tweak).await;
    let c = Client {
        http: reqwest::Client::new(),
        base: node.base.clone(),
    };
    const MIB: u64 = 1 << 20;
    // A finished object, and two uploads under way.
    let (s, b) = c.chunk("done", 1, 0, 300_000, true, None).await;
    assert_eq!(s, 200, "{what}: {b}");
    let (s, b) = c.chunk("big", 2, 0, 256 << 10, false, None).await;
    assert_eq!(s, 200, "{what}: {b}");
    let big = b["context"].as_str().unwrap().to_owned();
    let (s, b) = c.chunk("small", 3, 0, 64 << 10, false, None).await;
    assert_eq!(s, 200, "{what}: {b}");
    let small = b["context"].as_str().unwrap().to_owned();

    // The disk fills up, all but 1 MiB.
    let ballast = mount.path().join("ballast");
    let filled = fill(&ballast, MIB);
    eprintln!("{what}: {} MiB of ballast", filled >> 20);

    // A 4 MiB chunk does not fit: 500, the protocol's JSON, offset kept.
    let (s, b) = c.chunk("big", 2, 256 << 10, 4 * MIB, false, Some(&big)).await;
    assert_eq!(s, 500, "{what}: {b}");
    assert_eq!(b["errMsg"], "internal error", "{what}: {b}");
    assert!(
        b["requestId"].is_string() && b["requestID"] == b["requestId"],
        "{b}"
    );
    assert_eq!(c.offset("big", &big).await, 256 << 10, "{what}: the offset stays");

    // The node keeps serving: queries, downloads, and chunks that fit.
    assert_eq!(
        c.object("done").await,
        (200, pattern::bytes(1, 0, 300_000)),
        "{what}"
    );
    let (s, b) = c.chunk("small", 3, 64 << 10, 16 << 10, false, Some(&small)).await;
    assert_eq!(
        s, 200,
        "{what}: a chunk that fits is taken while the disk is full: {b}"
    );
    assert_eq!(c.offset("small", &small).await, 80 << 10);

    // It restarts on the full disk (recovery, its database, its lock).
    node.stop().await;
    node = TestServer::start_in(data.clone(), tweak).await;
    let c = Client {
        http: c.http,
        base: node.base.clone(),
    };
    assert_eq!(
        c.offset("big", &big).await,
        256 << 10,
        "{what}: after the restart"
    );
    let (s, _) = c.chunk("big", 2, 256 << 10, 4 * MIB, false, Some(&big)).await;
    assert_eq!(s, 500, "{what}: still no room");

    // Space returns: the same chunk goes through, and everything finishes.
    std::fs::remove_file(&ballast).unwrap();
    let (s, b) = c.chunk("big", 2, 256 << 10, 4 * MIB, false, Some(&big)).await;
    assert_eq!(s, 200, "{what}: after space returned: {b}");
    let big_size = (256 << 10) + 4 * MIB + 12_345;
    let (s, b) = c
        .chunk("big", 2, (256 << 10) + 4 * MIB, 12_345, true, Some(&big))
        .await;
    assert_eq!(s, 200, "{what}: {b}");
    let (s, b) = c.chunk("small", 3, 80 << 10, 1000, true, Some(&small)).await;
    assert_eq!(s, 200, "{what}: {b}");
    assert_eq!(
        c.object("big").await,
        (200, pattern::bytes(2, 0, big_size as usize)),
        "{what}"
    );
    assert_eq!(
        c.object("small").await,
        (200, pattern::bytes(3, 0, (80 << 10) + 1000)),
        "{what}"
    );
    assert_eq!(
        c.object("done").await,
        (200, pattern::bytes(1, 0, 300_000)),
        "{what}"
    );
    let staged: Vec<PathBuf> = std::fs::read_dir(data.path().join("blobs/staging"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(staged.is_empty(), "{what}: staging left {staged:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tmpfs_page_cache_path() {
    match Mount::tmpfs(24) {
        Ok(m) => fills_up_and_recovers(&m, "tmpfs").await,
        Err(e) => eprintln!("SKIPPED: cannot mount a tmpfs ({e}); this test needs root"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ext4_direct_io_path() {
    match Mount::ext4(48) {
        Ok(m) => fills_up_and_recovers(&m, "ext4").await,
        Err(e) => eprintln!(
            "SKIPPED: cannot make and loop-mount an ext4 image ({e}); this test needs root, mkfs.ext4 and a loop device"
        ),
    }
}
