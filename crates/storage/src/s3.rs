//! S3-compatible [`BlobStore`]: a session is an S3 multipart upload, and
//! nothing of it lives only on one node.
//!
//! Our chunks (at most 4 MiB) are below S3's 5 MiB minimum part, so they
//! are coalesced into parts of one fixed size (`part_size`, equal parts, so
//! the 10,000-part limit is reached only past `10,000 × part_size`). Every
//! object of a session in progress lives under `staging/<id>/`:
//!
//! * `c<offset>` — each chunk as written (the PUT is the durability point:
//!   a 200 follows it). Kept until publication, so replays, the
//!   whole-object MD5 check and any node can read every byte back.
//! * `upload` — the multipart upload id, created when the first part fills.
//! * `p<number>` — the part id of each part uploaded, so that any node can
//!   complete the upload (object_store's `MultipartStore` exposes the ids
//!   as plain strings, which is why it is used rather than opendal).
//!
//! A blob found damaged is moved (copied, then deleted) under
//! `quarantine/<id>` with a `quarantine/<id>.why` note.
//!
//! The node writing a session keeps what it knows of it between chunks
//! ([`Known`]): the chunk map, the upload and part ids, and the bytes of
//! the chunks not yet in a part (within [`TAIL_BUDGET`] for all sessions),
//! so a chunk costs its PUT — plus, when it fills a part, that part's
//! upload from memory — instead of a LIST, the GETs of the part's earlier
//! chunks and the GET of the upload id. What is kept is used only when it
//! ends where the chunk starts; otherwise (another node wrote since, a
//! restart) the listing is read again. The bucket stays the only truth.
//!
//! Publication uploads the tail as the last part, completes the multipart
//! upload into `blobs/<id>` (objects smaller than one part are a single
//! PUT) and deletes the staging objects. Part sizes are checked here,
//! never left to the server: some S3 servers do not enforce the minimum.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};

use crate::{BlobId, BlobStore, ByteStream, StorageError};

/// S3's smallest part (but the last).
pub const MIN_PART: u64 = 5 * 1024 * 1024;

/// Where and how to reach the bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub part_size: u64,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Parses `s3://BUCKET?endpoint=http://HOST:PORT&region=R`.
    pub fn parse(
        url: &str,
        access_key: Option<String>,
        secret_key: Option<String>,
        part_size: u64,
    ) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or("an S3 storage URL starts with s3://")?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains('/') {
            return Err(format!(
                "storage {url:?} names no bucket: write s3://BUCKET?endpoint=http://HOST:PORT&region=REGION"
            ));
        }
        let mut endpoint = None;
        let mut region = "us-east-1".to_owned();
        for (k, v) in form_pairs(query) {
            match k.as_str() {
                "endpoint" => endpoint = Some(v),
                "region" => region = v,
                other => {
                    return Err(format!(
                        "unknown S3 option {other:?}: only endpoint and region are known"
                    ));
                }
            }
        }
        let (Some(access_key), Some(secret_key)) = (access_key, secret_key) else {
            return Err("S3 storage needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or s3_access_key and s3_secret_key in the config file)".into());
        };
        if !(MIN_PART..=5 << 30).contains(&part_size) {
            return Err(format!(
                "s3_part_size must be between 5 MiB and 5 GiB, got {part_size}"
            ));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            endpoint,
            region,
            access_key,
            secret_key,
            part_size,
        })
    }
}

fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A [`BlobStore`] in an S3-compatible bucket.
#[derive(Clone)]
pub struct S3Store {
    s3: Arc<AmazonS3>,
    part: u64,
    /// What this node knows of the sessions it writes (see the module doc).
    known: Arc<Mutex<HashMap<String, Known>>>,
    /// Bytes of chunks held in [`Known::tail`]s, all sessions together.
    held: Arc<AtomicU64>,
}

/// Chunk bytes kept in memory for all sessions of a node, at most: beyond
/// it a part's earlier chunks are read back from the bucket.
pub const TAIL_BUDGET: u64 = 64 << 20;

/// Sessions whose state a node keeps between chunks, at most.
const KNOWN_MAX: usize = 4096;

/// A session as this node left it after its last chunk.
struct Known {
    staged: Staged,
    /// Where the chain of chunks ends: the next chunk's offset.
    end: u64,
    /// The chunks since the last part boundary that are in memory.
    tail: Vec<Held>,
}

