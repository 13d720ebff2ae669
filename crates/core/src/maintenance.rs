//! Housekeeping: recovery of storage at start, collection of idle
//! sessions, and object MD5s computed off the upload's hot path.

use upline_state::Session;
use upline_storage::BlobId;

use crate::upload::{blob_id, blob_md5};
use crate::{CoreError, Node};

/// What one collection pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Open sessions removed with their bytes.
    pub abandoned: usize,
    /// Completed sessions forgotten (their objects stay).
    pub finished: usize,
}

impl Node {
    /// Brings storage in line with the session store after a crash:
    /// staged blobs of no session are deleted, completed sessions whose
    /// publication was cut short are published. Returns blobs fixed.
    pub async fn recover(&self) -> Result<usize, CoreError> {
        let mut fixed = 0;
        for id in self.blobs.list_staged().await? {
            let _guard = self.locks.acquire(id.as_str(), false).await;
            match self.state.get(id.as_str()).await? {
                // On a shared store another node may be writing a first
                // chunk right now (its session is committed after): only a
                // node alone with its store can tell orphans from those.
                None if self.blobs.shared() => {}
                None => {
                    tracing::info!(blob = id.as_str(), "deleting staged bytes of no session");
                    self.blobs.delete(&id).await?;
                    fixed += 1;
                }
                Some(s) if s.completed_at.is_some() => {
                    let current = self.state.get_object(&s.bucket, &s.object).await?;
                    if current.is_some_and(|r| r.blob == s.ctx) {
                        tracing::info!(blob = id.as_str(), "finishing an interrupted publication");
                        self.blobs.publish(&id, s.offset).await?;
                    } else {
                        self.blobs.delete(&id).await?;
                    }
                    fixed += 1;
                }
                Some(_) => {}
            }
        }
        Ok(fixed)
    }

    /// Forgets sessions idle for longer than the configured time, deleting
    /// the bytes of those never completed. Call it periodically.
    pub async fn collect(&self, now: i64) -> Result<Collected, CoreError> {
        let mut done = Collected::default();
        let before = now.saturating_sub(self.cfg.session_ttl);
        loop {
            let batch = self.state.idle_sessions(before, 256).await?;
            if batch.is_empty() {
                return Ok(done);
            }
            for s in batch {
                let _guard = self.locks.acquire(&s.ctx, false).await;
                // Re-read under the lock: a chunk may have just landed.
                let Some(s) = self.state.get(&s.ctx).await? else {
                    continue;
                };
                if !self.expired(&s, now) {
                    continue;
                }
                if s.completed_at.is_none() {
                    if let Ok(id) = blob_id(&s.ctx) {
                        self.blobs.delete(&id).await?;
                    }
                    done.abandoned += 1;
                } else {
                    done.finished += 1;
                }
                self.state.delete_session(&s.ctx).await?;
            }
        }
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
        let (blobs, state) = (self.blobs.clone(), self.state.clone());
        let s = session.clone();
        tokio::spawn(async move {
            let result = async {
                let md5 = blob_md5(blobs.as_ref(), &s.ctx, s.offset).await?;
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
