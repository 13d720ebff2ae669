//! The parts layout: one S3 part per chunk.
//!
//! A session is one multipart upload, named for every node by the marker
//! object `staging/<id>/mpu` (its upload id). A chunk
//! at `offset` is uploaded as the part that starts there (a retry
//! replaces it) or as the next part; the UploadPart's 200 is its
//! durability point. The upload's own part list (ListParts) is the only
//! record of the chunks: part `n` starts where parts `1..n` end, so the
//! bucket alone tells any node where a session stands.
//!
//! Every byte is written once, where the chunks layout writes it twice
//! (the chunk object, then the coalesced part): on Garage, whose CPU bounds
//! an upload on a small machine, that is the difference (BENCHMARKS.md).
//!
//! What it needs of the store, checked by a probe at start
//! ([`S3Store::probe_parts`]): parts under 5 MiB accepted at completion
//! (AWS refuses them), a part's ETag equal to the MD5 of its
//! bytes, and ListParts.
//!
//! What it gives up:
//! * **10,000 chunks per upload** (S3's part numbers): 39 GiB with the
//!   protocol's 4 MiB chunks, less with smaller ones. A chunk past that is
//!   refused ([`StorageError::Limit`]); the chunks layout has no such bound
//!   short of 10,000 × `part_size`.
//! * **No read of a session in progress**: S3 serves a multipart upload
//!   only once completed. The read every session needs, the check that a
//!   replayed chunk is the chunk stored, compares MD5s instead
//!   ([`BlobStore::stored_md5`](crate::BlobStore::stored_md5)).
//!
//! **Assembly.** The upload is for the key `staging/<id>/c0…0`: completed,
//! it is the first chunk object of a chunks-layout session holding every
//! byte so far, and the session carries on in that layout. That is how a
//! parts-layout session is published (completed, then copied to
//! `blobs/<id>`: on Garage a copy shares the data blocks), and how its
//! bytes are read before publication (a whole-object MD5 claimed at
//! completion, a quarantine), which [`S3Store::assemble`] does first. A
//! chunk object at offset 0 thus says that the session is in the chunks
//! layout, whatever marker a crash left beside it.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use rusty_s3::S3Action;

use super::{Known, S3Config, S3Store, Staged, chunk_key, io_err, read_chunk};
use crate::{BlobId, ByteStream, StorageError};

/// The name of a parts-layout session's marker under `staging/<id>/`.
pub(super) const MARKER: &str = "mpu";

/// S3's last part number.
pub const MAX_PARTS: usize = 10_000;

/// A parts-layout session as listed: its upload and the parts contiguous
/// from part 1 (`parts[i]` is part `i + 1`).
pub(super) struct Session {
    upload: String,
    parts: Vec<Part>,
}

/// Where a parts-layout session's next chunk goes: all a node keeps of it
/// between chunks (a few dozen bytes, whatever the number of parts).
pub(super) struct Tip {
    upload: String,
    /// The index of the next part (its number less one).
    next: usize,
    /// Where the parts end: the next chunk's offset.
    pub(super) end: u64,
}

struct Part {
    start: u64,
    len: u64,
    /// As the store gave it (quoted), for the completion.
    etag: String,
}

impl Session {
    /// Where the parts end.
    pub(super) fn end(&self) -> u64 {
        self.parts.last().map_or(0, |p| p.start + p.len)
    }

    /// Where a chunk at `offset` goes: the part that starts there (a
    /// rewrite) or the next one; an offset inside a part is an error (the
    /// committed offset is always where a part ends).
    pub(super) fn tip_at(self, id: &BlobId, offset: u64) -> Result<Tip, StorageError> {
        let end = self.end();
        let next = match self.parts.iter().position(|p| p.start == offset) {
            Some(i) => i,
            None if offset == end => self.parts.len(),
            None => {
                return Err(StorageError::Io(io::Error::other(format!(
                    "offset {offset} of {} is not where one of its parts starts or its parts end ({end})",
                    id.as_str()
                ))));
            }
        };
        Ok(Tip {
            upload: self.upload,
            next,
            end: offset,
        })
    }
}

/// The S3 requests object_store has no call for, signed by rusty-s3 and
/// sent by reqwest.
pub(super) struct Raw {
    pub(super) bucket: rusty_s3::Bucket,
    pub(super) credentials: rusty_s3::Credentials,
    pub(super) http: reqwest::Client,
}

/// How long a signed request stays valid: it is sent at once.
pub(super) const SIGNED_FOR: Duration = Duration::from_secs(300);