/// A chunk's bytes, counted against [`TAIL_BUDGET`] while kept (`held`),
/// or only for the write that brought them.
struct Held {
    offset: u64,
    bytes: Bytes,
    held: Option<Arc<AtomicU64>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(h) = &self.held {
            h.fetch_sub(self.bytes.len() as u64, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("part", &self.part)
            .finish_non_exhaustive()
    }
}

fn io_err(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound,
        e => StorageError::Io(io::Error::other(e)),
    }
}

fn chunk_key(id: &BlobId, offset: u64) -> Path {
    Path::from(format!("staging/{}/c{offset:020}", id.as_str()))
}

fn staging(id: &BlobId) -> Path {
    Path::from(format!("staging/{}", id.as_str()))
}

fn final_key(id: &BlobId) -> Path {
    Path::from(format!("blobs/{}", id.as_str()))
}

/// What a session has under `staging/<id>/`.
#[derive(Default)]
struct Staged {
    /// offset → length of each chunk object.
    chunks: BTreeMap<u64, u64>,
    upload: Option<IdRecord>,
    /// part number → part id.
    parts: BTreeMap<usize, IdRecord>,
    any: bool,
}

/// An upload or part id: known, or only listed (its object is read when
/// needed — at completion, not on every chunk's listing).
enum IdRecord {
    Listed(Path),
    Known(String),
}

