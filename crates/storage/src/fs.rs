//! Local-disk [`BlobStore`]: `staging/<id>` while open, `objects/<xx>/<id>`
//! once published.
//!
//! Writes go at explicit offsets (`pwrite`), never in append mode, so a
//! retried chunk overwrites exactly the bytes of the failed attempt. A
//! write is durable when `fdatasync` returns; a new file's directory entry
//! is made durable by fsyncing its directory. Publishing truncates to the
//! committed size, fsyncs, renames and fsyncs both directories — the
//! pattern of garage's block manager.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncSeekExt;
use tokio::task::{JoinHandle, spawn_blocking};

use crate::{BlobId, BlobStore, ByteStream, StorageError};

/// Bytes gathered from the body before one `pwrite`. Two such blocks per
/// request at most are in memory: one being written, one being filled.
const WRITE_BLOCK: usize = 256 * 1024;
const READ_BLOCK: usize = 64 * 1024;

/// A [`BlobStore`] on a local file system.
#[derive(Debug, Clone)]
pub struct FsStore {
    staging: PathBuf,
    objects: PathBuf,
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
        Ok(Self { staging, objects })
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
    fn open_staged(&self, id: &BlobId, offset: u64) -> Result<File, StorageError> {
        let path = self.staged(id);
        match OpenOptions::new().write(true).open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound && offset == 0 => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                fsync_dir(&self.staging)?;
                Ok(f)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound),
            Err(e) => Err(e.into()),
        }
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

fn join<T>(r: Result<io::Result<T>, tokio::task::JoinError>) -> io::Result<T> {
    r.map_err(io::Error::other)?
}

#[async_trait::async_trait]
impl BlobStore for FsStore {
    async fn write_at(&self, id: &BlobId, offset: u64, mut body: ByteStream) -> Result<u64, StorageError> {
        let this = self.clone();
        let idc = id.clone();
        let file = spawn_blocking(move || this.open_staged(&idc, offset))
            .await
            .map_err(io::Error::other)??;
        let file = Arc::new(file);

        // One block in flight on the blocking pool while the next one fills.
        let mut inflight: Option<JoinHandle<io::Result<()>>> = None;
        let mut buf = BytesMut::new();
        let mut pos = offset;
        let outcome: Result<(), StorageError> = async {
            while let Some(item) = body.next().await {
                buf.extend_from_slice(&item.map_err(StorageError::Body)?);
                if buf.len() >= WRITE_BLOCK {
                    let block = buf.split().freeze();
                    if let Some(h) = inflight.take() {
                        join(h.await)?;
                    }
                    inflight = Some(spawn_pwrite(file.clone(), block.clone(), pos));
                    pos += block.len() as u64;
                }
            }
            Ok(())
        }
        .await;
        // Never return while a write is still running: a later request at
        // the same offset must not race with this one's stale block.
        let last = match inflight.take() {
            Some(h) => join(h.await),
            None => Ok(()),
        };
        outcome?;
        last?;

        let tail = buf.freeze();
        let end = pos + tail.len() as u64;
        join(
            spawn_blocking(move || {
                file.write_all_at(&tail, pos)?;
                file.sync_data()
            })
            .await,
        )?;
        Ok(end - offset)
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
}

fn spawn_pwrite(file: Arc<File>, block: Bytes, pos: u64) -> JoinHandle<io::Result<()>> {
    spawn_blocking(move || file.write_all_at(&block, pos))
}
