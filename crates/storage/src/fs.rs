//! Local-disk [`BlobStore`]: `staging/<id>` while open, `objects/<xx>/<id>`
//! once published, `quarantine/<id>` (with `<id>.why`) when found damaged.
//!
//! Writes go at explicit offsets (`pwrite`), never in append mode, so a
//! retried chunk overwrites exactly the bytes of the failed attempt. A
//! write is durable when `fdatasync` returns; a new file's directory entry
//! is made durable by fsyncing its directory. Publishing truncates to the
//! committed size, fsyncs, renames and fsyncs both directories — the
//! pattern of garage's block manager.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::AsyncSeekExt;
use tokio::task::{JoinHandle, spawn_blocking};

use crate::{BlobId, BlobStore, ByteStream, StorageError};

/// Bytes gathered from the body before one `pwrite`: at most this much, and
/// less when many writes run at once, so that all their blocks together
/// stay near [`WRITE_BUDGET`]. A write has up to `Buffers::plan`'s depth of
/// blocks being written and one being filled.
const WRITE_BLOCK: usize = 1024 * 1024;
const MIN_BLOCK: usize = 64 * 1024;
/// What the blocks of all concurrent writes may take together, as long as
/// each gets at least [`MIN_BLOCK`] (measured: 256 uploads at once with
/// fixed 256 KiB blocks held 128 MiB of them). Writes plan their blocks
/// from it (`Buffers::plan`); with the idle blocks ([`IDLE_BYTES`]) it is
/// also the bound `Buffers::take` keeps all blocks alive within.
const WRITE_BUDGET: usize = 32 * 1024 * 1024;
/// Blocks in flight per write while few writes run (see `Buffers::plan`).
const DEEP: usize = 4;
const READ_BLOCK: usize = 64 * 1024;
/// The alignment `O_DIRECT` needs of file offsets, lengths and memory: 4 KiB
/// covers disks of 512-byte and of 4 KiB logical blocks.
const ALIGN: usize = 4096;
/// Bytes of idle write blocks kept for reuse. Reused memory is memory the
/// machine has already touched (on the VM we measure on, a never-touched
/// page costs more than the disk write), and reuse spares the allocator.
const IDLE_BYTES: usize = 8 * 1024 * 1024;

/// A [`BlobStore`] on a local file system.
#[derive(Debug, Clone)]
pub struct FsStore {
    staging: PathBuf,
    objects: PathBuf,
    /// Created on first use.
    quarantine: PathBuf,
    buffers: Arc<Buffers>,
    running: Arc<Running>,
    on_sync: SyncObserver,
}

/// Told how long each chunk's closing `fdatasync` took (for metrics).
#[derive(Clone, Default)]
pub struct SyncObserver(Option<Arc<dyn Fn(std::time::Duration) + Send + Sync>>);

impl SyncObserver {
    pub fn new(f: impl Fn(std::time::Duration) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }
}

impl std::fmt::Debug for SyncObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "SyncObserver" } else { "None" })
    }
}

impl FsStore {
    /// Opens (creating) the store under `root`.
    pub fn open(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref();
        let staging = root.join("staging");
        let objects = root.join("objects");
        for dir in [&staging, &objects] {
            std::fs::create_dir_all(dir)?;
        }
        fsync_dir(root)?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        Ok(Self {
            staging,
            objects,
            quarantine: root.join("quarantine"),
            buffers: Arc::default(),
            running: Arc::default(),
            on_sync: SyncObserver::default(),
        })
    }

    /// Reports every chunk's `fdatasync` duration to `observer`.
    pub fn with_sync_observer(mut self, observer: SyncObserver) -> Self {
        self.on_sync = observer;
        self
    }

    fn staged(&self, id: &BlobId) -> PathBuf {
        self.staging.join(id.as_str())
    }

    fn published(&self, id: &BlobId) -> PathBuf {
        self.shard(id).join(id.as_str())
    }

    fn shard(&self, id: &BlobId) -> PathBuf {
        let s = id.as_str();
        self.objects.join(&s[..s.len().min(2)])
    }

