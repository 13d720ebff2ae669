//! One file's upload: resume from the journal and the server's resume
//! point, chunks with retries and failover, whole-file MD5 on the way.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use md5::{Digest, Md5};
use upline_proto::{UploadOk, UploadParams};

use crate::journal::{Entry, FileIdentity};
use crate::policy::{Chunker, request_timeout};
use crate::wire::{self, ChunkCall, Reply};
use crate::{Event, Inner, UploadError, Uploaded};

/// Restarting from 0 more often than this means something is wrong.
const MAX_RESTARTS: u32 = 3;

/// The moving parts of one upload.
struct Upload<'a> {
    inner: &'a Inner,
    path: PathBuf,
    bucket: &'a str,
    object: &'a str,
    token: String,
    content_type: Option<String>,
    file: Arc<File>,
    size: u64,
    ctx: Option<String>,
    offset: u64,
    /// Index into the node list; moves on at each failure (failover).
    node: usize,
    chunker: Chunker,
}

/// What became of one chunk.
enum Sent {
    Acked(UploadOk),
    /// The server's resume point differs from ours: continue from there.
    Resync(u64),
    /// The server does not know the context any more.
    Restart(String),
}

impl Inner {
    pub(crate) async fn upload_file(
        &self,
        path: &Path,
        bucket: &str,
        object: &str,
    ) -> Result<Uploaded, UploadError> {
        let started = Instant::now();
        let file_err = |source| UploadError::File {
            path: path.display().to_string(),
            source,
        };
        let identity = FileIdentity::of(path).map_err(file_err)?;
        let file = Arc::new(File::open(&identity.path).map_err(file_err)?);
        let token = self.tokens.token(bucket, object).await?;
        let mut up = Upload {
            inner: self,
            path: identity.path.clone(),
            bucket,
            object,
            token,
            content_type: Some(self.content_type_of(path)),
            file,
            size: identity.size,
            ctx: None,
            offset: 0,
            node: 0,
            chunker: Chunker::new(self.chunks),
        };
        let journal_at = self
            .journal
            .as_ref()
            .map(|j| j.path_for(&identity.path, bucket, object));
        if let (Some(j), Some(at)) = (&self.journal, &journal_at)
            && let Some(entry) = j.load(at)
        {
            if entry.file != identity {
                up.warn("the file changed since its interrupted upload; starting over");
                j.remove(at);
            } else {
                match up.resume_point(&entry.context).await? {
                    Some(offset) => {
                        up.ctx = Some(entry.context);
                        up.offset = offset;
                    }
                    None => up.warn("the server no longer knows the interrupted upload; starting over"),
                }
            }
        }
        let resumed_from = up.offset;
        self.emit(Event::Started {
            path: up.path.clone(),
            object: object.to_owned(),
            size: up.size,
            resumed_from,
        });
        let mut md5 = up.hash_prefix(up.offset).await?;
        let mut restarts = 0;
        let size = up.size;
        // The upload is done: its journal entry goes.
        let done = |md5: String, context: String, callback_ret_msg: String| {
            if let (Some(j), Some(at)) = (&self.journal, &journal_at) {
                j.remove(at);
            }
            Uploaded {
                bucket: bucket.to_owned(),
                object: object.to_owned(),
                size,
                md5,
                context,
                seconds: started.elapsed().as_secs_f64(),
                resumed_from,
                callback_ret_msg,
            }
        };
        loop {
            if up.size > 0
                && up.offset == up.size
                && let Some(context) = up.ctx.clone()
            {
                // Only a final chunk (checked against the whole file's
                // MD5) takes a session to the file's size: it was
                // committed and its answer lost (an interrupted run, or
                // retries spent on it). Sending nothing more is the
                // answer; an empty final chunk would be refused as
                // already complete, on every later run too.
                up.warn("the upload was already complete: its last answer had been lost");
                return Ok(done(hex::encode(md5.finalize()), context, String::new()));
            }
            let len = up.chunker.size().min(up.size - up.offset);
            let complete = up.offset + len == up.size;
            let chunk = up.read(up.offset, len).await?;
            // The whole-file MD5 goes with the final chunk, as a claim the
            // server checks before it publishes anything.
            let claim = complete.then(|| {
                let mut whole = md5.clone();
                whole.update(&chunk);
                hex::encode(whole.finalize())
            });
            match up.send(chunk.clone(), complete, claim.as_deref()).await? {
                Sent::Acked(ok) if ok.offset == up.offset + len => {
                    md5.update(&chunk);
                    up.offset = ok.offset;
                    up.ctx = Some(ok.context.clone());
                    self.emit(Event::Progress {
                        path: up.path.clone(),
                        acked: up.offset,
                        total: up.size,
                    });
                    if complete {
                        return Ok(done(claim.unwrap_or_default(), ok.context, ok.callback_ret_msg));
                    }
                    if let (Some(j), Some(at)) = (&self.journal, &journal_at) {
                        let entry = Entry {
                            file: identity.clone(),
                            bucket: bucket.to_owned(),
                            object: object.to_owned(),
                            context: ok.context,
                            offset: up.offset,
                        };
                        j.save(at, &entry).map_err(|source| UploadError::Journal {
                            path: at.display().to_string(),
                            source,
                        })?;
                    }
                }
                Sent::Acked(ok) => {
                    up.warn(&format!(
                        "the server acknowledged offset {}, expected {}; following it",
                        ok.offset,
                        up.offset + len
                    ));
                    up.ctx = Some(ok.context);
                    up.offset = ok.offset.min(up.size);
                    md5 = up.hash_prefix(up.offset).await?;
                }
                Sent::Resync(offset) => {
                    up.offset = offset.min(up.size);
                    md5 = up.hash_prefix(up.offset).await?;
                }
                Sent::Restart(why) => {
                    restarts += 1;
                    if restarts > MAX_RESTARTS {
                        return Err(UploadError::Refused {
                            status: 404,
                            message: why,
                        });
                    }
                    up.warn(&format!(
                        "the server no longer knows this upload ({why}); starting over"
                    ));
                    up.ctx = None;
                    up.offset = 0;
                    md5 = Md5::new();
                }
            }
        }
    }

