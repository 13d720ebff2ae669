//! Multipart uploads that no record names: a node killed between S3's
//! CreateMultipartUpload and the PUT of the object naming the upload (a
//! parts-layout session's marker `staging/<id>/mpu`, a chunks-layout
//! publication's `staging/<id>/upload`), or in the middle of the start-up
//! probe. No acknowledged byte is in such an upload (the chunk it was for
//! got no 200), but the store keeps its parts until someone aborts it, and
//! nothing under `staging/` lists it. [`S3Store::sweep`] finds them with
//! ListMultipartUploads, which object_store has no call for (rusty-s3
//! signs it as a request of our own, reqwest sends it), and aborts those
//! older than a grace period: an upload created a moment ago may be named
//! by another node in the next moment.

use std::io;
use std::time::Duration;

use instant_xml::FromXml;
use object_store::ObjectStore;
use object_store::multipart::MultipartStore;
use object_store::path::Path;

use super::parts::{Raw, SIGNED_FOR};
use super::{S3Store, chunk_key, io_err};
use crate::{BlobId, StorageError};

const S3_XML_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// The prefixes upline creates multipart uploads under.
const PREFIXES: [&str; 3] = ["staging/", "blobs/", "probe/"];

#[derive(Debug, FromXml)]
#[xml(rename = "ListMultipartUploadsResult", ns(S3_XML_NS))]
struct UploadsPage {
    uploads: Vec<Upload>,
    #[xml(rename = "IsTruncated")]
    is_truncated: Option<bool>,
    #[xml(rename = "NextKeyMarker")]
    next_key_marker: Option<String>,
    #[xml(rename = "NextUploadIdMarker")]
    next_upload_id_marker: Option<String>,
}

/// One multipart upload in progress.
#[derive(Debug, Clone, FromXml)]
#[xml(rename = "Upload", ns(S3_XML_NS))]
pub(super) struct Upload {
    #[xml(rename = "Key")]
    pub key: String,
    #[xml(rename = "UploadId")]
    pub upload_id: String,
    #[xml(rename = "Initiated")]
    pub initiated: String,
}

impl Raw {
    /// Every multipart upload in progress under `prefix`.
    pub(super) async fn list_uploads(&self, prefix: &str) -> Result<Vec<Upload>, StorageError> {
        let failed =
            |what: String| StorageError::Io(io::Error::other(format!("ListMultipartUploads: {what}")));
        let mut out = Vec::new();
        let mut from: Option<(String, String)> = None;
        loop {
            // Sorted by name, as the signature wants.
            let mut query = vec![("prefix", prefix), ("uploads", "")];
            if let Some((key, upload)) = &from {
                query.push(("key-marker", key));
                query.push(("upload-id-marker", upload));
            }
            query.sort();
            let url = rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Get,
                self.bucket.base_url().clone(),
                self.credentials.key(),
                self.credentials.secret(),
                self.credentials.token(),
                self.bucket.region(),
                SIGNED_FOR.as_secs(),
                query.iter().copied(),
                std::iter::empty(),
            );
            let resp = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| failed(e.to_string()))?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| failed(e.to_string()))?;
            if !status.is_success() {
                return Err(failed(format!("{status}: {text}")));
            }
            let page: UploadsPage = instant_xml::from_str(&text).map_err(|e| failed(e.to_string()))?;
            out.extend(page.uploads);
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (Some(true), Some(key), Some(upload))
                    if from.as_ref() == Some(&(key.clone(), upload.clone())) =>
                {
                    return Err(failed("the same page again (the markers did not move)".into()));
                }
                (Some(true), Some(key), Some(upload)) if !key.is_empty() => from = Some((key, upload)),
                (Some(true), ..) => return Err(failed("a truncated page without its next markers".into())),
                _ => return Ok(out),
            }
        }
    }
}

