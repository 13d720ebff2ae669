//! S3-compatible [`BlobStore`]: a session is an S3 multipart upload, and
//! nothing of it lives only on one node.
//!
//! Two layouts ([`Layout`]); a node starts new sessions in the one its
//! configuration (or, for `auto`, a probe of the store at start) picks,
//! and carries on every session in the layout it was started in, so nodes
//! configured differently share a bucket.
//!
//! **Parts** ([`parts`]), where the store takes parts under 5 MiB (Garage
//! does, AWS does not): each chunk is uploaded straight as the next part
//! of the session's multipart upload, and that UploadPart is its
//! durability point. Every byte is written once, as in a plain multipart
//! upload. See the module for what it gives up.
//!
//! **Chunks** (below), for every S3 store.
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

mod orphans;
pub mod parts;

/// S3's smallest part (but the last).
pub const MIN_PART: u64 = 5 * 1024 * 1024;

/// How a node lays out the sessions it starts (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Parts if the store passes the probe at start, else chunks.
    #[default]
    Auto,
    /// One part per chunk; the node does not start if the probe fails.
    Parts,
    /// Chunk objects coalesced into parts of `part_size`.
    Chunks,
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "parts" => Ok(Self::Parts),
            "chunks" => Ok(Self::Chunks),
            other => Err(format!("s3_layout is auto, parts or chunks, not {other:?}")),
        }
    }
}

/// Where and how to reach the bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub part_size: u64,
    pub layout: Layout,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("part_size", &self.part_size)
            .field("layout", &self.layout)
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
            layout: Layout::Auto,
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
    /// The layout of the sessions this node starts.
    starts: Layout,
    /// Requests object_store has no call for (see [`parts`]).
    raw: Arc<parts::Raw>,
    /// Chunks per parts-layout upload, at most ([`parts::MAX_PARTS`]).
    max_parts: usize,
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
enum Known {
    Chunks(ChunksKnown),
    Parts(parts::Tip),
}

/// A chunks-layout session as this node left it after its last chunk.
struct ChunksKnown {
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
            .field("starts", &self.starts)
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

/// The bytes `[from, to)` of a staged blob, which come from the chunk
/// object at offset `chunk` (`chunk_len` bytes long).
struct Segment {
    chunk: u64,
    chunk_len: u64,
    from: u64,
    to: u64,
}

/// The staged blob from `pos` on, as contiguous segments of its chunk
/// objects (`chunks`: offset → length). Each byte comes from the chunk
/// that starts last at or before it, so a chunk rewritten inside an
/// assembled one (see `parts`) overrides it; the blob ends where that
/// chunk does not reach. The one rule for reads, sizes and parts.
fn segments(chunks: &BTreeMap<u64, u64>, mut pos: u64) -> impl Iterator<Item = Segment> + '_ {
    std::iter::from_fn(move || {
        let (&chunk, &chunk_len) = chunks.range(..=pos).next_back()?;
        if chunk + chunk_len <= pos {
            return None;
        }
        let next = chunks.range(pos + 1..).next().map_or(u64::MAX, |(s, _)| *s);
        let seg = Segment {
            chunk,
            chunk_len,
            from: pos,
            to: (chunk + chunk_len).min(next),
        };
        pos = seg.to;
        Some(seg)
    })
}

/// A request body of at most one chunk (the caller bounds it), in memory.
async fn read_chunk(mut body: ByteStream) -> Result<Bytes, StorageError> {
    let mut chunk = BytesMut::new();
    while let Some(frame) = body.next().await {
        chunk.extend_from_slice(&frame.map_err(StorageError::Body)?);
    }
    Ok(chunk.freeze())
}

/// What a session has under `staging/<id>/`.
#[derive(Default)]
struct Staged {
    /// offset → length of each chunk object.
    chunks: BTreeMap<u64, u64>,
    upload: Option<IdRecord>,
    /// part number → part id.
    parts: BTreeMap<usize, IdRecord>,
    /// The multipart upload of a parts-layout session.
    mpu: Option<IdRecord>,
    any: bool,
}

/// An upload or part id: known, or only listed (its object is read when
/// needed — at completion, not on every chunk's listing).
enum IdRecord {
    Listed(Path),
    Known(String),
}