    /// Opens the staged file for writing; creates it (durably) at offset 0.
    fn open_staged(&self, id: &BlobId, offset: u64) -> Result<Files, StorageError> {
        let path = self.staged(id);
        let buffered = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && offset == 0 => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                fsync_dir(&self.staging)?;
                f
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StorageError::NotFound),
            Err(e) => return Err(e.into()),
        };
        Ok(Files {
            direct: open_direct(&path),
            buffered,
        })
    }

    /// Moves the staged or published file of `id` to `quarantine/`, with
    /// `note` next to it, durably.
    fn quarantine_blocking(&self, id: &BlobId, note: &str) -> Result<bool, StorageError> {
        let from = [self.staged(id), self.published(id)]
            .into_iter()
            .find(|p| p.exists());
        let Some(from) = from else { return Ok(false) };
        if !self.quarantine.exists() {
            std::fs::create_dir_all(&self.quarantine)?;
            if let Some(root) = self.quarantine.parent() {
                fsync_dir(root)?;
            }
        }
        let why = self.quarantine.join(format!("{}.why", id.as_str()));
        let mut f = File::create(&why)?;
        io::Write::write_all(&mut f, note.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&from, self.quarantine.join(id.as_str()))?;
        fsync_dir(&self.quarantine)?;
        if let Some(dir) = from.parent() {
            fsync_dir(dir)?;
        }
        Ok(true)
    }

    fn list_published_blocking(&self) -> Result<Vec<(BlobId, u64)>, StorageError> {
        let mut out = Vec::new();
        for shard in std::fs::read_dir(&self.objects)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                match entry.file_name().to_str().and_then(BlobId::new) {
                    Some(id) => out.push((id, entry.metadata()?.len())),
                    None => tracing::warn!(name = ?entry.path(), "stray file in objects ignored"),
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn publish_blocking(&self, id: &BlobId, size: u64) -> Result<(), StorageError> {
        let staged = self.staged(id);
        let file = match OpenOptions::new().write(true).open(&staged) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return if self.published(id).exists() {
                    Ok(())
                } else {
                    Err(StorageError::NotFound)
                };
            }
            Err(e) => return Err(e.into()),
        };
        // Bytes past `size` are dropped; bytes missing below it are an
        // error, never zeros: every acknowledged byte was synced into this
        // file, so a short file means some were lost, and publishing it
        // would hide that (the S3 store refuses the same way).
        let held = file.metadata()?.len();
        if held < size {
            return Err(StorageError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "staged {} holds {held} bytes, fewer than the {size} committed",
                    id.as_str()
                ),
            )));
        }
        file.set_len(size)?;
        file.sync_all()?;
        let shard = self.shard(id);
        if !shard.exists() {
            std::fs::create_dir_all(&shard)?;
            fsync_dir(&self.objects)?;
        }
        std::fs::rename(&staged, self.published(id))?;
        fsync_dir(&shard)?;
        fsync_dir(&self.staging)?;
        Ok(())
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FsStore {
    /// [`BlobStore::write_at`] into `files`, but for giving back a failed
    /// write's space.
    async fn write_blocks(
        &self,
        files: &Arc<Opening>,
        offset: u64,
        mut body: ByteStream,
    ) -> Result<u64, StorageError> {
        let _writing = Writing::enter(&self.buffers);
        let (size, depth) = self.buffers.plan();
        // Up to `depth` blocks in flight on the blocking pool while the
        // next one fills; they write disjoint ranges, in any order.
        let mut inflight: VecDeque<JoinHandle<(AlignedBuf, Result<(), StorageError>)>> = VecDeque::new();
        let mut buf: Option<AlignedBuf> = None;
        let mut pos = offset;
        let outcome: Result<(), StorageError> = async {
            while let Some(item) = body.next().await {
                let frame = item.map_err(StorageError::Body)?;
                let mut rest = &frame[..];
                while !rest.is_empty() {
                    let block = buf.get_or_insert_with(|| self.buffers.take(size, pos));
                    rest = &rest[block.push(rest)..];
                    if block.is_full() {
                        let full = buf.take().expect("a block is being filled");
                        if inflight.len() >= depth
                            && let Some(h) = inflight.pop_front()
                        {
                            self.buffers.settle(h.await)?;
                        }
                        let at = pos;
                        pos += full.filled().len() as u64;
                        let files = files.clone();
                        inflight.push_back(spawn_blocking(move || {
                            #[cfg(test)]
                            tests::stall_once(&files.id);
                            let r = files.get().and_then(|f| Ok(f.write_block(full.filled(), at)?));
                            (full, r)
                        }));
                        // With `depth` 0 a write holds one block: it is
                        // written before the body is read on.
                        if depth == 0
                            && let Some(h) = inflight.pop_front()
                        {
                            self.buffers.settle(h.await)?;
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        // Never return while a write is still running: a later request at
        // the same offset must not race with this one's stale block.
        let mut last = Ok(());
        for h in inflight {
            let r = self.buffers.settle(h.await);
            if last.is_ok() {
                last = r;
            }
        }
        let tail = buf.take();
        if let Err(e) = outcome {
            if let Some(t) = tail {
                self.buffers.put(t);
            }
            return Err(e);
        }
        last?;

        let tail_len = tail.as_ref().map_or(0, |t| t.filled().len() as u64);
        let end = pos + tail_len;
        let on_sync = self.on_sync.clone();
        let files = files.clone();
        let (back, synced) = spawn_blocking(move || {
            let r = files.get().and_then(|files| {
                if let Some(t) = &tail {
                    files.write_tail(t.filled(), pos)?;
                }
                let started = std::time::Instant::now();
                files.buffered.sync_data()?;
                if let Some(f) = &on_sync.0 {
                    f(started.elapsed());
                }
                Ok(())
            });
            (tail, r)
        })
        .await
        .map_err(io::Error::other)?;
        if let Some(t) = back {
            self.buffers.put(t);
        }
        synced?;
        Ok(end - offset)
    }
}

#[async_trait::async_trait]
impl BlobStore for FsStore {
    /// A failed write gives back the space its bytes took (the file is cut
    /// at `offset`): on a full disk, the part of a chunk that did fit would
    /// otherwise keep the room that other uploads' smaller chunks need,
    /// until the same session retries (found by the full-disk test).
    ///
    /// The cut's job holds this write's place in [`Running`] until it is
    /// done: if the request is dropped while the cut waits in the blocking
    /// pool (hyper drops a chunked request whose client leaves), a retry of
    /// the chunk would otherwise write, sync and acknowledge its bytes, and
    /// the late cut would take them away (found in review).
    async fn write_at(&self, id: &BlobId, offset: u64, body: ByteStream) -> Result<u64, StorageError> {
        let (serial, done) = self.running.enter(id).await;
        let files = Arc::new(Opening {
            store: self.clone(),
            id: id.clone(),
            offset,
            files: std::sync::OnceLock::new(),
            serial,
            _done: done.drop_guard(),
        });
        let result = self.write_blocks(&files, offset, body).await;
        if result.is_err() {
            let path = self.staged(id);
            let cut = spawn_blocking(move || {
                #[cfg(test)]
                tests::stall_once(&files.id);
                let _place = files;
                let f = OpenOptions::new().write(true).open(&path)?;
                if f.metadata()?.len() > offset {
                    f.set_len(offset)?;
                }
                Ok::<(), io::Error>(())
            })
            .await;
            if let Ok(Err(e)) = cut
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(blob = id.as_str(), error = %e, "could not cut a failed write's bytes");
            }
        }
        result
    }

    async fn read_at(&self, id: &BlobId, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        let mut file = match tokio::fs::File::open(self.published(id)).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match tokio::fs::File::open(self.staged(id)).await {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StorageError::NotFound),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        file.seek(io::SeekFrom::Start(offset)).await?;
        use tokio::io::AsyncReadExt;
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), READ_BLOCK);
        Ok(Box::pin(stream))
    }

    async fn publish(&self, id: &BlobId, size: u64) -> Result<(), StorageError> {
        let this = self.clone();
        let id = id.clone();
        spawn_blocking(move || this.publish_blocking(&id, size))
            .await
            .map_err(io::Error::other)?
    }

    async fn delete(&self, id: &BlobId) -> Result<(), StorageError> {
        for path in [self.staged(id), self.published(id)] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn list_staged(&self) -> Result<Vec<BlobId>, StorageError> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.staging).await?;
        while let Some(entry) = dir.next_entry().await? {
            match entry.file_name().to_str().and_then(BlobId::new) {
                Some(id) => out.push(id),
                None => tracing::warn!(name = ?entry.file_name(), "stray file in staging ignored"),
            }
        }
        out.sort();
        Ok(out)
    }

    async fn staged_size(&self, id: &BlobId) -> Result<Option<u64>, StorageError> {
        match tokio::fs::metadata(self.staged(id)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_published(&self) -> Result<Vec<(BlobId, u64)>, StorageError> {
        let this = self.clone();
        spawn_blocking(move || this.list_published_blocking())
            .await
            .map_err(io::Error::other)?
    }

    async fn quarantine(&self, id: &BlobId, note: &str) -> Result<bool, StorageError> {
        let (this, id, note) = (self.clone(), id.clone(), note.to_owned());
        spawn_blocking(move || this.quarantine_blocking(&id, &note))
            .await
            .map_err(io::Error::other)?
    }

    async fn quarantined(&self, id: &BlobId) -> Result<bool, StorageError> {
        Ok(tokio::fs::try_exists(self.quarantine.join(id.as_str())).await?)
    }
}

/// How many bytes the block starting at file offset `pos` takes: up to the
/// next [`ALIGN`] boundary (written through the page cache) when `pos` is
/// not aligned, so that every later block is aligned for `O_DIRECT`.
fn block_len(pos: u64, size: usize) -> usize {
    match (pos % ALIGN as u64) as usize {
        0 => size,
        r => ALIGN - r,
    }
}

/// The staged file of one write, opened by the first blocking job that
/// needs it rather than by a blocking job of its own: with 256 uploads at
/// once a 1 MiB chunk is 16 small blocks, and every hand-off to the blocking
/// pool costs two thread switches. Opening again after a failure is fine:
/// the write fails with the first error anyway.
///
/// What it changes: a write at a later offset of a blob with no staged
/// file (which a session never has) learns [`StorageError::NotFound`] only
/// once a block of its body has arrived, and a body that fails before
/// that reports the body's error instead.
struct Opening {
    store: FsStore,
    id: BlobId,
    offset: u64,
    files: std::sync::OnceLock<Files>,
    /// This write's entry in [`Running`], given back with the last job.
    serial: u64,
    _done: tokio_util::sync::DropGuard,
}

impl Opening {
    /// Blocking.
    fn get(&self) -> Result<&Files, StorageError> {
        if let Some(f) = self.files.get() {
            return Ok(f);
        }
        let opened = self.store.open_staged(&self.id, self.offset)?;
        // Two jobs may race here; both files are the same, one is kept.
        Ok(self.files.get_or_init(|| opened))
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        self.store.running.leave(&self.id, self.serial);
    }
}

/// The writes whose blocking jobs may still run, one per blob.
///
/// A write awaits its jobs before it returns, but a request whose client
/// leaves after sending the whole body is dropped by hyper (seen: no
/// answer, no log line), and with it the write while its jobs run on. The
/// session's lock goes with the request, and a retry of the same chunk
/// could then write its bytes while a stale job still writes the old
/// ones to the same place, after them. So a write to a blob first waits
/// for every job of the one before it to end.
#[derive(Debug, Default)]
struct Running {
    writes: std::sync::Mutex<std::collections::HashMap<BlobId, (u64, tokio_util::sync::CancellationToken)>>,
    serials: std::sync::atomic::AtomicU64,
}

impl Running {
    /// Waits until no earlier write to `id` has a job left, then records
    /// this one: its serial, and the token its jobs cancel when done.
    async fn enter(&self, id: &BlobId) -> (u64, tokio_util::sync::CancellationToken) {
        loop {
            let earlier = {
                let mut writes = self.writes.lock().expect("running writes poisoned");
                match writes.get(id) {
                    Some((_, done)) if !done.is_cancelled() => done.clone(),
                    _ => {
                        let serial = self.serials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let done = tokio_util::sync::CancellationToken::new();
                        writes.insert(id.clone(), (serial, done.clone()));
                        return (serial, done);
                    }
                }
            };
            earlier.cancelled().await;
        }
    }

    /// Forgets write `serial` of `id` (its last job ended), unless a later
    /// write has taken its place.
    fn leave(&self, id: &BlobId, serial: u64) {
        let mut writes = self.writes.lock().expect("running writes poisoned");
        if writes.get(id).is_some_and(|(s, _)| *s == serial) {
            writes.remove(id);
        }
    }
}

/// One staged file, opened twice: through the page cache for unaligned
/// heads and tails (and `fdatasync`), and with `O_DIRECT` for aligned
/// blocks when the file system allows it.
///
/// Why `O_DIRECT`: copying into the page cache was 54% of the node's CPU
/// in a profile of a 1 GiB upload, and pages of deleted files go back to the
/// hypervisor, so that copy often lands on never-touched memory (300 MB/s
/// on the VM we measure on, while the disk takes 1.6 GB/s). A direct write
/// goes from our reused block to the disk. Durability still comes from
/// `fdatasync` (device cache flush, allocation metadata), which is per
/// inode and so covers both descriptors.
struct Files {
    buffered: File,
    direct: Option<File>,
}

impl Files {
    /// Writes a whole block at `pos`: directly when aligned, else (or when
    /// the file system refuses the direct write) through the page cache,
    /// with writeback started at once.
    fn write_block(&self, data: &[u8], pos: u64) -> io::Result<()> {
        if let Some(direct) = &self.direct
            && pos.is_multiple_of(ALIGN as u64)
            && data.len().is_multiple_of(ALIGN)
        {
            match direct.write_all_at(data, pos) {
                Ok(()) => return Ok(()),
                // Alignment the device does not accept: the page cache
                // takes any write, and overwrites whatever part went out.
                Err(e) if e.raw_os_error() == Some(EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        self.buffered.write_all_at(data, pos)?;
        start_writeback(&self.buffered, pos, data.len() as u64);
        Ok(())
    }

    /// The last, partial block: its aligned part directly, the rest (less
    /// than [`ALIGN`] bytes) through the page cache.
    fn write_tail(&self, data: &[u8], pos: u64) -> io::Result<()> {
        let aligned = data.len() / ALIGN * ALIGN;
        let (head, rest) = data.split_at(aligned);
        if !head.is_empty() {
            self.write_block(head, pos)?;
        }
        if !rest.is_empty() {
            self.buffered.write_all_at(rest, pos + aligned as u64)?;
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
const EINVAL: i32 = libc::EINVAL;
#[cfg(not(target_os = "linux"))]
const EINVAL: i32 = 22;

/// The file opened with `O_DIRECT`, or `None` where the file system has no
/// direct I/O (tmpfs, some FUSE and network file systems).
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

/// A write block whose usable part starts on an [`ALIGN`] boundary, as
/// `O_DIRECT` needs of memory too. Safe code: the vector is over-allocated
/// and the block starts at the first aligned byte inside it.
///
/// The vector grows only as bytes are pushed (its capacity never changes),
/// so a new block is not zeroed first: zeroing fresh 64 KiB blocks was 3 %
/// of the node's CPU with 256 uploads at once.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    cap: usize,
    limit: usize,
    /// The bytes of all live blocks of the store this one belongs to.
    account: Arc<std::sync::atomic::AtomicUsize>,
}

impl AlignedBuf {
    #[cfg(test)]
    fn new(cap: usize) -> Self {
        Self::counted(cap, Default::default())
    }

    /// A block whose `cap` bytes count in `account` while it lives.
    fn counted(cap: usize, account: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        let mut raw: Vec<u8> = Vec::with_capacity(cap + ALIGN);
        let start = raw.as_ptr().align_offset(ALIGN);
        raw.resize(start, 0);
        account.fetch_add(cap, std::sync::atomic::Ordering::Relaxed);
        Self {
            raw,
            start,
            cap,
            limit: cap,
            account,
        }
    }

    /// Empties the block and lets it take at most `limit` bytes.
    fn reset(&mut self, limit: usize) {
        self.raw.truncate(self.start);
        self.limit = limit.min(self.cap);
    }

    /// Copies as much of `data` as fits; returns how much that was.
    fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.limit - self.filled().len());
        self.raw.extend_from_slice(&data[..n]);
        n
    }

    fn is_full(&self) -> bool {
        self.filled().len() == self.limit
    }

    fn filled(&self) -> &[u8] {
        &self.raw[self.start..]
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.account
            .fetch_sub(self.cap, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The free list of write blocks, shared by all writes of a store, the
/// number of writes running (which sizes their blocks), and the bytes of
/// all blocks alive (idle ones included).
#[derive(Default)]
struct Buffers {
    free: std::sync::Mutex<Vec<AlignedBuf>>,
    writers: std::sync::atomic::AtomicUsize,
    allocated: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a running write in [`Buffers`] while it lives.
struct Writing<'a>(&'a Buffers);

impl<'a> Writing<'a> {
    fn enter(b: &'a Buffers) -> Self {
        b.writers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(b)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Buffers")
    }
}

impl Buffers {
    /// The block size and the number of blocks in flight for a write
    /// starting now. A lone write keeps [`DEEP`] blocks of 1 MiB in flight:
    /// one 256 KiB direct write at a time kept the disk at ~1.1 GB/s, below
    /// what it does with larger and more outstanding writes (1.4 GB/s for
    /// dd's 4 MiB writes; measured +25% end to end for depth 4, and more
    /// again for 1 MiB blocks); many writes keep the disk busy together
    /// with one small block each.
    ///
    /// Past the writers whose 1 MiB blocks fit the budget one in flight and
    /// one filling, each write holds one block (depth 0): it writes a block
    /// before it reads on, and the block is twice as large. Each block is a
    /// hand-off to the blocking pool and a thread asleep in the kernel, and
    /// with many uploads the others keep the disk busy meanwhile: 256 at
    /// once moved 1054 against 924 MiB/s at 1.09 against 1.43 CPU-s per GiB
    /// (A B, 8 rounds each, same peak RSS; BENCHMARKS.md, session 8).
    fn plan(&self) -> (usize, usize) {
        let writers = self.writers.load(std::sync::atomic::Ordering::Relaxed).max(1);
        let depth = if writers <= DEEP {
            DEEP
        } else if self.block_size(writers, 1) >= WRITE_BLOCK {
            1
        } else {
            0
        };
        (self.block_size(writers, depth), depth)
    }

    /// A power of two between [`MIN_BLOCK`] and [`WRITE_BLOCK`] that keeps
    /// all writes' blocks (`depth` in flight, one filling) within
    /// [`WRITE_BUDGET`].
    fn block_size(&self, writers: usize, depth: usize) -> usize {
        let fair = WRITE_BUDGET / ((depth + 1) * writers);
        let pow2 = if fair.is_power_of_two() {
            fair
        } else {
            fair.next_power_of_two() / 2
        };
        pow2.clamp(MIN_BLOCK, WRITE_BLOCK)
    }

    /// An empty block for bytes from file offset `pos` on: of `size` bytes
    /// (filled up to the next multiple of its size, see [`block_len`]), or
    /// smaller when a new block of `size` would take all blocks alive past
    /// [`WRITE_BUDGET`] and [`IDLE_BYTES`] together (idle blocks are let go
    /// first; a block is never smaller than [`MIN_BLOCK`], so that every
    /// write goes on).
    ///
    /// Why the check: `plan` sizes a write's blocks by the writes running
    /// when it starts, so when hundreds start together, the first ones
    /// plan with few others and take large blocks. 256 uploads started at
    /// once held 83 MiB of blocks at their peak (heaptrack). With the check
    /// the node's peak RSS fell from 150 to 126 MiB at the same throughput
    /// (A B, 6 rounds; BENCHMARKS.md, session 8).
    fn take(&self, size: usize, pos: u64) -> AlignedBuf {
        use std::sync::atomic::Ordering::Relaxed;
        let mut free = self.free.lock().expect("buffer pool poisoned");
        let mut cap = size;
        loop {
            if let Some(i) = free.iter().rposition(|b| b.cap == cap) {
                let mut b = free.swap_remove(i);
                b.reset(block_len(pos, cap));
                return b;
            }
            if self.allocated.load(Relaxed) + cap <= WRITE_BUDGET + IDLE_BYTES || cap <= MIN_BLOCK {
                break;
            }
            // Over the budget: an idle block of another size goes first,
            // then the new block is halved.
            if free.pop().is_none() {
                cap /= 2;
            }
        }
        drop(free);
        let mut b = AlignedBuf::counted(cap, self.allocated.clone());
        b.reset(block_len(pos, cap));
        b
    }

    fn put(&self, b: AlignedBuf) {
        let mut free = self.free.lock().expect("buffer pool poisoned");
        let idle: usize = free.iter().map(|b| b.cap).sum();
        if idle + b.cap <= IDLE_BYTES {
            free.push(b);
        }
    }

    /// Takes back the block of a finished write; the write's outcome.
    fn settle(
        &self,
        done: Result<(AlignedBuf, Result<(), StorageError>), tokio::task::JoinError>,
    ) -> Result<(), StorageError> {
        let (b, r) = done.map_err(io::Error::other)?;
        self.put(b);
        r
    }
}

/// Asks the kernel to start writing a block out now, without waiting, so
/// that the disk works while the rest of the chunk is still arriving and
/// the closing `fdatasync` only waits for the tail. Without it, dirty pages
/// sit in the page cache until the `fdatasync` and the whole chunk's disk
/// write is serialized after its receipt (measured: see BENCHMARKS.md).
/// Only a hint: durability still comes from `fdatasync`, so an error is
/// ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, pos: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a file descriptor `file` keeps open for
    // the duration of the call; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            pos as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _pos: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The blobs whose next job waits, and how long (once each). Keyed by
    /// blob, and one entry per blob, so that tests of this binary running
    /// at the same time neither stall each other's jobs nor take each
    /// other's stall away (one shared slot did: a flaky CI run).
    static STALLS: std::sync::Mutex<Vec<(String, Duration)>> = std::sync::Mutex::new(Vec::new());

    /// Arms a stall of the next job of blob `id`.
    fn stall_next(id: &str, pause: Duration) {
        STALLS.lock().unwrap().push((id.to_owned(), pause));
    }

    pub(super) fn stall_once(id: &BlobId) {
        let stall = {
            let mut stalls = STALLS.lock().unwrap();
            let at = stalls.iter().position(|(blob, _)| blob == id.as_str());
            at.map(|i| stalls.swap_remove(i))
        };
        if let Some((_, pause)) = stall {
            std::thread::sleep(pause);
        }
    }

    /// A write dropped while its block job runs (hyper drops a request
    /// whose client left after sending the whole body) is followed by a
    /// retry of the same chunk with other bytes: the retry waits for the
    /// stale job, so its own bytes are the ones that stay. Without the
    /// wait, the stale block landed after the retry had returned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_write_s_jobs_end_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let id = BlobId::new("dropped").unwrap();
        let len = WRITE_BLOCK + 100;
        stall_next("dropped", Duration::from_millis(400));
        let stale = store.write_at(&id, 0, crate::conformance::body(vec![vec![b'a'; len]]));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), stale)
                .await
                .is_err(),
            "the first write is still waiting for its stalled block"
        );
        let started = std::time::Instant::now();
        let n = store
            .write_at(&id, 0, crate::conformance::body(vec![vec![b'b'; len]]))
            .await
            .unwrap();
        assert_eq!(n, len as u64);
        let waited = started.elapsed();
        // Long enough for a stale job that did not hold the retry back.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stored = crate::conformance::read(&store, &id, 0, len as u64).await;
        assert!(
            stored.iter().all(|&b| b == b'b'),
            "a stale block overwrote the retry"
        );
        assert!(waited >= Duration::from_millis(200), "the retry waited");
        assert!(store.running.writes.lock().unwrap().is_empty());
    }

    /// A failed write gives its bytes' space back with a cut of the file,
    /// and a dropped request can leave that cut waiting in the blocking
    /// pool: a retry of the chunk waits for it, so the late cut cannot take
    /// the retry's acknowledged bytes away. Without the wait the retry
    /// returned at once and the cut emptied it 300 ms later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_write_s_cut_ends_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let id = BlobId::new("cut").unwrap();
        let head = vec![7u8; 2 * ALIGN];
        let at = head.len() as u64;
        store
            .write_at(&id, 0, crate::conformance::body(vec![head.clone()]))
            .await
            .unwrap();
        // No block of the failing write fills, so its cut is the job held.
        stall_next("cut", Duration::from_millis(400));
        let failing = store.write_at(&id, at, crate::conformance::broken_body(vec![vec![b'x'; 5000]]));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), failing)
                .await
                .is_err(),
            "the failed write is still waiting for its cut"
        );
        let retry: Vec<u8> = (0..6000).map(|i| (i % 251) as u8).collect();
        let n = store
            .write_at(&id, at, crate::conformance::body(vec![retry.clone()]))
            .await
            .unwrap();
        assert_eq!(n, retry.len() as u64);
        // Long enough for a cut that did not hold the retry back.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stored = crate::conformance::read(&store, &id, 0, at + retry.len() as u64).await;
        assert_eq!(stored[..head.len()], head[..]);
        assert!(
            stored[head.len()..] == retry[..],
            "the cut took the retry's bytes"
        );
        assert!(store.running.writes.lock().unwrap().is_empty());
    }

    /// A staged file shorter than the size it is published at has lost
    /// acknowledged bytes: publishing refuses rather than pad it with
    /// zeros, and the file stays staged.
    #[tokio::test]
    async fn a_short_staged_file_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let id = BlobId::new("short").unwrap();
        store
            .write_at(&id, 0, crate::conformance::body(vec![vec![5u8; 1000]]))
            .await
            .unwrap();
        let refused = store.publish(&id, 2000).await;
        assert!(matches!(refused, Err(StorageError::Io(_))), "{refused:?}");
        assert!(store.staged(&id).exists() && !store.published(&id).exists());
        store.publish(&id, 1000).await.unwrap();
        assert_eq!(
            crate::conformance::read(&store, &id, 0, 1000).await,
            vec![5u8; 1000]
        );
    }

    /// Writes that start together plan their blocks with fewer writers than
    /// end up running; their first blocks still stay within the budget and
    /// the idle allowance, but for the smallest block each gets over them
    /// (planned sizes alone held 80 MiB at 256 writes, and the test fails
    /// on them), and the account empties when they are gone.
    #[test]
    fn blocks_stay_within_the_budget_when_writes_start_together() {
        use std::sync::atomic::Ordering::Relaxed;
        let b = Buffers::default();
        let mut held = Vec::new();
        for n in 1..=512 {
            b.writers.store(n, Relaxed);
            let (size, _) = b.plan();
            held.push(b.take(size, 0));
            let allocated = b.allocated.load(Relaxed);
            // Over the budget a write still gets its smallest block.
            assert!(
                allocated <= WRITE_BUDGET + IDLE_BYTES + n * MIN_BLOCK,
                "{n} writes hold {allocated} bytes of blocks"
            );
        }
        assert!(held.iter().all(|h| h.cap >= MIN_BLOCK && h.limit == h.cap));
        let some: Vec<AlignedBuf> = held.drain(..8).collect();
        for h in some {
            b.put(h);
        }
        drop(held);
        assert_eq!(
            b.allocated.load(Relaxed),
            b.free.lock().unwrap().iter().map(|h| h.cap).sum::<usize>()
        );
        b.free.lock().unwrap().clear();
        assert_eq!(b.allocated.load(Relaxed), 0);
    }

    /// With many writers at once each write holds one block (depth 0):
    /// the bytes still land where they belong, across frames that split
    /// blocks, from an unaligned offset, and the write returns only once
    /// every block is on disk (its first block's job is held back 300 ms).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_among_many_writes_one_block_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        // As if 300 other writes ran: 64 KiB blocks, none in flight while
        // the next fills.
        store
            .buffers
            .writers
            .store(300, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(store.buffers.plan(), (64 * 1024, 0));
        let id = BlobId::new("many").unwrap();
        let head = vec![9u8; 1000];
        store
            .write_at(&id, 0, crate::conformance::body(vec![head.clone()]))
            .await
            .unwrap();
        let data: Vec<u8> = (0..5 * MIN_BLOCK + 333).map(|i| (i % 253) as u8).collect();
        let frames: Vec<Vec<u8>> = data.chunks(40_000).map(<[u8]>::to_vec).collect();
        stall_next("many", Duration::from_millis(300));
        let started = std::time::Instant::now();
        let n = store
            .write_at(&id, head.len() as u64, crate::conformance::body(frames))
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "the held-back block was awaited"
        );
        let stored = crate::conformance::read(&store, &id, 0, (head.len() + data.len()) as u64).await;
        assert_eq!(stored[..head.len()], head[..]);
        assert!(stored[head.len()..] == data[..], "the bytes after the head");
    }

    #[test]
    fn blocks_after_an_unaligned_offset_are_aligned() {
        assert_eq!(block_len(0, WRITE_BLOCK), WRITE_BLOCK);
        assert_eq!(block_len(1, WRITE_BLOCK), ALIGN - 1);
        assert_eq!(block_len(ALIGN as u64 + 5, MIN_BLOCK), ALIGN - 5);
        assert_eq!(block_len(3 * ALIGN as u64, MIN_BLOCK), MIN_BLOCK);
        let mut b = AlignedBuf::new(WRITE_BLOCK);
        assert_eq!(b.filled().as_ptr().align_offset(ALIGN), 0);
        b.reset(3);
        assert_eq!(b.push(b"abcd"), 3);
        assert!(b.is_full());
        assert_eq!(b.filled(), b"abc");
        let before = b.filled().as_ptr();
        b.reset(WRITE_BLOCK);
        assert!(b.filled().is_empty());
        let big = vec![5u8; WRITE_BLOCK + 1];
        assert_eq!(b.push(&big), WRITE_BLOCK);
        assert!(b.is_full());
        assert_eq!(b.filled().as_ptr(), before, "a full block never moves");
    }

    /// Blocks shrink as writers grow, within the budget and the bounds;
    /// past the writers that 1 MiB blocks two deep fit, a block is written
    /// before the next fills (depth 0) and is twice as large.
    #[test]
    fn block_size_follows_the_number_of_writers() {
        let b = Buffers::default();
        let plans: Vec<(usize, usize)> = [1usize, 4, 5, 16, 17, 64, 65, 128, 256, 10_000]
            .into_iter()
            .map(|n| {
                b.writers.store(n, std::sync::atomic::Ordering::Relaxed);
                b.plan()
            })
            .collect();
        let k = 1024;
        let want = [
            (1024 * k, DEEP),
            (1024 * k, DEEP),
            (1024 * k, 1),
            (1024 * k, 1),
            (1024 * k, 0),
            (512 * k, 0),
            (256 * k, 0),
            (256 * k, 0),
            (128 * k, 0),
            (64 * k, 0),
        ];
        assert_eq!(plans, want);
        for n in [1, 3, 4, 5, 64, 100, 128, 256] {
            b.writers.store(n, std::sync::atomic::Ordering::Relaxed);
            let (size, depth) = b.plan();
            assert!(size * (depth + 1) * n <= WRITE_BUDGET.max((depth + 1) * n * MIN_BLOCK));
        }
    }

    /// Regression (the full-disk test): a failed write gives back the
    /// space of the bytes it got in.
    #[tokio::test]
    async fn a_failed_write_gives_its_space_back() {
        use crate::conformance::{body, broken_body};
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let id = BlobId::new("cut").unwrap();
        store.write_at(&id, 0, body(vec![vec![1; 100]])).await.unwrap();
        let err = store
            .write_at(&id, 100, broken_body(vec![vec![2; 3 * WRITE_BLOCK]]))
            .await;
        assert!(matches!(err, Err(StorageError::Body(_))));
        let len = std::fs::metadata(dir.path().join("staging/cut")).unwrap().len();
        assert_eq!(len, 100, "the failed write's bytes are cut off");
    }

    /// Whole blocks and a tail land where asked on whichever path the
    /// file system allows (direct on ext4, the page cache on tmpfs).
    #[test]
    fn blocks_and_tails_land_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        let files = Files {
            buffered: OpenOptions::new().write(true).open(&path).unwrap(),
            direct: open_direct(&path),
        };
        let mut data = AlignedBuf::new(WRITE_BLOCK);
        data.push(&vec![7u8; WRITE_BLOCK]);
        files.write_block(data.filled(), 0).unwrap();
        files.write_tail(b"tail", WRITE_BLOCK as u64).unwrap();
        files.buffered.sync_data().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), WRITE_BLOCK + 4);
        assert!(back[..WRITE_BLOCK].iter().all(|&b| b == 7));
        assert_eq!(&back[WRITE_BLOCK..], b"tail");
        eprintln!("direct I/O available: {}", files.direct.is_some());
    }
}
