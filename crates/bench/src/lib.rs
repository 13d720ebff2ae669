//! A load generator that speaks upline's protocol and tus 1.0 (for the
//! peers), over keep-alive connections, and reports throughput, request
//! latency percentiles and what the server process cost (`procstat`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use upline_proto::{ObjectKey, ObjectPath, PutPolicy, UploadParams};

pub mod bare;
pub mod procstat;
pub mod s3;

/// Which protocol a server speaks.
#[derive(Debug, Clone)]
pub enum Proto {
    /// upline's: a token per object from these credentials.
    Upline { access_key: String, secret_key: String },
    /// tus 1.0: `POST {base}/files/` then `PATCH` with `Upload-Offset`.
    Tus,
}

/// A server under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub base: String,
    pub proto: Proto,
    /// The server's process, for RSS and CPU figures.
    pub pid: Option<u32>,
}

/// One scenario's figures (printed as a JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub bytes: u64,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub mib_per_s: f64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub server_peak_rss_mib: Option<f64>,
    pub server_cpu_s_per_gib: Option<f64>,
}

fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client")
}

/// Deterministic bytes for bodies (content does not matter, size does).
pub fn payload(len: usize) -> Bytes {
    let mut x: u32 = 0x9E37_79B9;
    Bytes::from(
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect::<Vec<u8>>(),
    )
}

/// MiB/s of the node's MD5 (fast-md5) on one core: 256 MiB in 4 MiB
/// updates, best of five runs.
pub fn md5_speed() -> f64 {
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    (0..5)
        .map(|_| {
            let started = std::time::Instant::now();
            let mut h = fast_md5::Md5::new();
            for _ in 0..64 {
                h.update(&data);
            }
            std::hint::black_box(h.finalize());
            256.0 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn md5_hex(b: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(b))
}

/// Uploads one object of `size` bytes in `chunk` pieces; every request's
/// latency goes to `lat`. `with_md5` sends each chunk's `Content-MD5`.
pub async fn upload_one(
    http: &reqwest::Client,
    t: &Target,
    object: &str,
    size: u64,
    data: &Bytes,
    with_md5: bool,
    lat: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let chunk = data.len() as u64;
    let chunk_md5 = with_md5.then(|| md5_hex(data));
    match &t.proto {
        Proto::Upline {
            access_key,
            secret_key,
        } => {
            let policy = PutPolicy {
                bucket: "bench".into(),
                object: object.into(),
                expires: Some(i64::MAX / 2),
                ..Default::default()
            };
            let token = policy.sign(access_key, secret_key.as_bytes());
            let path = ObjectPath {
                bucket: upline_proto::Bucket::parse("bench")?,
                object: ObjectKey::parse(object)?,
            };
            let mut ctx: Option<String> = None;
            let mut offset = 0;
            loop {
                let len = chunk.min(size - offset);
                let complete = offset + len == size;
                let params = UploadParams {
                    offset,
                    complete,
                    context: ctx.clone(),
                };
                let mut req = http
                    .post(format!("{}{}?{}", t.base, path.render(), params.render()))
                    .header("x-nos-token", &token)
                    .body(data.slice(..len as usize));
                if let Some(m) = &chunk_md5
                    && len == chunk
                {
                    req = req.header("content-md5", m);
                }
                let started = Instant::now();
                let resp = req.send().await?;
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                lat.push(started.elapsed());
                if status != 200 {
                    bail!("chunk at {offset}: {status} {body}");
                }
                ctx = body["context"].as_str().map(str::to_owned);
                offset += len;
                if complete {
                    return Ok(());
                }
            }
        }
        Proto::Tus => {
            let started = Instant::now();
            let resp = http
                .post(format!("{}/files/", t.base))
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Length", size.to_string())
                .header("Content-Length", "0")
                .send()
                .await?;
            lat.push(started.elapsed());
            if resp.status() != 201 {
                bail!("tus creation: {}", resp.status());
            }
            let location = resp
                .headers()
                .get("location")
                .context("tus creation without Location")?
                .to_str()?
                .to_owned();
            let url = if location.starts_with("http") {
                location
            } else {
                format!("{}{location}", t.base)
            };
            let mut offset = 0;
            while offset < size {
                let len = chunk.min(size - offset);
                let started = Instant::now();
                let resp = http
                    .patch(&url)
                    .header("Tus-Resumable", "1.0.0")
                    .header("Upload-Offset", offset.to_string())
                    .header("Content-Type", "application/offset+octet-stream")
                    .body(data.slice(..len as usize))
                    .send()
                    .await?;
                lat.push(started.elapsed());
                if resp.status() != 204 {
                    bail!("tus PATCH at {offset}: {}", resp.status());
                }
                offset += len;
            }
            Ok(())
        }
    }
}

/// Measures `run` (which returns bytes moved, requests and latencies).
async fn measured<F>(scenario: &str, pid: Option<u32>, run: F) -> anyhow::Result<Report>
where
    F: std::future::Future<Output = anyhow::Result<(u64, Vec<Duration>, u64)>>,
{
    let cpu0 = pid.and_then(procstat::cpu_seconds);
    let sampler = pid.map(procstat::RssSampler::start);
    let started = Instant::now();
    let result = run.await;
    let seconds = started.elapsed().as_secs_f64();
    let peak = sampler.map(procstat::RssSampler::finish);
    let cpu1 = pid.and_then(procstat::cpu_seconds);
    let (bytes, mut lat, errors) = result?;
    lat.sort();
    let pct = |p: f64| {
        lat.get(
            ((lat.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(lat.len().saturating_sub(1)),
        )
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
    };
    let gib = bytes as f64 / (1u64 << 30) as f64;
    Ok(Report {
        scenario: scenario.into(),
        bytes,
        requests: lat.len() as u64,
        errors,
        seconds,
        mib_per_s: bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9),
        requests_per_s: lat.len() as f64 / seconds.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
        server_peak_rss_mib: peak.map(|b| b as f64 / (1 << 20) as f64),
        server_cpu_s_per_gib: match (cpu0, cpu1) {
            (Some(a), Some(b)) if gib > 0.0 => Some((b - a) / gib),
            _ => None,
        },
    })
}

/// One upload of `size` bytes in `chunk` pieces over one connection.
pub async fn single(t: &Target, size: u64, chunk: usize, with_md5: bool) -> anyhow::Result<Report> {
    let data = payload(chunk);
    let http = client(1);
    let name = if with_md5 { "single+md5" } else { "single" };
    measured(name, t.pid, async {
        let mut lat = Vec::new();
        upload_one(
            &http,
            t,
            &format!("single-{}", rand_suffix()),
            size,
            &data,
            with_md5,
            &mut lat,
        )
        .await?;
        Ok((size, lat, 0))
    })
    .await
}

/// `uploads` uploads of `size` bytes in `chunk` pieces, all at once.
pub async fn concurrent(t: &Target, uploads: usize, size: u64, chunk: usize) -> anyhow::Result<Report> {
    let data = payload(chunk);
    let http = client(uploads);
    measured("concurrent", t.pid, async {
        let results: Vec<_> = futures_util::stream::iter(0..uploads)
            .map(|i| {
                let (http, data) = (http.clone(), data.clone());
                async move {
                    let mut lat = Vec::new();
                    let r = upload_one(
                        &http,
                        t,
                        &format!("c-{}-{i}", rand_suffix()),
                        size,
                        &data,
                        false,
                        &mut lat,
                    )
                    .await;
                    (r, lat)
                }
            })
            .buffer_unordered(uploads)
            .collect()
            .await;
        let mut all = Vec::new();
        let (mut bytes, mut errors) = (0, 0);
        for (r, lat) in results {
            all.extend(lat);
            match r {
                Ok(()) => bytes += size,
                Err(_) => errors += 1,
            }
        }
        Ok((bytes, all, errors))
    })
    .await
}

/// `GET /lbs` from `connections` connections for `duration`.
pub async fn lbs(t: &Target, connections: usize, duration: Duration) -> anyhow::Result<Report> {
    let http = client(connections);
    let url = format!("{}/lbs?version=1.0&bucketname=bench", t.base);
    measured("lbs", t.pid, async {
        let deadline = Instant::now() + duration;
        let workers = (0..connections).map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let started = Instant::now();
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => lat.push(started.elapsed()),
                            Err(_) => errors += 1,
                        },
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        });
        let mut all = Vec::new();
        let mut errors = 0;
        for w in futures_util::future::join_all(workers).await {
            let (lat, e) = w?;
            all.extend(lat);
            errors += e;
        }
        Ok((0, all, errors))
    })
    .await
}