/// How long one S3 request may take, and how long after a request's first
/// try no retry starts: a request of a chunk ends within their sum (35 s).
///
/// Why so short: on a shared store a chunk's write holds the session's
/// lease (60 s, renewed every 20 s), and when a renewal fails the chunk
/// stops only between requests. A request that lands after the lease has
/// gone could overwrite what another node has since committed at the same
/// offset. object_store's defaults (30 s a request, retries for 3 min)
/// allowed that (found in review). A request started under a lease that
/// was renewed at most 20 s before ends while ≥ 40 s of it are left.
/// The cost: an S3 request slower than 10 s (an 8 MiB part below ~0.8
/// MiB/s) fails, and the client retries the chunk.
pub(crate) const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub(crate) const RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

/// The object_store client for `cfg`'s bucket (path-style requests; plain
/// HTTP only where the endpoint says so).
pub(crate) fn client(cfg: &S3Config) -> object_store::Result<AmazonS3> {
    let retry = object_store::RetryConfig {
        retry_timeout: RETRY_TIMEOUT,
        ..Default::default()
    };
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_access_key_id(&cfg.access_key)
        .with_secret_access_key(&cfg.secret_key)
        .with_virtual_hosted_style_request(false)
        .with_retry(retry)
        .with_client_options(object_store::ClientOptions::new().with_timeout(REQUEST_TIMEOUT));
    if let Some(ep) = &cfg.endpoint {
        b = b.with_endpoint(ep).with_allow_http(ep.starts_with("http://"));
    }
    b.build()
}

impl S3Store {
    /// Connects to the bucket (and checks that it answers).
    pub async fn open(cfg: S3Config) -> Result<Self, StorageError> {
        let s3 = client(&cfg).map_err(io_err)?;
        let mut store = Self {
            s3: Arc::new(s3),
            part: cfg.part_size,
            starts: Layout::Chunks,
            raw: Arc::new(parts::Raw::new(&cfg)?),
            max_parts: parts::MAX_PARTS,
            known: Arc::default(),
            held: Arc::default(),
        };
        store
            .s3
            .list_with_delimiter(Some(&Path::from("staging")))
            .await
            .map_err(io_err)?;
        store.starts = match cfg.layout {
            Layout::Chunks => Layout::Chunks,
            Layout::Parts => {
                store.probe_parts().await.map_err(|why| {
                    StorageError::Io(io::Error::other(format!(
                        "s3_layout = \"parts\" needs a store that takes small parts: {why}"
                    )))
                })?;
                Layout::Parts
            }
            Layout::Auto => match store.probe_parts().await {
                Ok(()) => Layout::Parts,
                Err(why) => {
                    tracing::info!(%why, "S3 store takes no small parts: sessions use the chunks layout");
                    Layout::Chunks
                }
            },
        };
        tracing::info!(layout = ?store.starts, "S3 store open");
        Ok(store)
    }

    /// The layout new sessions get on this node (never `Auto`).
    pub fn layout(&self) -> Layout {
        self.starts
    }

