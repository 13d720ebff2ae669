//! Rules 3–9 of the chunk upload, and the resume-point query.

use base64::Engine;
use fast_md5::Md5;
use futures_util::StreamExt;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use upline_proto::callback::{self, CallbackVars};
use upline_proto::{ContentMd5, ObjectPath, PutPolicy, ResumeParams, UploadCtx};
use upline_state::{Advance, Completion, Fence, ObjectRecord, Session, Start};
use upline_storage::{BlobId, BlobStore, ByteStream, StorageError};

use crate::body::{self, BodyStop, Md5Tap};
use crate::{ChunkReply, ChunkRequest, CoreError, InFlight, Node};

/// A chunk written to storage, not yet committed.
struct Stored {
    len: u64,
    /// The chunk's MD5, computed only when the client sent a `Content-MD5`.
    digest: Option<[u8; 16]>,
}

impl Node {
    /// Handles one chunk upload. The body is not polled until every check
    /// that needs no body has passed, so a refused request never reads it
    /// (and never gets a `100 Continue`).
    pub async fn upload_chunk(&self, req: ChunkRequest, body: ByteStream) -> Result<ChunkReply, CoreError> {
        let _load = InFlight::enter(&self.in_flight);
        let policy = self.authorize(req.token.as_deref(), &req.path, req.now)?;
        let limit = self.cfg.max_chunk;
        if req.content_length.is_some_and(|cl| cl > limit) {
            return Err(CoreError::ChunkTooLarge { limit });
        }
        let claim = match req.content_md5.as_deref() {
            Some(raw) => Some(ContentMd5::parse(raw).ok_or_else(|| {
                CoreError::BadParam("Content-MD5 must be 32 hex digits or base64 of 16 bytes".into())
            })?),
            None => None,
        };
        if let (Some(max), Some(cl)) = (policy.object_size_max, req.content_length)
            && req.params.offset.saturating_add(cl) > max
        {
            return Err(CoreError::PolicyLimit(format!(
                "object would pass ObjectSizeMax ({max} bytes)"
            )));
        }
        let reply = match req.params.context.clone() {
            None => self.first_chunk(req, policy, claim, body).await,
            Some(ctx) => self.next_chunk(&ctx, req, policy, claim, body).await,
        };
        if reply.is_ok() {
            self.chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        reply
    }

    async fn first_chunk(
        &self,
        req: ChunkRequest,
        policy: PutPolicy,
        claim: Option<ContentMd5>,
        body: ByteStream,
    ) -> Result<ChunkReply, CoreError> {
        if req.params.offset != 0 {
            return Err(CoreError::BadParam(
                "a new session (no context) starts at offset 0".into(),
            ));
        }
        let content_type = req
            .content_type
            .clone()
            .filter(|c| !c.trim().is_empty())
            .unwrap_or_else(|| "application/octet-stream".into());
        if !policy.allows_mime(&content_type) {
            return Err(CoreError::PolicyLimit(format!(
                "content type {content_type} is not allowed by MimeLimit"
            )));
        }
        let ctx = UploadCtx::from_random(rand::random());
        let guard = self.locks.acquire(ctx.as_str(), false).await;
        let mut start = Start::New {
            bucket: req.path.bucket.to_string(),
            object: req.path.object.to_string(),
            content_type,
            tag: policy.tag.clone(),
        };
        // On a store other nodes share, recovery cannot tell staged bytes
        // of no session from a first chunk another node is writing, so it
        // would have to keep them forever (a crash mid-first-chunk leaked
        // them in the crash loop): there the session is created before its
        // bytes are stored, and staged bytes always have one. A session a
        // crash leaves empty is collected with its bytes like any idle one.
        let precreated = self.blobs.shared();
        if precreated {
            let empty = Advance {
                start,
                chunk_len: 0,
                md5_claim: None,
                complete: None,
                now: req.now,
                lease: None,
            };
            self.state.advance(ctx.as_str(), empty).await?;
            start = Start::At(0);
        }
        let result = async {
            let stored = self
                .store(ctx.as_str(), 0, &req, guard.cancel.clone(), claim, body)
                .await?;
            self.commit(ctx.as_str(), start, 0, None, stored, &req, &policy, claim, false)
                .await
        }
        .await;
        // A first chunk that failed left bytes no client can ever name
        // (nobody got the context): remove them now rather than at restart
        // (bytes first: a session without bytes is harmless, bytes without
        // a session on a shared store are not).
        if result.is_err() {
            match self.state.get(ctx.as_str()).await {
                Ok(None) => self.discard_blob(ctx.as_str()).await,
                Ok(Some(s)) if precreated && s.completed_at.is_none() && s.offset == 0 => {
                    self.discard_blob(ctx.as_str()).await;
                    if let Err(e) = self.state.delete_session(ctx.as_str()).await {
                        tracing::warn!(ctx = ctx.as_str(), error = %e, "could not forget a failed first chunk's session; it is collected when idle");
                    }
                }
                _ => {}
            }
        }
        result
    }

    async fn next_chunk(
        &self,
        ctx: &str,
        req: ChunkRequest,
        policy: PutPolicy,
        claim: Option<ContentMd5>,
        body: ByteStream,
    ) -> Result<ChunkReply, CoreError> {
        UploadCtx::parse(ctx).map_err(|_| CoreError::UnknownCtx)?;
        // The session is read under the lock. Only when another request
        // holds it is the session read first too, since only a request
        // that can win may preempt the current writer.
        let guard = match self.locks.try_acquire(ctx) {
            Some(guard) => guard,
            None => {
                let seen = self.live_session(ctx, &req.path, req.now).await?;
                let preempt = seen.completed_at.is_none() && seen.offset == req.params.offset;
                self.locks.acquire(ctx, preempt).await
            }
        };
        let session = self.live_session(ctx, &req.path, req.now).await?;
        let offset = req.params.offset;
        if session.completed_at.is_none() && offset == session.offset {
            // Across nodes of a shared store, a lease does what the lock
            // does within one node.
            let leased = self.blobs.shared();
            if leased {
                let now_ms = lease_clock_ms();
                if !self
                    .state
                    .lease(ctx, &self.owner, now_ms, now_ms + self.cfg.lease_ms)
                    .await?
                {
                    return Err(CoreError::Busy);
                }
                // Another node may have committed this offset between our
                // read and the lease: writing now would overwrite its bytes.
                let current = self.live_session(ctx, &req.path, req.now).await;
                if current
                    .as_ref()
                    .map_or(true, |c| c.completed_at.is_some() || c.offset != offset)
                {
                    let _ = self.state.release(ctx, &self.owner).await;
                    return Err(match current {
                        Ok(c) if c.completed_at.is_some() => CoreError::AlreadyComplete { offset: c.offset },
                        Ok(c) => CoreError::OffsetMismatch { committed: c.offset },
                        Err(e) => e,
                    });
                }
            }
            let work = async {
                let stored = self
                    .store(ctx, offset, &req, guard.cancel.clone(), claim, body)
                    .await?;
                let prior_claim = session.md5_claim.clone();
                self.commit(
                    ctx,
                    Start::At(offset),
                    offset,
                    prior_claim,
                    stored,
                    &req,
                    &policy,
                    claim,
                    leased,
                )
                .await
            };
            let result = if leased {
                self.renewing_lease(ctx, &guard.cancel, work).await
            } else {
                work.await
            };
            if result.is_err()
                && let Ok(id) = blob_id(ctx)
            {
                self.blobs.abandon(&id);
            }
            if leased && let Err(e) = self.state.release(ctx, &self.owner).await {
                tracing::warn!(ctx, error = %e, "could not release a session lease; it expires by itself");
            }
            return result;
        }
        let replayable = session.last_chunk_len.is_some_and(|len| {
            offset.checked_add(len) == Some(session.offset)
                && req.content_length.is_none_or(|cl| cl == len)
                && req.params.complete == session.completed_at.is_some()
        });
        let refusal = match session.completed_at {
            Some(_) => CoreError::AlreadyComplete {
                offset: session.offset,
            },
            None => CoreError::OffsetMismatch {
                committed: session.offset,
            },
        };
        if !replayable {
            return Err(refusal);
        }
        let len = session.last_chunk_len.unwrap_or(0);
        let incoming = body::guard(
            body,
            self.cfg.max_chunk,
            guard.cancel.clone(),
            None,
            self.received.clone(),
        );
        // A store that cannot read the chunk back (S3 parts of an upload
        // in progress) has its MD5: the replay's MD5 is compared with it.
        let id = blob_id(ctx)?;
        let same = match self.blobs.stored_md5(&id, offset, len).await {
            Ok(Some(md5)) => body::same_md5(incoming, md5).await.map(Ok),
            Ok(None) => match self.blobs.read_at(&id, offset, len).await {
                Ok(stored) => body::same_bytes(incoming, stored).await,
                Err(StorageError::NotFound) => return Err(refusal),
                Err(e) => return Err(CoreError::internal(e)),
            },
            Err(StorageError::NotFound) => return Err(refusal),
            Err(e) => return Err(CoreError::internal(e)),
        };
        match same {
            Err(e) => Err(body_error(e)),
            Ok(Err(e)) => Err(CoreError::internal(e)),
            Ok(Ok(false)) => Err(refusal),
            Ok(Ok(true)) if session.completed_at.is_some() => {
                // The final chunk again: make sure it is published (a crash
                // may have come between commit and publication), then run
                // the callback again — this is how a 520 is retried.
                self.blobs
                    .publish(&id, session.offset)
                    .await
                    .map_err(CoreError::internal)?;
                let record = self.state.get_object(&session.bucket, &session.object).await?;
                let md5 = record.filter(|r| r.blob == ctx).and_then(|r| r.md5);
                self.finish(&session, &policy, md5).await
            }
            Ok(Ok(true)) => Ok(ChunkReply {
                offset: session.offset,
                context: ctx.to_owned(),
                callback_ret_msg: String::new(),
            }),
        }
    }

    /// Runs `work` (a chunk's write and commit) while renewing this node's
    /// lease on `ctx` every third of its term. A body may take longer than
    /// one term to arrive (4 MiB at under 70 KB/s takes a minute): without
    /// renewal, another node could take the expired lease and write the
    /// same offset while this one still does. A renewal that fails is
    /// retried while more than a quarter of the term is left; then, or
    /// when another node holds the lease, `cancel` stops the body, so that
    /// a store request already sent ends before the lease does. The commit
    /// checks the lease itself ([`Fence`]).
    async fn renewing_lease<T>(
        &self,
        ctx: &str,
        cancel: &CancellationToken,
        work: impl std::future::Future<Output = Result<T, CoreError>>,
    ) -> Result<T, CoreError> {
        let term = std::time::Duration::from_millis(self.cfg.lease_ms.max(1) as u64);
        let finished = CancellationToken::new();
        let renew = async {
            // Taken just before `work` started, until about now + term.
            let mut held_until = tokio::time::Instant::now() + term;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(term / 3) => {}
                    () = finished.cancelled() => return,
                }
                let stop_at = held_until - term / 4;
                let sent = tokio::time::Instant::now();
                let now = lease_clock_ms();
                let renewal = self.state.lease(ctx, &self.owner, now, now + self.cfg.lease_ms);
                match tokio::time::timeout_at(stop_at, renewal).await {
                    Ok(Ok(true)) => held_until = sent + term,
                    Ok(Ok(false)) => {
                        tracing::warn!(ctx, "another node took this session's lease: the chunk stops");
                        break;
                    }
                    Ok(Err(e)) if tokio::time::Instant::now() + term / 3 < stop_at => {
                        tracing::warn!(ctx, error = %e, "could not renew a session lease; trying again");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(ctx, error = %e, "could not renew a session lease: the chunk stops");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(ctx, "renewing a session lease took too long: the chunk stops");
                        break;
                    }
                }
            }
            cancel.cancel();
        };
        tokio::pin!(work);
        tokio::pin!(renew);
        tokio::select! {
            result = &mut work => {
                // A renewal already sent is awaited, not dropped: it could
                // land after the caller's release and hold the lease for
                // another term, with other nodes answering Busy.
                finished.cancel();
                (&mut renew).await;
                result
            }
            () = &mut renew => work.await,
        }
    }

    /// A session that exists, is not expired, and belongs to this path.
    async fn live_session(&self, ctx: &str, path: &ObjectPath, now: i64) -> Result<Session, CoreError> {
        let session = self.state.get(ctx).await?.ok_or(CoreError::UnknownCtx)?;
        if self.expired(&session, now) {
            return Err(CoreError::UnknownCtx);
        }
        if session.bucket != path.bucket.as_str() || session.object != path.object.as_str() {
            return Err(CoreError::CtxMismatch);
        }
        Ok(session)
    }

    pub(crate) fn expired(&self, session: &Session, now: i64) -> bool {
        now.saturating_sub(session.updated_at) > self.cfg.session_ttl
    }

    /// Streams the body into the session's blob; durable on return.
    async fn store(
        &self,
        ctx: &str,
        offset: u64,
        req: &ChunkRequest,
        cancel: CancellationToken,
        claim: Option<ContentMd5>,
        body: ByteStream,
    ) -> Result<Stored, CoreError> {
        let tap = claim.map(|_| Md5Tap::new(self.md5_taps.clone()));
        let guarded = body::guard(
            body,
            self.cfg.max_chunk,
            cancel,
            tap.clone(),
            self.received.clone(),
        );
        let len = match self.blobs.write_at(&blob_id(ctx)?, offset, guarded).await {
            Ok(n) => n,
            Err(StorageError::Body(e)) => return Err(body_error(e)),
            Err(StorageError::NotFound) => return Err(CoreError::UnknownCtx),
            Err(e) => return Err(e.into()),
        };
        if req.content_length.is_some_and(|cl| cl != len) {
            return Err(CoreError::BodyIncomplete(format!(
                "got {len} bytes of a declared Content-Length"
            )));
        }
        let digest = match tap {
            Some(t) => Some(t.digest().await),
            None => None,
        };
        Ok(Stored { len, digest })
    }

    /// Checks what needs the stored bytes, then advances the offset
    /// (compare-and-swap; `leased`: only while this node still holds the
    /// session's lease) and, on the final chunk, publishes.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        ctx: &str,
        start: Start,
        offset: u64,
        prior_claim: Option<String>,
        stored: Stored,
        req: &ChunkRequest,
        policy: &PutPolicy,
        claim: Option<ContentMd5>,
        leased: bool,
    ) -> Result<ChunkReply, CoreError> {
        let end = offset + stored.len;
        if policy.object_size_max.is_some_and(|max| end > max) {
            return Err(CoreError::PolicyLimit("object would pass ObjectSizeMax".into()));
        }
        // A Content-MD5 equal to the chunk's verifies the chunk; any other
        // value claims the whole object's MD5, checked at completion.
        // Digests are compared in constant time, like every other check
        // of a value against a claim (the claims are not secret; the rule
        // is simply that such comparisons never exit early).
        let chunk_verified =
            matches!((claim, stored.digest), (Some(c), Some(d)) if bool::from(c.0.ct_eq(&d)));
        let new_claim = claim.filter(|_| !chunk_verified).map(|c| c.to_hex());
        let complete = if req.params.complete {
            if policy.object_size_min.is_some_and(|min| end < min) {
                return Err(CoreError::PolicyLimit(
                    "object is smaller than ObjectSizeMin".into(),
                ));
            }
            let whole_claim = new_claim.clone().or(prior_claim);
            let md5 = match whole_claim {
                Some(want) => {
                    let got = self.object_md5(ctx, end).await?;
                    if !bool::from(got.as_bytes().ct_eq(want.as_bytes())) {
                        return Err(CoreError::Md5Mismatch(if claim.is_some() {
                            "matches neither this chunk nor the whole object"
                        } else {
                            "the whole object does not match the claimed MD5"
                        }));
                    }
                    Some(got)
                }
                None if offset == 0 => stored.digest.map(hex::encode),
                None => None,
            };
            Some(Completion { md5 })
        } else {
            None
        };
        let known_md5 = complete.as_ref().and_then(|c| c.md5.clone());
        let change = Advance {
            start,
            chunk_len: stored.len,
            md5_claim: new_claim,
            complete,
            now: req.now,
            lease: leased.then(|| Fence {
                owner: self.owner.clone(),
                now_ms: lease_clock_ms(),
            }),
        };
        let advanced = self.state.advance(ctx, change).await?;
        let session = advanced.session;
        if session.completed_at.is_none() {
            return Ok(ChunkReply {
                offset: session.offset,
                context: ctx.to_owned(),
                callback_ret_msg: String::new(),
            });
        }
        // The replaced object's bytes go first: nothing points at them
        // since the commit, and a failed publication below (answered 500,
        // then published by the replay, which knows nothing of them) left
        // them behind until the next start (found by the fault test).
        if let Some(old) = advanced.replaced.filter(|old| old.blob != ctx) {
            self.discard_blob(&old.blob).await;
        }
        self.blobs
            .publish(&blob_id(ctx)?, session.offset)
            .await
            .map_err(CoreError::internal)?;
        self.finish(&session, policy, known_md5).await
    }

    /// After publication: the callback if the policy has one (it needs the
    /// MD5 now), else the MD5 is computed in the background.
    async fn finish(
        &self,
        session: &Session,
        policy: &PutPolicy,
        md5: Option<String>,
    ) -> Result<ChunkReply, CoreError> {
        let mut reply = ChunkReply {
            offset: session.offset,
            context: session.ctx.clone(),
            callback_ret_msg: String::new(),
        };
        let Some(url) = &policy.callback_url else {
            if md5.is_none() {
                self.spawn_object_md5(session);
            }
            return Ok(reply);
        };
        let md5 = match md5 {
            Some(m) => m,
            None => {
                let m = self.object_md5(&session.ctx, session.offset).await?;
                self.state
                    .set_object_md5(&session.bucket, &session.object, &session.ctx, &m)
                    .await?;
                m
            }
        };
        let vars = CallbackVars {
            bucket: session.bucket.clone(),
            object: session.object.clone(),
            size: session.offset,
            md5,
            mime_type: session.content_type.clone(),
            context: session.ctx.clone(),
        };
        let template = policy.callback_body.as_deref().unwrap_or(DEFAULT_CALLBACK_BODY);
        let body = callback::render(template, &vars);
        match self.callbacks.post(url, &body, self.cfg.callback_timeout).await {
            Ok(answer) => {
                reply.callback_ret_msg = base64::engine::general_purpose::STANDARD.encode(answer);
                Ok(reply)
            }
            Err(reason) => {
                tracing::warn!(ctx = %session.ctx, %reason, "completion callback failed");
                Err(CoreError::CallbackFailed(reason))
            }
        }
    }

    pub(crate) async fn object_md5(&self, ctx: &str, size: u64) -> Result<String, CoreError> {
        blob_md5(self.blobs.as_ref(), ctx, size, Hashing::default()).await
    }

    /// The record of a published object.
    pub async fn object(&self, bucket: &str, object: &str) -> Result<Option<ObjectRecord>, CoreError> {
        Ok(self.state.get_object(bucket, object).await?)
    }

    /// The object's MD5, computed from its bytes (and recorded) if the
    /// background computation has not done it yet.
    pub async fn object_md5_of(&self, record: &ObjectRecord) -> Result<String, CoreError> {
        if let Some(md5) = &record.md5 {
            return Ok(md5.clone());
        }
        let md5 = blob_md5(self.blobs.as_ref(), &record.blob, record.size, Hashing::default()).await?;
        self.state
            .set_object_md5(&record.bucket, &record.object, &record.blob, &md5)
            .await?;
        Ok(md5)
    }

    /// Streams `len` bytes from `offset` of a published object.
    pub async fn read_object(
        &self,
        record: &ObjectRecord,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream, CoreError> {
        Ok(self.blobs.read_at(&blob_id(&record.blob)?, offset, len).await?)
    }

    /// The resume point of a session.
    pub async fn resume_point(
        &self,
        path: &ObjectPath,
        params: &ResumeParams,
        token: Option<&str>,
        now: i64,
    ) -> Result<u64, CoreError> {
        self.authorize(token, path, now)?;
        UploadCtx::parse(&params.context).map_err(|_| CoreError::UnknownCtx)?;
        Ok(self.live_session(&params.context, path, now).await?.offset)
    }
}

