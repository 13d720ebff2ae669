//! The least a durable resumable-upload server does, as a tus 1.0 server:
//! `POST /files/` creates a file, `PATCH` streams its body to the file and
//! answers `204` once `fdatasync` returns. No token, no session record, no
//! offset check, no lock — only the work every durable server must do.
//!
//! Why it exists: `dd` writes 4 MiB and syncs, back to back, where any
//! upload server must also receive the bytes and answer before the client
//! sends the next chunk. This server is the machine's limit for that
//! stop-and-wait loop, measured beside upline in the same run, so that a
//! ratio to `dd` (or to one core's MD5) can be read against what is
//! possible at all. It writes the way upline's file store does (1 MiB
//! `O_DIRECT` blocks in flight while the body arrives), and with `--md5`
//! hashes the body on its own thread while it arrives, as upline does for
//! `Content-MD5`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

/// Bytes per write, as in upline's file store.
/// The default block: what upline uses for a lone upload.
pub const BLOCK: usize = 1 << 20;
/// What `O_DIRECT` needs of offsets, lengths and memory.
const ALIGN: usize = 4096;

/// What the server does with a body.
#[derive(Debug, Clone)]
pub struct BareConfig {
    pub dir: PathBuf,
    /// Write and sync the bytes (otherwise they are received and dropped).
    pub write: bool,
    /// Hash every body with MD5 on a thread of its own.
    pub md5: bool,
    /// Bytes per direct write (a multiple of 4 KiB).
    pub block: usize,
}

/// Serves on `listener` until the process ends.
pub async fn serve(cfg: BareConfig, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.block > 0 && cfg.block.is_multiple_of(ALIGN),
        "the block must be a positive multiple of {ALIGN}"
    );
    let pool = Pool {
        block: cfg.block,
        free: Default::default(),
    };
    let shared = Arc::new((cfg, AtomicU64::new(0), pool));
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { handle(&shared.0, &shared.1, &shared.2, req).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = Response<Empty<Bytes>>;

fn status(code: StatusCode) -> Reply {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = code;
    r
}

async fn handle(
    cfg: &BareConfig,
    next: &AtomicU64,
    pool: &Pool,
    req: Request<Incoming>,
) -> anyhow::Result<Reply> {
    if req.method() == Method::POST {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if cfg.write {
            File::create(cfg.dir.join(n.to_string()))?;
        }
        let mut r = status(StatusCode::CREATED);
        r.headers_mut().insert("location", format!("/files/{n}").parse()?);
        return Ok(r);
    }
    let name = req.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
    let Some(offset) = req
        .headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let files = if cfg.write {
        let path = cfg.dir.join(name);
        Some(tokio::task::spawn_blocking(move || Files::open(&path)).await??)
    } else {
        None
    };
    let (to_hasher, frames) = std::sync::mpsc::channel::<Bytes>();
    let hasher = cfg.md5.then(|| {
        tokio::task::spawn_blocking(move || {
            let mut h = fast_md5::Md5::new();
            for frame in frames {
                h.update(&frame);
            }
            h.finalize()
        })
    });
    let mut body = req.into_body();
    let mut block = pool.take();
    let mut pos = offset;
    let mut writes = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(mut data) = frame?.into_data() else {
            continue;
        };
        if hasher.is_some() {
            to_hasher.send(data.clone())?;
        }
        while !data.is_empty() {
            let taken = block.fill(&data);
            data = data.split_off(taken);
            if block.len == cfg.block {
                let full = std::mem::replace(&mut block, pool.take());
                if let Some(f) = &files {
                    let f = f.clone();
                    let at = pos;
                    writes.push(tokio::task::spawn_blocking(move || {
                        f.write(&full, at).map(|()| full)
                    }));
                } else {
                    pool.give(full);
                }
                pos += cfg.block as u64;
            }
        }
    }
    drop(to_hasher);
    for w in writes {
        pool.give(w.await??);
    }
    let tail = block.len as u64;
    if let Some(f) = files {
        let at = pos;
        block = tokio::task::spawn_blocking(move || {
            f.write(&block, at)?;
            f.direct.sync_data()?;
            f.buffered.sync_data().map(|()| block)
        })
        .await??;
    }
    pool.give(block);
    pos += tail;
    if let Some(h) = hasher {
        std::hint::black_box(h.await?);
    }
    let mut r = status(StatusCode::NO_CONTENT);
    r.headers_mut().insert("upload-offset", pos.to_string().parse()?);
    Ok(r)
}

/// One file, opened for `O_DIRECT` blocks and for an unaligned tail.
#[derive(Clone)]
struct Files {
    direct: Arc<File>,
    buffered: Arc<File>,
}

impl Files {
    fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        let buffered = OpenOptions::new().write(true).open(path)?;
        Ok(Self {
            direct: Arc::new(direct),
            buffered: Arc::new(buffered),
        })
    }

    /// Writes `b` at `at`: directly where both are aligned, through the
    /// page cache otherwise (a short last block).
    fn write(&self, b: &Aligned, at: u64) -> std::io::Result<()> {
        let data = b.bytes();
        if data.len().is_multiple_of(ALIGN) && (at as usize).is_multiple_of(ALIGN) {
            self.direct.write_all_at(data, at)
        } else {
            self.buffered.write_all_at(data, at)
        }
    }
}

/// Blocks kept for the next body: a fresh one would cost a page fault per
/// 4 KiB (capped near 300 MB/s on this VM) or a memset.
struct Pool {
    block: usize,
    free: std::sync::Mutex<Vec<Aligned>>,
}

impl Pool {
    fn take(&self) -> Aligned {
        let reused = self.free.lock().ok().and_then(|mut v| v.pop());
        reused.unwrap_or_else(|| Aligned::new(self.block))
    }

    fn give(&self, mut b: Aligned) {
        b.len = 0;
        if let Ok(mut v) = self.free.lock() {
            v.push(b);
        }
    }
}

/// A block of memory aligned for `O_DIRECT`: a vector one alignment
/// longer than needed, used from its first aligned byte (safe code).
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(block: usize) -> Self {
        let raw = vec![0u8; block + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start, len: 0 }
    }

    /// Copies what fits of `data`; how much that was.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.raw.len() - ALIGN - self.len);
        let at = self.start + self.len;
        self.raw[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}