/// The object that names the upload for `key`, if `key` is one upline
/// creates uploads for: `None` for a probe's (never named once the probe
/// is over) and `Err(())` for a key upline does not use (left alone).
fn naming_record(key: &str) -> Result<Option<Path>, ()> {
    if key.starts_with("probe/") {
        return Ok(None);
    }
    if let Some(id) = key.strip_prefix("blobs/").and_then(BlobId::new) {
        return Ok(Some(Path::from(format!("staging/{}/upload", id.as_str()))));
    }
    if let Some(id) = key
        .strip_prefix("staging/")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(id, _)| BlobId::new(id))
        && chunk_key(&id, 0).as_ref() == key
    {
        return Ok(Some(Path::from(format!("staging/{}/mpu", id.as_str()))));
    }
    Err(())
}

impl S3Store {
    /// Aborts the multipart uploads under upline's prefixes that no record
    /// names and that were started more than `older_than` ago; how many.
    pub(super) async fn sweep(&self, older_than: Duration) -> Result<usize, StorageError> {
        let cutoff = jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(older_than).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(jiff::Timestamp::MIN);
        let mut aborted = 0;
        for prefix in PREFIXES {
            for up in self.raw.list_uploads(prefix).await? {
                let Ok(record) = naming_record(&up.key) else {
                    continue;
                };
                match up.initiated.parse::<jiff::Timestamp>() {
                    Ok(t) if t <= cutoff => {}
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(key = up.key, initiated = up.initiated, error = %e, "multipart upload with an unreadable start time: left alone");
                        continue;
                    }
                }
                if let Some(record) = record {
                    match self.s3.get(&record).await {
                        Ok(r) => {
                            let named = r.bytes().await.map_err(io_err)?;
                            if named.as_ref() == up.upload_id.as_bytes() {
                                continue;
                            }
                        }
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(io_err(e)),
                    }
                }
                match self
                    .s3
                    .abort_multipart(&Path::from(up.key.as_str()), &up.upload_id)
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(io_err(e)),
                }
                tracing::info!(
                    key = up.key,
                    upload = up.upload_id,
                    initiated = up.initiated,
                    "aborted a multipart upload no record names"
                );
                aborted += 1;
            }
        }
        Ok(aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_uploads_for_upline_keys_only() {
        let c0 = format!("staging/s-1/c{:020}", 0);
        assert_eq!(naming_record(&c0), Ok(Some(Path::from("staging/s-1/mpu"))));
        assert_eq!(
            naming_record("blobs/s-1"),
            Ok(Some(Path::from("staging/s-1/upload")))
        );
        assert_eq!(naming_record("probe/12-34"), Ok(None));
        // A later chunk's key never has an upload of ours; nor has a key
        // outside our prefixes or with a name that is no blob id.
        assert_eq!(naming_record(&format!("staging/s-1/c{:020}", 4096)), Err(()));
        assert_eq!(naming_record("staging/s-1/mpu"), Err(()));
        assert_eq!(naming_record("blobs/a b"), Err(()));
        assert_eq!(naming_record("other/x"), Err(()));
    }

    #[test]
    fn a_page_of_uploads_is_read_with_what_it_does_not_need() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>staging/x/c</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
  <Prefix>staging/</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>staging/x/c</Key><UploadId>u2</UploadId>
    <Initiator><ID>i</ID><DisplayName>d</DisplayName></Initiator>
    <Owner><ID>i</ID><DisplayName>d</DisplayName></Owner>
    <StorageClass>STANDARD</StorageClass><Initiated>2026-11-24T19:00:00.000Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page: UploadsPage = instant_xml::from_str(xml).unwrap();
        assert_eq!(page.uploads.len(), 1);
        assert_eq!(page.uploads[0].upload_id, "u2");
        assert_eq!(page.is_truncated, Some(true));
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("u2"));
        assert!(page.uploads[0].initiated.parse::<jiff::Timestamp>().is_ok());
    }
}