/// The callback body when the policy names a URL but no `CallbackBody`.
const DEFAULT_CALLBACK_BODY: &str = r#"{"bucket":"${bucket}","object":"${object}","size":${size},"md5":"${md5}","mimeType":"${mimeType}","context":"${context}"}"#;

/// MD5 (hex) of the first `size` bytes of a blob, read back from storage.
pub(crate) async fn blob_md5(
    blobs: &dyn BlobStore,
    ctx: &str,
    size: u64,
    mut hashing: Hashing,
) -> Result<String, CoreError> {
    let mut stream = blobs
        .read_at(&blob_id(ctx)?, 0, size)
        .await
        .map_err(CoreError::internal)?;
    let mut seen = 0u64;
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(CoreError::internal)?;
        seen += frame.len() as u64;
        hashing.update(frame).await?;
    }
    if seen != size {
        return Err(CoreError::internal(format!(
            "blob {ctx} holds {seen} of {size} committed bytes"
        )));
    }
    Ok(hex::encode(hashing.finish().await?))
}

/// Where [`blob_md5`] hashes: here, for an MD5 someone waits for, or on the
/// idle hasher, for one computed ahead of need.
pub(crate) enum Hashing {
    Here(Md5),
    Idle(crate::idle::Feed),
}

impl Default for Hashing {
    fn default() -> Self {
        Hashing::Here(Md5::new())
    }
}

