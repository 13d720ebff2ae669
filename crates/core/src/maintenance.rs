//! Housekeeping: recovery of storage at start, the scrub of published
//! objects, quarantine of damaged bytes, collection of idle sessions, and
//! object MD5s computed off the upload's hot path.
//!
//! Damaged bytes are never served. What the node answers then:
//!
//! * an open session whose staged bytes are shorter than its committed
//!   offset (acknowledged bytes lost under the node, e.g. a disk fault or
//!   a hand-truncated file) is forgotten after its bytes are quarantined:
//!   its query and chunks answer 404, and a client starts over, as for an
//!   expired session;
//! * a published object whose bytes are missing, shorter or longer than
//!   its record, or (when checked) of another MD5, keeps its record but
//!   its bytes are quarantined: a download answers 410 with an `errMsg`
//!   that says so, until the object is uploaded again.
//!
//! Each case is logged at error level with what was found, counted in
//! `upline_quarantined_total`, and the bytes kept with a note saying why
//! (`quarantine/<id>` and `<id>.why` in the store) for an operator.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use upline_state::{ObjectRecord, Session};
use upline_storage::{BlobId, StorageError};

use crate::upload::{Hashing, blob_id, blob_md5};
use crate::{CoreError, Node};

/// The least age of an unnamed multipart upload that a collection pass
/// aborts, whatever `orphan_grace` says. A pass runs beside this node's own
/// requests, and a sweep's check for the naming record and its abort are
/// two requests: an upload created a moment ago could be named between
/// them and then aborted under an acknowledged chunk. Recovery at start,
/// before this node serves, uses `orphan_grace` as it is.
const SERVING_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// What one scrub of the published objects found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scrubbed {
    /// Object records checked.
    pub objects: usize,
    /// Objects whose bytes were hashed and compared with their MD5.
    pub md5_checked: usize,
    /// Objects whose bytes were moved to quarantine.
    pub quarantined: usize,
    /// Objects whose bytes are nowhere (reported; nothing to move).
    pub missing: usize,
    /// Published blobs no record points at, deleted: the bytes of a
    /// replaced object that a crash kept from being deleted.
    pub unreferenced: usize,
}

/// What one collection pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Open sessions removed with their bytes.
    pub abandoned: usize,
    /// Completed sessions forgotten (their objects stay).
    pub finished: usize,
    /// Multipart uploads no record names, aborted (S3): what a crashed
    /// node left, found without waiting for a restart.
    pub orphan_uploads: usize,
}

impl Node {
    /// Brings storage in line with the session store after a crash:
    /// staged blobs of no session are deleted, completed sessions whose
    /// publication was cut short are published, staged bytes shorter
    /// than their session's committed offset are quarantined (see the
    /// module's documentation), and what the store holds that no blob owns
    /// (orphaned S3 multipart uploads) is removed. Returns blobs fixed.
    pub async fn recover(&self) -> Result<usize, CoreError> {
        let mut fixed = 0;
        for id in self.blobs.list_staged().await? {
            let _guard = self.locks.acquire(id.as_str(), false).await;
            let session = self.state.get(id.as_str()).await?;
            if session.is_none() || !self.blobs.shared() {
                fixed += self.recover_one(&id, session).await?;
                continue;
            }
            if !self.hold(id.as_str()).await? {
                continue;
            }
            // Read again under the lease: the other node may have moved on.
            let result = match self.state.get(id.as_str()).await {
                Ok(session) => self.recover_one(&id, session).await,
                Err(e) => Err(e.into()),
            };
            self.let_go(id.as_str()).await;
            fixed += result?;
        }
        // Not counted as fixed: a clean stop leaves no unnamed upload, but
        // another node's crash may have.
        self.sweep_orphans(self.cfg.orphan_grace).await;
        Ok(fixed)
    }