impl Raw {
    pub(super) fn new(cfg: &S3Config) -> Result<Self, StorageError> {
        let endpoint = cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region));
        let bad = |what: String| StorageError::Io(io::Error::new(io::ErrorKind::InvalidInput, what));
        let url = url::Url::parse(&endpoint).map_err(|e| bad(format!("S3 endpoint {endpoint:?}: {e}")))?;
        let bucket = rusty_s3::Bucket::new(
            url,
            rusty_s3::UrlStyle::Path,
            cfg.bucket.clone(),
            cfg.region.clone(),
        )
        .map_err(|e| bad(format!("S3 endpoint {endpoint:?}: {e:?}")))?;
        Ok(Self {
            bucket,
            credentials: rusty_s3::Credentials::new(cfg.access_key.clone(), cfg.secret_key.clone()),
            // The same bound as the object_store client's (`REQUEST_TIMEOUT`).
            http: reqwest::Client::builder()
                .timeout(super::REQUEST_TIMEOUT)
                .build()
                .map_err(|e| StorageError::Io(io::Error::other(e)))?,
        })
    }

    /// Every part of `upload` as (number, size, ETag), in number order;
    /// [`StorageError::NotFound`] when the upload is gone (completed or
    /// aborted).
    pub(super) async fn list_parts(
        &self,
        key: &Path,
        upload: &str,
    ) -> Result<Vec<(u16, u64, String)>, StorageError> {
        let failed = |what: String| StorageError::Io(io::Error::other(format!("ListParts: {what}")));
        let mut out = Vec::new();
        let mut from = None;
        loop {
            let mut action = self
                .bucket
                .list_parts(Some(&self.credentials), key.as_ref(), upload);
            if let Some(marker) = from {
                action.set_part_number_marker(marker);
            }
            let resp = self
                .http
                .get(action.sign(SIGNED_FOR))
                .send()
                .await
                .map_err(|e| failed(e.to_string()))?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| failed(e.to_string()))?;
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(StorageError::NotFound);
            }
            if !status.is_success() {
                return Err(failed(format!("{status}: {text}")));
            }
            let page =
                rusty_s3::actions::ListParts::parse_response(&text).map_err(|e| failed(e.to_string()))?;
            out.extend(page.parts.into_iter().map(|p| (p.number, p.size, p.etag)));
            match page.next_part_number_marker {
                Some(marker) => from = Some(marker),
                None => break,
            }
        }
        out.sort_by_key(|p| p.0);
        Ok(out)
    }
}

fn marker_key(id: &BlobId) -> Path {
    Path::from(format!("staging/{}/{MARKER}", id.as_str()))
}

/// The MD5 an ETag stands for (the probe checked that it does).
fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(etag.trim_matches('"'), &mut out).ok()?;
    Some(out)
}

impl S3Store {
    /// The session named by the marker in `st`, from the store.
    pub(super) async fn parts_session(&self, id: &BlobId, st: &Staged) -> Result<Session, StorageError> {
        let Some(marker) = &st.mpu else {
            return Err(StorageError::NotFound);
        };
        let upload = self.resolve(marker).await?;
        let listed = self.raw.list_parts(&chunk_key(id, 0), &upload).await?;
        let mut session = Session {
            upload,
            parts: Vec::with_capacity(listed.len()),
        };
        for (number, size, etag) in listed {
            // Contiguous from part 1: a gap ends what the parts hold.
            if usize::from(number) != session.parts.len() + 1 {
                break;
            }
            session.parts.push(Part {
                start: session.end(),
                len: size,
                etag,
            });
        }
        Ok(session)
    }

    /// A chunk of a parts-layout session at `tip` (`None`: a session to
    /// start).
    pub(super) async fn write_part(
        &self,
        id: &BlobId,
        offset: u64,
        body: ByteStream,
        tip: Option<Tip>,
    ) -> Result<u64, StorageError> {
        let (mut upload, index, new) = match tip {
            Some(t) => (t.upload, t.next, false),
            None => (String::new(), 0, true),
        };
        if index >= self.max_parts {
            return Err(StorageError::Limit(format!(
                "an upload on this store holds at most {} chunks (S3 parts); \
                 its operator can lift this with s3_layout = \"chunks\"",
                self.max_parts
            )));
        }
        let chunk = read_chunk(body).await?;
        let len = chunk.len() as u64;
        let key = chunk_key(id, 0);
        if new {
            upload = self.s3.create_multipart(&key).await.map_err(io_err)?;
        }
        // The marker (a new session's) and the part go up together; the
        // chunk is acknowledged when both are there.
        let marker = async {
            if new {
                self.s3
                    .put(&marker_key(id), PutPayload::from(upload.clone()))
                    .await
                    .map_err(io_err)?;
            }
            Ok::<_, StorageError>(())
        };
        let part = async {
            if len == 0 {
                // An empty chunk adds no part (S3 has no use for one).
                return Ok(());
            }
            self.s3
                .put_part(&key, &upload, index, PutPayload::from(chunk))
                .await
                .map(|_| ())
                .map_err(io_err)
        };
        let (marker, part) = tokio::join!(marker, part);
        marker?;
        part?;
        let next = if len == 0 { index } else { index + 1 };
        let end = offset + len;
        self.remember(id, Known::Parts(Tip { upload, next, end }));
        Ok(len)
    }