impl S3Store {
    /// Connects to the bucket (and checks that it answers).
    pub async fn open(cfg: S3Config) -> Result<Self, StorageError> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key)
            .with_secret_access_key(&cfg.secret_key)
            .with_virtual_hosted_style_request(false);
        if let Some(ep) = &cfg.endpoint {
            b = b.with_endpoint(ep).with_allow_http(ep.starts_with("http://"));
        }
        let s3 = b.build().map_err(io_err)?;
        let store = Self {
            s3: Arc::new(s3),
            part: cfg.part_size,
            known: Arc::default(),
            held: Arc::default(),
        };
        store
            .s3
            .list_with_delimiter(Some(&Path::from("staging")))
            .await
            .map_err(io_err)?;
        Ok(store)
    }

    async fn staged(&self, id: &BlobId) -> Result<Staged, StorageError> {
        let listing = self
            .s3
            .list_with_delimiter(Some(&staging(id)))
            .await
            .map_err(io_err)?;
        let mut st = Staged {
            any: !listing.objects.is_empty(),
            ..Default::default()
        };
        for meta in listing.objects {
            let name = meta.location.filename().unwrap_or_default().to_owned();
            if let Some(off) = name.strip_prefix('c').and_then(|n| n.parse::<u64>().ok()) {
                st.chunks.insert(off, meta.size);
            } else if let Some(n) = name.strip_prefix('p').and_then(|n| n.parse::<usize>().ok()) {
                st.parts.insert(n, IdRecord::Listed(meta.location));
            } else if name == "upload" {
                st.upload = Some(IdRecord::Listed(meta.location));
            }
        }
        Ok(st)
    }

    /// The id a record stands for (read from the bucket if only listed).
    async fn resolve(&self, record: &IdRecord) -> Result<String, StorageError> {
        let at = match record {
            IdRecord::Known(id) => return Ok(id.clone()),
            IdRecord::Listed(at) => at,
        };
        let bytes = self
            .s3
            .get(at)
            .await
            .map_err(io_err)?
            .bytes()
            .await
            .map_err(io_err)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The bytes `[from, to)` from the chain of chunk objects; errors if a
    /// byte is missing (the chain is the only copy before publication).
    async fn gather(
        &self,
        id: &BlobId,
        chunks: &BTreeMap<u64, u64>,
        tail: &[Held],
        from: u64,
        to: u64,
    ) -> Result<BytesMut, StorageError> {
        let mut out = BytesMut::with_capacity((to - from) as usize);
        let mut at = from;
        while at < to {
            // The chunk that holds `at`: the last one starting at or before it.
            let (&start, &len) = chunks
                .range(..=at)
                .next_back()
                .filter(|(s, l)| at < *s + *l)
                .ok_or_else(|| {
                    StorageError::Io(io::Error::other(format!(
                        "staged bytes at {at} of {} are missing",
                        id.as_str()
                    )))
                })?;
            let end = (start + len).min(to);
            let range = (at - start) as usize..(end - start) as usize;
            match tail
                .iter()
                .find(|h| h.offset == start && h.bytes.len() as u64 == len)
            {
                Some(h) => out.extend_from_slice(&h.bytes[range]),
                None => {
                    let bytes = self
                        .s3
                        .get_range(&chunk_key(id, start), range.start as u64..range.end as u64)
                        .await
                        .map_err(io_err)?;
                    out.extend_from_slice(&bytes);
                }
            }
            at = end;
        }
        Ok(out)
    }

    async fn upload_id(&self, id: &BlobId, st: &mut Staged) -> Result<String, StorageError> {
        if let Some(u) = &st.upload {
            let u = self.resolve(u).await?;
            st.upload = Some(IdRecord::Known(u.clone()));
            return Ok(u);
        }
        let u = self.s3.create_multipart(&final_key(id)).await.map_err(io_err)?;
        self.s3
            .put(
                &Path::from(format!("staging/{}/upload", id.as_str())),
                PutPayload::from(u.clone()),
            )
            .await
            .map_err(io_err)?;
        st.upload = Some(IdRecord::Known(u.clone()));
        Ok(u)
    }

    /// Uploads part `number` (1-based) with `data` and records its id.
    async fn put_part(
        &self,
        id: &BlobId,
        st: &mut Staged,
        number: usize,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let upload = self.upload_id(id, st).await?;
        let part = self
            .s3
            .put_part(&final_key(id), &upload, number - 1, PutPayload::from(data))
            .await
            .map_err(io_err)?;
        let record = Path::from(format!("staging/{}/p{number:05}", id.as_str()));
        self.s3
            .put(&record, PutPayload::from(part.content_id.clone()))
            .await
            .map_err(io_err)?;
        st.parts.insert(number, IdRecord::Known(part.content_id));
        Ok(())
    }

    /// Drops what this node kept of a session, returning it.
    fn forget(&self, id: &BlobId) -> Option<Known> {
        self.known.lock().ok()?.remove(id.as_str())
    }

    fn remember(&self, id: &BlobId, k: Known) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= KNOWN_MAX {
                // Sessions not written for a while are as good as any to
                // drop: what is kept is only a shortcut.
                known.clear();
            }
            known.insert(id.as_str().to_owned(), k);
        }
    }

    /// Keeps a chunk's bytes if the budget has room for them.
    fn hold(&self, offset: u64, bytes: Bytes) -> Option<Held> {
        let n = bytes.len() as u64;
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                (h + n <= TAIL_BUDGET).then_some(h + n)
            })
            .ok()?;
        Some(Held {
            offset,
            bytes,
            held: Some(self.held.clone()),
        })
    }

    async fn clear_staging(&self, id: &BlobId) -> Result<(), StorageError> {
        let listing = self
            .s3
            .list_with_delimiter(Some(&staging(id)))
            .await
            .map_err(io_err)?;
        for meta in listing.objects {
            self.s3.delete(&meta.location).await.map_err(io_err)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    async fn write_at(&self, id: &BlobId, offset: u64, mut body: ByteStream) -> Result<u64, StorageError> {
        // Taken out while the chunk is written: a failure leaves nothing
        // kept, and the next chunk reads the listing.
        let known = self.forget(id).filter(|k| k.end == offset);
        let (mut st, mut tail) = match known {
            Some(k) => (k.staged, k.tail),
            None => (self.staged(id).await?, Vec::new()),
        };
        if offset > 0 && !st.any {
            return Err(StorageError::NotFound);
        }
        // The request body is at most one chunk (the caller bounds it).
        let mut chunk = BytesMut::new();
        while let Some(frame) = body.next().await {
            chunk.extend_from_slice(&frame.map_err(StorageError::Body)?);
        }
        let chunk = chunk.freeze();
        let len = chunk.len() as u64;
        st.chunks.insert(offset, len);
        st.any = true;
        let end = offset + len;
        let current = self.hold(offset, chunk.clone()).unwrap_or_else(|| Held {
            offset,
            bytes: chunk.clone(),
            held: None,
        });
        tail.push(current);
        // The chunk's PUT (its durability point) and the upload of a part
        // it fills (from the chunks in memory) run at once; the chunk is
        // acknowledged when both are done, so a failure of either is a
        // failed write and its retry does both again.
        let put = async {
            self.s3
                .put(&chunk_key(id, offset), PutPayload::from(chunk))
                .await
                .map_err(io_err)
        };
        let parts = async {
            for number in offset / self.part + 1..=end / self.part {
                let from = (number - 1) * self.part;
                let data = self.gather(id, &st.chunks, &tail, from, from + self.part).await?;
                self.put_part(id, &mut st, number as usize, data.freeze()).await?;
            }
            Ok::<_, StorageError>(())
        };
        let (put, parts) = tokio::join!(put, parts);
        put?;
        parts?;
        // Kept: chunks in the budget that reach into the part still open.
        let open_from = end / self.part * self.part;
        tail.retain(|h| h.held.is_some() && h.offset + h.bytes.len() as u64 > open_from);
        self.remember(
            id,
            Known {
                staged: st,
                end,
                tail,
            },
        );
        Ok(len)
    }

    fn abandon(&self, id: &BlobId) {
        self.forget(id);
    }

    /// Streams: a published object by ranged GET as the server sends it,
    /// a staged one chunk object at a time — never the whole range at once.
    async fn read_at(&self, id: &BlobId, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        let done = final_key(id);
        match self.s3.head(&done).await {
            Ok(meta) => {
                let end = (offset + len).min(meta.size);
                if offset >= end {
                    return Ok(Box::pin(futures_util::stream::empty()));
                }
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(offset..end)),
                    ..Default::default()
                };
                let stream = self.s3.get_opts(&done, opts).await.map_err(io_err)?.into_stream();
                return Ok(Box::pin(stream.map(|r| r.map_err(io::Error::other))));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(io_err(e)),
        }
        let st = self.staged(id).await?;
        if !st.any {
            return Err(StorageError::NotFound);
        }
        // The pieces of [offset, end) along the contiguous chain of chunks
        // from 0 (a short blob ends early).
        let mut pieces = Vec::new();
        let mut start = 0;
        let end = offset.saturating_add(len);
        while let Some(&n) = st.chunks.get(&start) {
            if n == 0 || start >= end {
                break;
            }
            let (from, to) = (offset.max(start), end.min(start + n));
            if from < to {
                pieces.push((chunk_key(id, start), (from - start)..(to - start)));
            }
            start += n;
        }
        let s3 = self.s3.clone();
        let stream = futures_util::stream::iter(pieces).then(move |(key, range)| {
            let s3 = s3.clone();
            async move { s3.get_range(&key, range).await.map_err(io::Error::other) }
        });
        Ok(Box::pin(stream))
    }

    async fn publish(&self, id: &BlobId, size: u64) -> Result<(), StorageError> {
        self.forget(id);
        // The final object appears at once and whole (one PUT, or the
        // multipart completion), so its presence means published: what is
        // left in staging is a cleanup a crash cut short. (Publishing from
        // that remainder failed — its first chunks may be gone already.)
        match self.s3.head(&final_key(id)).await {
            Ok(_) => return self.clear_staging(id).await,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(io_err(e)),
        }
        let mut st = self.staged(id).await?;
        if !st.any {
            return Err(StorageError::NotFound);
        }
        let full = size / self.part;
        if full == 0 {
            let data = if size == 0 {
                BytesMut::new()
            } else {
                self.gather(id, &st.chunks, &[], 0, size).await?
            };
            self.s3
                .put(&final_key(id), PutPayload::from(data.freeze()))
                .await
                .map_err(io_err)?;
            if let Some(u) = &st.upload {
                let u = self.resolve(u).await?;
                let _ = self.s3.abort_multipart(&final_key(id), &u).await;
            }
        } else {
            // Parts 1..=full are recorded (each chunk that filled one
            // uploaded it); the tail is the last part.
            let tail_from = full * self.part;
            if size > tail_from {
                let data = self.gather(id, &st.chunks, &[], tail_from, size).await?;
                self.put_part(id, &mut st, full as usize + 1, data.freeze())
                    .await?;
            }
            let count = if size > tail_from { full + 1 } else { full } as usize;
            let mut parts = Vec::with_capacity(count);
            for n in 1..=count {
                let record = st.parts.get(&n).ok_or_else(|| {
                    StorageError::Io(io::Error::other(format!(
                        "part {n} of {} was never uploaded",
                        id.as_str()
                    )))
                })?;
                parts.push(PartId {
                    content_id: self.resolve(record).await?,
                });
            }
            let upload = self.upload_id(id, &mut st).await?;
            self.s3
                .complete_multipart(&final_key(id), &upload, parts)
                .await
                .map_err(io_err)?;
        }
        self.clear_staging(id).await
    }

    async fn delete(&self, id: &BlobId) -> Result<(), StorageError> {
        self.forget(id);
        let st = self.staged(id).await?;
        if let Some(u) = &st.upload {
            let u = self.resolve(u).await?;
            let _ = self.s3.abort_multipart(&final_key(id), &u).await;
        }
        self.clear_staging(id).await?;
        match self.s3.delete(&final_key(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Every node writes to the same bucket.
    fn shared(&self) -> bool {
        true
    }

    async fn list_staged(&self) -> Result<Vec<BlobId>, StorageError> {
        let listing = self
            .s3
            .list_with_delimiter(Some(&Path::from("staging")))
            .await
            .map_err(io_err)?;
        let mut ids: Vec<BlobId> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(BlobId::new))
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn staged_size(&self, id: &BlobId) -> Result<Option<u64>, StorageError> {
        // Published (see `publish`): staging holds only leftovers.
        match self.s3.head(&final_key(id)).await {
            Ok(_) => return Ok(None),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(io_err(e)),
        }
        let st = self.staged(id).await?;
        if !st.any {
            return Ok(None);
        }
        // The contiguous chain of chunks from offset 0.
        let mut end = 0;
        while let Some(&n) = st.chunks.get(&end) {
            if n == 0 {
                break;
            }
            end += n;
        }
        Ok(Some(end))
    }

    async fn list_published(&self) -> Result<Vec<(BlobId, u64)>, StorageError> {
        let mut out = Vec::new();
        let mut listing = self.s3.list(Some(&Path::from("blobs")));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(io_err)?;
            if let Some(id) = meta.location.filename().and_then(BlobId::new) {
                out.push((id, meta.size));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn quarantine(&self, id: &BlobId, note: &str) -> Result<bool, StorageError> {
        self.forget(id);
        let to = |name: &str| Path::from(format!("quarantine/{}/{name}", id.as_str()));
        let mut moved = false;
        match self.s3.copy(&final_key(id), &to("blob")).await {
            Ok(()) => {
                moved = true;
                self.s3.delete(&final_key(id)).await.map_err(io_err)?;
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(io_err(e)),
        }
        let listing = self
            .s3
            .list_with_delimiter(Some(&staging(id)))
            .await
            .map_err(io_err)?;
        for meta in &listing.objects {
            let name = meta.location.filename().unwrap_or_default();
            self.s3
                .copy(&meta.location, &to(&format!("staged-{name}")))
                .await
                .map_err(io_err)?;
            moved = true;
        }
        if moved {
            self.s3
                .put(
                    &Path::from(format!("quarantine/{}.why", id.as_str())),
                    PutPayload::from(note.to_owned()),
                )
                .await
                .map_err(io_err)?;
            let st = self.staged(id).await?;
            if let Some(u) = &st.upload {
                let u = self.resolve(u).await?;
                let _ = self.s3.abort_multipart(&final_key(id), &u).await;
            }
            self.clear_staging(id).await?;
        }
        Ok(moved)
    }

    async fn quarantined(&self, id: &BlobId) -> Result<bool, StorageError> {
        match self
            .s3
            .head(&Path::from(format!("quarantine/{}.why", id.as_str())))
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = S3Config::parse(
            "s3://media?endpoint=http%3A%2F%2F127.0.0.1%3A3900&region=garage",
            Some("a".into()),
            Some("s".into()),
            MIN_PART,
        )
        .unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.endpoint.as_deref(), c.region.as_str()),
            ("media", Some("http://127.0.0.1:3900"), "garage")
        );
        let c = S3Config::parse(
            "s3://media?endpoint=http://h:1",
            Some("a".into()),
            Some("s".into()),
            8 << 20,
        )
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://h:1"));
        assert!(
            S3Config::parse("s3://media", None, None, MIN_PART)
                .unwrap_err()
                .contains("AWS_ACCESS_KEY_ID")
        );
        assert!(S3Config::parse("s3://?region=x", Some("a".into()), Some("s".into()), MIN_PART).is_err());
        assert!(S3Config::parse("s3://m?colour=red", Some("a".into()), Some("s".into()), MIN_PART).is_err());
        assert!(
            S3Config::parse("s3://m", Some("a".into()), Some("s".into()), 1 << 20)
                .unwrap_err()
                .contains("5 MiB")
        );
        let c = S3Config::parse("s3://m", Some("ak".into()), Some("SECRET-XYZ".into()), MIN_PART).unwrap();
        assert!(
            !format!("{c:?}").contains("SECRET-XYZ"),
            "Debug never shows the secret"
        );
    }
}