    /// On a store other nodes share, takes the session's lease: a node
    /// that examines or forgets a session must not do so while another
    /// writes or publishes it. Staging seen halfway through another node's
    /// publication looks short, and recovery quarantined a live object;
    /// the collector could forget a session another node had just
    /// committed a chunk to (found in review). `false`: another node holds
    /// it (or it is gone); leave it for the next pass. Always `true` on a
    /// store of one node, whose lock is enough.
    async fn hold(&self, ctx: &str) -> Result<bool, CoreError> {
        if !self.blobs.shared() {
            return Ok(true);
        }
        let now = crate::upload::lease_clock_ms();
        match self
            .state
            .lease(ctx, &self.owner, now, now + self.cfg.lease_ms)
            .await
        {
            Ok(held) => Ok(held),
            Err(upline_state::StateError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives back what [`Self::hold`] took (it expires by itself anyway).
    async fn let_go(&self, ctx: &str) {
        if self.blobs.shared()
            && let Err(e) = self.state.release(ctx, &self.owner).await
        {
            tracing::warn!(ctx, error = %e, "could not release a session lease; it expires by itself");
        }
    }

    /// [`Self::recover`] for one staged blob and its session; blobs fixed.
    async fn recover_one(&self, id: &BlobId, session: Option<Session>) -> Result<usize, CoreError> {
        if let Some(s) = &session
            && self.staged_short(id, s).await?
        {
            return Ok(1);
        }
        match session {
            // On a shared store another node may be writing a first
            // chunk right now (its session is committed after): only a
            // node alone with its store can tell orphans from those.
            None if self.blobs.shared() => Ok(0),
            None => {
                tracing::info!(blob = id.as_str(), "deleting staged bytes of no session");
                self.blobs.delete(id).await?;
                Ok(1)
            }
            Some(s) if s.completed_at.is_some() => {
                if self.names_its_blob(&s).await? {
                    tracing::info!(blob = id.as_str(), "finishing an interrupted publication");
                    self.blobs.publish(id, s.offset).await?;
                } else {
                    self.blobs.delete(id).await?;
                }
                Ok(1)
            }
            Some(_) => Ok(0),
        }
    }

    /// Whether the staged blob of `s` holds fewer bytes than were
    /// acknowledged; if so it is quarantined (and an open session is
    /// forgotten, so that its client starts over).
    async fn staged_short(&self, id: &BlobId, s: &Session) -> Result<bool, CoreError> {
        let have = match self.blobs.staged_size(id).await {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(false),
            Err(StorageError::Io(e)) if e.kind() == std::io::ErrorKind::Unsupported => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if have >= s.offset {
            return Ok(false);
        }
        let what = if s.completed_at.is_some() {
            "completed upload (publication pending)"
        } else {
            "open upload"
        };
        let note = format!(
            "found at start: {what} {ctx} of {bucket}/{object} has {have} staged bytes, {offset} were acknowledged (truncated)",
            ctx = s.ctx,
            bucket = s.bucket,
            object = s.object,
            offset = s.offset,
        );
        self.quarantine(id, &note).await?;
        if s.completed_at.is_none() {
            self.state.delete_session(&s.ctx).await?;
        }
        Ok(true)
    }

    /// Moves a blob to quarantine and reports it.
    async fn quarantine(&self, id: &BlobId, note: &str) -> Result<(), CoreError> {
        tracing::error!(
            blob = id.as_str(),
            reason = note,
            "damaged bytes quarantined, never to be served"
        );
        self.blobs.quarantine(id, note).await?;
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Quarantines the bytes of a published object found damaged while
    /// being served (a download whose bytes did not hash to its MD5).
    pub async fn quarantine_object(&self, record: &ObjectRecord, why: &str) -> Result<(), CoreError> {
        let id = blob_id(&record.blob)?;
        let _guard = self.locks.acquire(id.as_str(), false).await;
        let note = format!(
            "object {}/{} (blob {}, {} bytes, MD5 {}): {why}",
            record.bucket,
            record.object,
            record.blob,
            record.size,
            record.md5.as_deref().unwrap_or("unknown")
        );
        self.quarantine(&id, &note).await
    }

    /// Whether the bytes of `record` were quarantined.
    pub async fn is_quarantined(&self, record: &ObjectRecord) -> Result<bool, CoreError> {
        Ok(self.blobs.quarantined(&blob_id(&record.blob)?).await?)
    }

    /// Checks every published object against its record: bytes missing,
    /// of another size or (with `verify_md5`, for objects whose MD5 is
    /// known) of another MD5 are quarantined; published blobs that no
    /// record points at (a replaced object's, whose deletion a crash cut
    /// short) are deleted. Safe while the node serves, and on a store
    /// other nodes share: the blobs are listed before the records are read,
    /// and a record always exists before its blob is published.
    pub async fn scrub(&self, verify_md5: bool) -> Result<Scrubbed, CoreError> {
        let mut done = Scrubbed::default();
        let published: BTreeMap<BlobId, u64> = self.blobs.list_published().await?.into_iter().collect();
        let records = self.state.list_objects(None, i64::MAX as usize).await?;
        let referenced: HashSet<&str> = records.iter().map(|r| r.blob.as_str()).collect();
        for rec in &records {
            done.objects += 1;
            let Some(id) = BlobId::new(&rec.blob) else {
                continue;
            };
            let damage = match published.get(&id) {
                // Not published: staged (recovery or the completing node
                // publishes it), already quarantined, or gone.
                None => {
                    if self.blobs.staged_size(&id).await?.is_some() || self.blobs.quarantined(&id).await? {
                        continue;
                    }
                    tracing::error!(
                        bucket = rec.bucket,
                        object = rec.object,
                        blob = rec.blob,
                        "an object's bytes are missing from storage"
                    );
                    done.missing += 1;
                    continue;
                }
                Some(&size) if size != rec.size => {
                    Some(format!("{size} bytes stored, {} recorded", rec.size))
                }
                Some(_) => match (&rec.md5, verify_md5) {
                    (Some(want), true) => {
                        done.md5_checked += 1;
                        match blob_md5(
                            self.blobs.as_ref(),
                            &rec.blob,
                            rec.size,
                            Hashing::idle(&self.idle_md5).await,
                        )
                        .await
                        {
                            Ok(got) if &got == want => None,
                            Ok(got) => Some(format!("bytes hash to MD5 {got}, {want} recorded")),
                            Err(e) => Some(format!("bytes unreadable: {e}")),
                        }
                    }
                    _ => None,
                },
            };
            if let Some(why) = damage {
                // Re-read under the session's lock: the name may have moved
                // on to a new upload meanwhile, whose bytes are fine.
                let _guard = self.locks.acquire(id.as_str(), false).await;
                let current = self.state.get_object(&rec.bucket, &rec.object).await?;
                if current.as_ref().is_some_and(|c| c.blob == rec.blob) {
                    drop(_guard);
                    self.quarantine_object(rec, &format!("found by a scrub: {why}"))
                        .await?;
                    done.quarantined += 1;
                }
            }
        }
        for id in published.keys() {
            if referenced.contains(id.as_str()) {
                continue;
            }
            let _guard = self.locks.acquire(id.as_str(), false).await;
            tracing::info!(blob = id.as_str(), "deleting published bytes no object points at");
            self.blobs.delete(id).await?;
            done.unreferenced += 1;
        }
        Ok(done)
    }

    /// Forgets sessions idle for longer than the configured time, deleting
    /// the bytes of those never completed, and aborts multipart uploads no
    /// record names (a node of a cluster may crash while this one runs for
    /// months). Call it periodically.
    pub async fn collect(&self, now: i64) -> Result<Collected, CoreError> {
        let mut done = Collected::default();
        let before = now.saturating_sub(self.cfg.session_ttl);
        loop {
            let batch = self.state.idle_sessions(before, 256).await?;
            // A batch that forgets nothing (every session in it kept, as
            // one whose publication keeps failing) would come back whole:
            // the rest waits for the next pass.
            let mut forgot = 0;
            for s in batch {
                let _guard = self.locks.acquire(&s.ctx, false).await;
                if !self.hold(&s.ctx).await? {
                    continue;
                }
                let result = self.forget_if_idle(&s.ctx, now, &mut done).await;
                self.let_go(&s.ctx).await;
                forgot += usize::from(result?);
            }
            if forgot == 0 {
                break;
            }
        }
        done.orphan_uploads = self.sweep_orphans(self.cfg.orphan_grace.max(SERVING_GRACE)).await;
        Ok(done)
    }

    /// Forgets session `ctx` (and an open one's bytes) if it is still
    /// idle when read again under its lock (and lease): a chunk may have
    /// just landed. Whether it was forgotten.
    async fn forget_if_idle(&self, ctx: &str, now: i64, done: &mut Collected) -> Result<bool, CoreError> {
        let Some(s) = self.state.get(ctx).await? else {
            return Ok(false);
        };
        if !self.expired(&s, now) {
            return Ok(false);
        }
        if s.completed_at.is_none() {
            if let Ok(id) = blob_id(&s.ctx) {
                self.blobs.delete(&id).await?;
            }
            done.abandoned += 1;
        } else if !self.published_before_forgetting(&s).await? {
            return Ok(false);
        } else {
            done.finished += 1;
        }
        self.state.delete_session(&s.ctx).await?;
        Ok(true)
    }

    /// Whether the object record of completed session `s` still names its
    /// blob (a later upload of the same name may have replaced it).
    async fn names_its_blob(&self, s: &Session) -> Result<bool, CoreError> {
        let current = self.state.get_object(&s.bucket, &s.object).await?;
        Ok(current.is_some_and(|r| r.blob == s.ctx))
    }

    /// Whether a completed session may be forgotten: its object is
    /// published first if its record still names it. A publication cut
    /// short (a 500 from the store, or a chunked request dropped after its
    /// commit) is otherwise finished only by a replay of the final chunk or
    /// by recovery, which goes by the session; once the session is gone,
    /// the next start takes the staged bytes for an orphan and deletes the
    /// object's bytes (found in review). `false`: publishing failed, the
    /// session is kept for the next pass.
    async fn published_before_forgetting(&self, s: &Session) -> Result<bool, CoreError> {
        let Ok(id) = blob_id(&s.ctx) else {
            return Ok(true);
        };
        if !self.names_its_blob(s).await? {
            return Ok(true);
        }
        match self.blobs.publish(&id, s.offset).await {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::error!(blob = id.as_str(), error = %e, "could not publish a completed upload; its session is kept");
                Ok(false)
            }
        }
    }

    /// Aborts multipart uploads no record names that are older than
    /// `grace`; how many. Not fatal: a store without ListMultipartUploads
    /// still serves.
    async fn sweep_orphans(&self, grace: std::time::Duration) -> usize {
        self.blobs.sweep_orphans(grace).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not look for orphaned multipart uploads");
            0
        })
    }

    /// Deletes a blob nobody points at any more (a replaced object).
    pub(crate) async fn discard_blob(&self, blob: &str) {
        if let Some(id) = BlobId::new(blob)
            && let Err(e) = self.blobs.delete(&id).await
        {
            tracing::warn!(blob, error = %e, "could not delete a replaced object's bytes");
        }
    }

    /// Computes a completed object's MD5 in the background and records it
    /// (if the object still points at this session's blob by then).
    pub(crate) fn spawn_object_md5(&self, session: &Session) {
        let Some(place) = self.idle_md5.reserve() else {
            tracing::debug!(ctx = %session.ctx, "MD5 backlog full; the object's MD5 is computed when needed");
            return;
        };
        let (blobs, state, idle) = (self.blobs.clone(), self.state.clone(), self.idle_md5.clone());
        let s = session.clone();
        tokio::spawn(async move {
            let _place = place;
            let result = async {
                let hashing = Hashing::idle(&idle).await;
                let md5 = blob_md5(blobs.as_ref(), &s.ctx, s.offset, hashing).await?;
                state.set_object_md5(&s.bucket, &s.object, &s.ctx, &md5).await?;
                Ok::<_, CoreError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(ctx = %s.ctx, error = %e, "background MD5 failed");
            }
        });
    }
}