    /// Completes the session's upload with its parts that start below
    /// `upto` (those past it are dropped) into the chunk object at offset
    /// 0, and removes the marker: the session is in the chunks layout from
    /// here on (module doc).
    pub(super) async fn assemble(
        &self,
        id: &BlobId,
        session: &Session,
        upto: u64,
    ) -> Result<(), StorageError> {
        self.forget(id);
        let key = chunk_key(id, 0);
        let parts: Vec<PartId> = session
            .parts
            .iter()
            .take_while(|p| p.start < upto)
            .map(|p| PartId {
                content_id: p.etag.clone(),
            })
            .collect();
        if parts.is_empty() {
            self.s3
                .put(&key, PutPayload::from(Bytes::new()))
                .await
                .map_err(io_err)?;
            let _ = self.s3.abort_multipart(&key, &session.upload).await;
        } else {
            self.s3
                .complete_multipart(&key, &session.upload, parts)
                .await
                .map_err(io_err)?;
        }
        match self.s3.delete(&marker_key(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    /// The MD5 of the part at `offset` if it is `len` bytes long.
    pub(super) async fn part_md5(
        &self,
        id: &BlobId,
        offset: u64,
        len: u64,
    ) -> Result<Option<[u8; 16]>, StorageError> {
        let st = self.staged(id).await?;
        if st.mpu.is_none() {
            return Ok(None);
        }
        let session = match self.parts_session(id, &st).await {
            Ok(s) => s,
            // Completed since: the object is read instead.
            Err(StorageError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(session
            .parts
            .iter()
            .find(|p| p.start == offset && p.len == len)
            .and_then(|p| etag_md5(&p.etag)))
    }

    /// Whether the store can take the parts layout (module doc): a real
    /// two-part upload under a `probe/` key, completed, read back and
    /// deleted. `Err` says what failed.
    pub(super) async fn probe_parts(&self) -> Result<(), String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let key = Path::from(format!("probe/{}-{nanos}", std::process::id()));
        let upload = self
            .s3
            .create_multipart(&key)
            .await
            .map_err(|e| format!("CreateMultipartUpload: {e}"))?;
        let probe = async {
            let pieces = [
                Bytes::from_static(b"upline probe: a part under S3's 5 MiB minimum, "),
                Bytes::from_static(b"then the last part"),
            ];
            let mut parts = Vec::new();
            for (i, piece) in pieces.iter().enumerate() {
                let part = self
                    .s3
                    .put_part(&key, &upload, i, PutPayload::from(piece.clone()))
                    .await
                    .map_err(|e| format!("UploadPart: {e}"))?;
                if etag_md5(&part.content_id) != Some(fast_md5::digest(piece)) {
                    return Err(format!("a part's ETag ({}) is not its MD5", part.content_id));
                }
                parts.push(part);
            }
            let listed = self
                .raw
                .list_parts(&key, &upload)
                .await
                .map_err(|e| e.to_string())?;
            let expected: Vec<(u16, u64, Option<[u8; 16]>)> = pieces
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u16 + 1, p.len() as u64, Some(fast_md5::digest(p))))
                .collect();
            let got: Vec<_> = listed
                .iter()
                .map(|(n, size, etag)| (*n, *size, etag_md5(etag)))
                .collect();
            if got != expected {
                return Err(format!("ListParts answered {listed:?}"));
            }
            self.s3
                .complete_multipart(&key, &upload, parts)
                .await
                .map_err(|e| format!("parts under 5 MiB refused at completion: {e}"))?;
            let back = self
                .s3
                .get(&key)
                .await
                .map_err(|e| e.to_string())?
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            if back != pieces.concat() {
                return Err("the completed object does not hold its parts".into());
            }
            Ok(())
        }
        .await;
        if probe.is_err() {
            let _ = self.s3.abort_multipart(&key, &upload).await;
        }
        let _ = self.s3.delete(&key).await;
        probe
    }
}

#[cfg(test)]
mod tests {
    use super::etag_md5;

    #[test]
    fn etags_are_read_as_md5s_only_when_they_are_one() {
        let md5 = fast_md5::digest(b"abc");
        let hex: String = md5.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(etag_md5(&format!("\"{hex}\"")), Some(md5));
        assert_eq!(etag_md5(&hex), Some(md5));
        assert_eq!(etag_md5(&format!("\"{hex}-2\"")), None, "a multipart ETag");
        assert_eq!(etag_md5("\"zz\""), None);
        assert_eq!(etag_md5(&"g".repeat(32)), None);
    }
}
