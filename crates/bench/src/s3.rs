//! The S3 baseline: a plain multipart upload of the same bytes to the same
//! S3-compatible server with the same part size, one part after another —
//! what an upload straight to the bucket would cost, to hold upline's S3
//! backend against.

use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use crate::Report;

/// Where the bucket is (credentials as for upline's S3 backend).
pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

/// One multipart upload of `size` bytes in `part` parts; its report.
pub async fn plain_multipart(t: &S3Target, size: u64, part: usize) -> anyhow::Result<Report> {
    let s3 = AmazonS3Builder::new()
        .with_bucket_name(&t.bucket)
        .with_region("garage")
        .with_endpoint(&t.endpoint)
        .with_allow_http(true)
        .with_access_key_id(&t.access_key)
        .with_secret_access_key(&t.secret_key)
        .with_virtual_hosted_style_request(false)
        .build()?;
    let data = crate::payload(part);
    let key = Path::from(format!("plain-{}", crate::rand_suffix()));
    let started = Instant::now();
    let upload = s3.create_multipart(&key).await?;
    let mut parts = Vec::new();
    let mut lat = Vec::new();
    let mut sent = 0u64;
    while sent < size {
        let n = (size - sent).min(part as u64) as usize;
        let t0 = Instant::now();
        let body: Bytes = data.slice(..n);
        parts.push(
            s3.put_part(&key, &upload, parts.len(), PutPayload::from(body))
                .await?,
        );
        lat.push(t0.elapsed());
        sent += n as u64;
    }
    s3.complete_multipart(&key, &upload, parts).await?;
    let seconds = started.elapsed().as_secs_f64();
    s3.delete(&key).await?;
    Ok(Report::from_run("s3-plain", size, seconds, lat))
}

impl Report {
    /// A report without server figures (no process of ours to watch).
    fn from_run(scenario: &str, bytes: u64, seconds: f64, mut lat: Vec<Duration>) -> Report {
        lat.sort();
        let ms = |d: Option<&Duration>| d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
        Report {
            scenario: scenario.into(),
            bytes,
            requests: lat.len() as u64,
            errors: 0,
            seconds,
            mib_per_s: bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9),
            requests_per_s: lat.len() as f64 / seconds.max(1e-9),
            p50_ms: ms(lat.get(lat.len() / 2)),
            p99_ms: ms(lat.get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))),
            max_ms: ms(lat.last()),
            server_peak_rss_mib: None,
            server_cpu_s_per_gib: None,
        }
    }
}