    /// Lowers the parts a parts-layout upload may have, so that a test
    /// reaches the limit without 10,000 requests.
    #[doc(hidden)]
    pub fn with_max_parts(mut self, n: usize) -> Self {
        self.max_parts = n.min(parts::MAX_PARTS);
        self
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
            } else if name == parts::MARKER {
                st.mpu = Some(IdRecord::Listed(meta.location));
            }
        }
        if !st.chunks.is_empty() {
            // Assembled (see `parts`): a marker beside chunks is a leftover.
            st.mpu = None;
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
        for seg in segments(chunks, from) {
            if at >= to {
                break;
            }
            let end = seg.to.min(to);
            let range = (at - seg.chunk) as usize..(end - seg.chunk) as usize;
            match tail
                .iter()
                .find(|h| h.offset == seg.chunk && h.bytes.len() as u64 == seg.chunk_len)
            {
                Some(h) => out.extend_from_slice(&h.bytes[range]),
                None => {
                    let bytes = self
                        .s3
                        .get_range(&chunk_key(id, seg.chunk), range.start as u64..range.end as u64)
                        .await
                        .map_err(io_err)?;
                    out.extend_from_slice(&bytes);
                }
            }
            at = end;
        }
        if at < to {
            return Err(StorageError::Io(io::Error::other(format!(
                "staged bytes at {at} of {} are missing",
                id.as_str()
            ))));
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

    /// Aborts the multipart uploads a session's staging names (one that
    /// is gone already is fine): the chunks layout's, for `blobs/<id>`,
    /// and the parts layout's, for the chunk object at 0 (see `parts`).
    async fn abort_uploads(&self, id: &BlobId, st: &Staged) -> Result<(), StorageError> {
        let uploads = [(&st.upload, final_key(id)), (&st.mpu, chunk_key(id, 0))];
        for (record, key) in uploads {
            if let Some(record) = record {
                let u = self.resolve(record).await?;
                let _ = self.s3.abort_multipart(&key, &u).await;
            }
        }
        Ok(())
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

impl S3Store {
    /// A chunk of a chunks-layout session (module doc), from what this
    /// node knew of the session (`st`, `tail`) or read from the bucket.
    async fn write_chunk(
        &self,
        id: &BlobId,
        offset: u64,
        body: ByteStream,
        mut st: Staged,
        mut tail: Vec<Held>,
    ) -> Result<u64, StorageError> {
        if offset > 0 && !st.any {
            return Err(StorageError::NotFound);
        }
        let chunk = read_chunk(body).await?;
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
            Known::Chunks(ChunksKnown {
                staged: st,
                end,
                tail,
            }),
        );
        Ok(len)
    }

    async fn read_chunks(&self, id: &BlobId, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
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
        let mut st = self.staged(id).await?;
        if !st.any {
            return Err(StorageError::NotFound);
        }
        if st.mpu.is_some() {
            // Readable once assembled (see `parts`), with every part: the
            // store does not know which of them are committed.
            let session = self.parts_session(id, &st).await?;
            self.assemble(id, &session, session.end()).await?;
            st = self.staged(id).await?;
        }
        // The pieces of [offset, end) along the contiguous chain of chunks
        // from 0 (a short blob ends early).
        let end = offset.saturating_add(len);
        let mut pieces = Vec::new();
        for seg in segments(&st.chunks, 0).take_while(|seg| seg.from < end) {
            let (from, to) = (offset.max(seg.from), end.min(seg.to));
            if from < to {
                pieces.push((chunk_key(id, seg.chunk), (from - seg.chunk)..(to - seg.chunk)));
            }
        }
        let s3 = self.s3.clone();
        let stream = futures_util::stream::iter(pieces).then(move |(key, range)| {
            let s3 = s3.clone();
            async move { s3.get_range(&key, range).await.map_err(io::Error::other) }
        });
        Ok(Box::pin(stream))
    }
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    async fn write_at(&self, id: &BlobId, offset: u64, body: ByteStream) -> Result<u64, StorageError> {
        // Taken out while the chunk is written: a failure leaves nothing
        // kept, and the next chunk reads the listing. What is kept is used
        // only when it ends where this chunk starts.
        match self.forget(id) {
            Some(Known::Chunks(k)) if k.end == offset => {
                return self.write_chunk(id, offset, body, k.staged, k.tail).await;
            }
            Some(Known::Parts(t)) if t.end == offset => {
                return self.write_part(id, offset, body, Some(t)).await;
            }
            _ => {}
        }
        let st = self.staged(id).await?;
        if st.mpu.is_some() {
            let tip = self.parts_session(id, &st).await?.tip_at(id, offset)?;
            return self.write_part(id, offset, body, Some(tip)).await;
        }
        if !st.any {
            if offset > 0 {
                return Err(StorageError::NotFound);
            }
            if self.starts == Layout::Parts {
                return self.write_part(id, offset, body, None).await;
            }
        }
        self.write_chunk(id, offset, body, st, Vec::new()).await
    }

    fn abandon(&self, id: &BlobId) {
        self.forget(id);
    }

    /// Streams: a published object by ranged GET as the server sends it,
    /// a staged one chunk object at a time — never the whole range at once.
    /// A parts-layout session is assembled first (see [`parts`]), which
    /// puts the rest of it in the chunks layout; replays, the read every
    /// session may need, use [`BlobStore::stored_md5`] instead.
    async fn read_at(&self, id: &BlobId, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        self.read_chunks(id, offset, len).await
    }

    async fn stored_md5(&self, id: &BlobId, offset: u64, len: u64) -> Result<Option<[u8; 16]>, StorageError> {
        self.part_md5(id, offset, len).await
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
        if st.mpu.is_some() {
            let session = self.parts_session(id, &st).await?;
            self.assemble(id, &session, size).await?;
            st = self.staged(id).await?;
        }
        if size > 0 && st.chunks.len() == 1 && st.chunks.get(&0) == Some(&size) {
            // One chunk object holds the blob (an assembled parts-layout
            // session, or a one-chunk upload): a server-side copy.
            self.s3
                .copy(&chunk_key(id, 0), &final_key(id))
                .await
                .map_err(io_err)?;
            self.abort_uploads(id, &st).await?;
            return self.clear_staging(id).await;
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
            // A part uploaded by a node with another part size (its
            // `s3_part_size` changed, or another node's differs) holds
            // another range: uploaded again below, from the chunks. Only
            // full parts precede publication, so a size tells them apart.
            if st.upload.is_some() {
                let upload = self.upload_id(id, &mut st).await?;
                for (n, len, _) in self.raw.list_parts(&final_key(id), &upload).await? {
                    let n = n as usize;
                    if n <= full as usize && len != self.part {
                        tracing::info!(
                            blob = id.as_str(),
                            part = n,
                            len,
                            "a part of another part size is made again"
                        );
                        st.parts.remove(&n);
                    }
                }
            }
            let mut parts = Vec::with_capacity(count);
            for n in 1..=count {
                if !st.parts.contains_key(&n) {
                    // A part no chunk filled: the bytes of an assembled
                    // session (see `parts`), uploaded now.
                    let from = (n as u64 - 1) * self.part;
                    let data = self
                        .gather(id, &st.chunks, &[], from, (from + self.part).min(size))
                        .await?;
                    self.put_part(id, &mut st, n, data.freeze()).await?;
                }
                let record = &st.parts[&n];
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
        self.abort_uploads(id, &st).await?;
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

    async fn sweep_orphans(&self, older_than: std::time::Duration) -> Result<usize, StorageError> {
        self.sweep(older_than).await
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
        if st.mpu.is_some() {
            // An upload gone (aborted, or completed with no final object)
            // holds nothing: recovery then sees every byte as lost.
            return Ok(Some(match self.parts_session(id, &st).await {
                Ok(session) => session.end(),
                Err(StorageError::NotFound) => 0,
                Err(e) => return Err(e),
            }));
        }
        Ok(Some(segments(&st.chunks, 0).last().map_or(0, |seg| seg.to)))
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
        // A parts-layout upload is readable only once assembled.
        let st = self.staged(id).await?;
        if st.mpu.is_some() {
            match self.parts_session(id, &st).await {
                Ok(session) => self.assemble(id, &session, session.end()).await?,
                Err(StorageError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
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
            self.abort_uploads(id, &st).await?;
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

    /// An S3 endpoint that takes requests and never answers: the store
    /// gives up within one request's time after the retries' (35 s), well
    /// inside a session's lease. With object_store's defaults it retried
    /// for over 3 minutes.
    #[tokio::test]
    async fn a_request_that_never_answers_ends_within_the_bound() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = l.accept().await {
                held.push(conn);
            }
        });
        let cfg = S3Config {
            bucket: "b".into(),
            endpoint: Some(endpoint),
            region: "garage".into(),
            access_key: "k".into(),
            secret_key: "s".into(),
            part_size: 8 << 20,
            layout: Layout::Chunks,
        };
        let started = std::time::Instant::now();
        let opened = S3Store::open(cfg).await;
        let took = started.elapsed();
        assert!(opened.is_err());
        assert!(
            took >= REQUEST_TIMEOUT
                && took <= REQUEST_TIMEOUT + RETRY_TIMEOUT + std::time::Duration::from_secs(3),
            "gave up after {took:?}"
        );
    }

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