impl Hashing {
    /// On the idle hasher when its thread runs.
    pub(crate) async fn idle(hasher: &crate::idle::IdleHasher) -> Self {
        hasher.begin().await.map_or_else(Hashing::default, Hashing::Idle)
    }

    async fn update(&mut self, frame: bytes::Bytes) -> Result<(), CoreError> {
        match self {
            Hashing::Here(h) => {
                h.update(&frame);
                Ok(())
            }
            Hashing::Idle(feed) => feed.update(frame).await.ok_or_else(hasher_gone),
        }
    }

    async fn finish(self) -> Result<[u8; 16], CoreError> {
        match self {
            Hashing::Here(h) => Ok(h.finalize()),
            Hashing::Idle(feed) => feed.finish().await.ok_or_else(hasher_gone),
        }
    }
}

fn hasher_gone() -> CoreError {
    CoreError::internal("the idle MD5 thread stopped")
}

pub(crate) fn blob_id(ctx: &str) -> Result<BlobId, CoreError> {
    BlobId::new(ctx).ok_or(CoreError::UnknownCtx)
}

fn body_error(e: std::io::Error) -> CoreError {
    match BodyStop::of(&e) {
        Some(BodyStop::TooLarge(limit)) => CoreError::ChunkTooLarge { limit },
        Some(BodyStop::Superseded) => CoreError::Superseded,
        None => CoreError::BodyIncomplete(e.to_string()),
    }
}

/// Wall-clock milliseconds for leases, which nodes compare with each
/// other's (not the request's whole-second time: a lease term is shorter
/// than a chunk may take, and renewals need finer steps).
pub(crate) fn lease_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