/// `count` resume-point queries of one session (upline only).
pub async fn query(t: &Target, count: usize) -> anyhow::Result<Report> {
    let Proto::Upline {
        access_key,
        secret_key,
    } = &t.proto
    else {
        bail!("the query scenario is upline's only")
    };
    let http = client(1);
    let object = format!("q-{}", rand_suffix());
    let policy = PutPolicy {
        bucket: "bench".into(),
        object: object.clone(),
        expires: Some(i64::MAX / 2),
        ..Default::default()
    };
    let token = policy.sign(access_key, secret_key.as_bytes());
    let first = http
        .post(format!(
            "{}/bench/{object}?offset=0&complete=false&version=1.0",
            t.base
        ))
        .header("x-nos-token", &token)
        .body(payload(1024))
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?;
    let ctx = first["context"].as_str().context("no context")?.to_owned();
    measured("query", t.pid, async {
        let mut lat = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            let r = http
                .get(format!(
                    "{}/bench/{object}?uploadContext&context={ctx}&version=1.0",
                    t.base
                ))
                .header("x-nos-token", &token)
                .send()
                .await?;
            if r.status() != 200 {
                bail!("query: {}", r.status());
            }
            r.bytes().await?;
            lat.push(started.elapsed());
        }
        Ok((0, lat, 0))
    })
    .await
}

pub(crate) fn rand_suffix() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", n % (1 << 48))
}