    fn content_type_of(&self, path: &Path) -> String {
        mime_guess::from_path(path)
            .first_or_octet_stream()
            .essence_str()
            .to_owned()
    }
}

impl Upload<'_> {
    fn warn(&self, message: &str) {
        tracing::warn!(path = %self.path.display(), "{message}");
        self.inner.emit(Event::Warning {
            path: self.path.clone(),
            message: message.to_owned(),
        });
    }

    /// Runs blocking reads of the local file off the async runtime.
    async fn on_file<T: Send + 'static>(
        &self,
        f: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, UploadError> {
        let file = self.file.clone();
        let r = tokio::task::spawn_blocking(move || f(&file))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        r.map_err(|source| UploadError::File {
            path: self.path.display().to_string(),
            source,
        })
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Bytes, UploadError> {
        self.on_file(move |file| {
            let mut buf = vec![0; len as usize];
            file.read_exact_at(&mut buf, offset).map(|_| Bytes::from(buf))
        })
        .await
    }

    /// MD5 state over the file's first `upto` bytes, read locally.
    async fn hash_prefix(&self, upto: u64) -> Result<Md5, UploadError> {
        self.on_file(move |file| {
            let mut h = Md5::new();
            let mut buf = vec![0; 1 << 20];
            let mut at = 0;
            while at < upto {
                let n = (upto - at).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], at)?;
                h.update(&buf[..n]);
                at += n as u64;
            }
            Ok(h)
        })
        .await
    }

    async fn node_url(&self) -> Result<String, UploadError> {
        let nodes = self.inner.nodes.get(&self.inner.http, self.bucket).await?;
        let node = &nodes[self.node % nodes.len()];
        wire::object_url(node, self.bucket, self.object).map_err(UploadError::Config)
    }

    /// After a failure: the next node, and a fresh LBS answer once every
    /// node of the current one has failed.
    async fn fail_over(&mut self) {
        self.node += 1;
        let count = self
            .inner
            .nodes
            .get(&self.inner.http, self.bucket)
            .await
            .map(|n| n.len())
            .unwrap_or(1);
        if self.node.is_multiple_of(count.max(1)) {
            let _ = self.inner.nodes.refresh(&self.inner.http, self.bucket).await;
        }
    }

    async fn backoff(&mut self, attempt: u32, reason: String) -> Result<(), UploadError> {
        let policy = self.inner.retry;
        if attempt >= policy.max_attempts {
            return Err(UploadError::Exhausted {
                attempts: attempt,
                last: reason,
            });
        }
        tracing::debug!(path = %self.path.display(), attempt, %reason, "retrying");
        self.inner.emit(Event::Retry {
            path: self.path.clone(),
            attempt,
            reason,
        });
        self.fail_over().await;
        tokio::time::sleep(policy.delay(attempt)).await;
        Ok(())
    }

    /// Sends one chunk until it is acknowledged or a final answer comes.
    /// A retry sends the very same bytes: the protocol's exact replay
    /// makes that safe when the first try did land.
    async fn send(&mut self, chunk: Bytes, complete: bool, claim: Option<&str>) -> Result<Sent, UploadError> {
        let len = chunk.len() as u64;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let url = match self.node_url().await {
                Ok(u) => u,
                Err(UploadError::Discovery(e)) => {
                    self.backoff(attempt, e).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let call = ChunkCall {
                url: &url,
                token: &self.token,
                params: UploadParams {
                    offset: self.offset,
                    complete,
                    context: self.ctx.clone(),
                },
                body: chunk.clone(),
                content_md5: claim,
                content_type: self.content_type.as_deref(),
                timeout: request_timeout(len, self.inner.min_rate),
            };
            let started = Instant::now();
            let failure = match wire::post_chunk(&self.inner.http, call).await {
                Reply::Ok(ok) => {
                    self.chunker.on_success(len, started.elapsed());
                    return Ok(Sent::Acked(ok));
                }
                Reply::Status { status: 403, message } => return Err(UploadError::Token(message)),
                Reply::Status { status: 404, message } if self.ctx.is_some() => {
                    return Ok(Sent::Restart(message));
                }
                Reply::Status { status: 400, message } if self.ctx.is_some() => {
                    // Most likely an offset mismatch: the query endpoint has the truth.
                    let ctx = self.ctx.clone().unwrap_or_default();
                    match self.resume_point(&ctx).await? {
                        Some(q) if q != self.offset => return Ok(Sent::Resync(q)),
                        None => return Ok(Sent::Restart(message)),
                        // Another writer holds the session: another node,
                        // whose request from before a network loss still
                        // runs until its lease ends, or a newer request.
                        // The same chunk, later (it used to end the upload).
                        Some(_)
                            if message == upline_proto::BUSY_MESSAGE
                                || message == upline_proto::SUPERSEDED_MESSAGE =>
                        {
                            format!("400: {message}")
                        }
                        Some(_) => return Err(UploadError::Refused { status: 400, message }),
                    }
                }
                Reply::Status { status, message } if status >= 500 => format!("{status}: {message}"),
                Reply::Status { status, message } => return Err(UploadError::Refused { status, message }),
                Reply::Network { timeout, message } => {
                    if timeout {
                        self.chunker.on_timeout();
                    }
                    message
                }
            };
            self.backoff(attempt, failure).await?;
        }
    }

    /// The server's resume point of `ctx`; `None` when it does not know it.
    async fn resume_point(&mut self, ctx: &str) -> Result<Option<u64>, UploadError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.node_url().await {
                Err(UploadError::Discovery(e)) => e,
                Err(e) => return Err(e),
                Ok(url) => {
                    match wire::query(&self.inner.http, &url, &self.token, ctx, request_timeout(0, 1)).await {
                        Reply::Ok(q) => return Ok(Some(q.offset)),
                        Reply::Status { status: 404, .. } => return Ok(None),
                        Reply::Status { status: 403, message } => return Err(UploadError::Token(message)),
                        // 429: the node's query rate limit; wait and ask again.
                        Reply::Status { status, message } if status >= 500 || status == 429 => {
                            format!("{status}: {message}")
                        }
                        Reply::Status { status, message } => {
                            return Err(UploadError::Refused { status, message });
                        }
                        Reply::Network { message, .. } => message,
                    }
                }
            };
            self.backoff(attempt, failure).await?;
        }
    }
}
