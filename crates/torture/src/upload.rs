//! One upload as a client sees it — what was acknowledged, what is in
//! flight without an answer — and the requests of the protocol that move
//! it forward, over plain HTTP.

use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use rand::Rng;
use upline_proto::PutPolicy;

use crate::node::{ACCESS_KEY, BUCKET, SECRET_KEY};
use crate::pattern;

/// How an upload uses `Content-MD5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Md5Mode {
    None,
    /// The whole file's MD5 (hex) on every chunk, as one mobile client does.
    WholeOnEvery,
    /// Each chunk's own MD5 (base64).
    EachChunk,
    /// The whole file's MD5 (hex) on the final chunk only.
    WholeOnLast,
}

/// A chunk request: where, how long, and whether it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    pub complete: bool,
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// One upload and everything the checker may hold the node to.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: usize,
    pub object: String,
    /// The bytes are `pattern(seed, 0..size)`.
    pub seed: u64,
    pub size: u64,
    pub md5_mode: Md5Mode,
    whole_md5: Option<[u8; 16]>,
    pub token: String,
    pub ctx: Option<String>,
    /// The highest offset the node acknowledged (a 200, or the query).
    pub acked: u64,
    /// A chunk sent at `acked` with no definite answer yet (cut off by a
    /// kill, a timeout, a 5xx): the node may or may not have committed it.
    /// It is re-sent exactly as it was, so a committed one is a replay.
    pub pending: Option<Chunk>,
    /// The last acknowledged chunk.
    pub last: Option<Chunk>,
    /// The node acknowledged the final chunk (a 200, or a query after a
    /// restart showing it committed; then `confirmed` is false until the
    /// final chunk's replay got its 200).
    pub done: bool,
    pub confirmed: bool,
    /// The published object was downloaded and compared.
    pub verified: bool,
}

/// The answer to one request: status 0 when there was none (connection
/// refused or cut, timeout).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Answer {
    fn none() -> Self {
        Self {
            status: 0,
            body: serde_json::Value::Null,
        }
    }

    pub fn offset(&self) -> Option<u64> {
        self.body["offset"].as_u64()
    }

    pub fn context(&self) -> Option<&str> {
        self.body["context"].as_str()
    }

    pub fn err_msg(&self) -> &str {
        self.body["errMsg"].as_str().unwrap_or("")
    }
}

/// The object names `torture/o<id>`; tokens last a day.
pub fn object_name(id: usize) -> String {
    format!("o{id:06}")
}

pub fn token(object: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    PutPolicy {
        bucket: BUCKET.into(),
        object: object.into(),
        expires: Some(now + 24 * 3600),
        ..Default::default()
    }
    .sign(ACCESS_KEY, SECRET_KEY.as_bytes())
}

impl Upload {
    pub fn new(id: usize, object: String, seed: u64, size: u64, md5_mode: Md5Mode) -> Self {
        let token = token(&object);
        Self {
            id,
            object,
            seed,
            size,
            md5_mode,
            whole_md5: None,
            token,
            ctx: None,
            acked: 0,
            pending: None,
            last: None,
            done: false,
            confirmed: false,
            verified: false,
        }
    }

    fn whole_md5(&mut self) -> [u8; 16] {
        *self
            .whole_md5
            .get_or_insert_with(|| pattern::md5(self.seed, self.size))
    }

    /// The chunk to send now: the pending one again, or a new one at the
    /// acknowledged offset of a random length up to `max_chunk`.
    pub fn next_chunk(&mut self, rng: &mut impl Rng, max_chunk: u64) -> Chunk {
        if let Some(p) = self.pending {
            return p;
        }
        let left = self.size - self.acked;
        let len = match rng.random_range(0..10) {
            0..=4 => rng.random_range(1..=max_chunk),
            5..=7 => rng.random_range(1..=(256 << 10).min(max_chunk)),
            _ => max_chunk,
        }
        .min(left);
        let c = Chunk {
            offset: self.acked,
            len,
            complete: self.acked + len == self.size,
        };
        self.pending = Some(c);
        c
    }

    /// The `Content-MD5` this upload sends with chunk `c` and its bytes.
    fn content_md5(&mut self, c: Chunk, body: &[u8]) -> Option<String> {
        match self.md5_mode {
            Md5Mode::None => None,
            Md5Mode::WholeOnEvery => Some(hex::encode(self.whole_md5())),
            Md5Mode::WholeOnLast if c.complete => Some(hex::encode(self.whole_md5())),
            Md5Mode::WholeOnLast => None,
            Md5Mode::EachChunk => {
                use md5::Digest;
                let d: [u8; 16] = md5::Md5::digest(body).into();
                Some(base64::engine::general_purpose::STANDARD.encode(d))
            }
        }
    }

    /// Sends chunk `c` (a first chunk when there is no context yet).
    pub async fn send(&mut self, http: &reqwest::Client, base: &str, c: Chunk) -> Answer {
        let body = pattern::bytes(self.seed, c.offset, c.len as usize);
        let mut url = format!(
            "{base}/{BUCKET}/{}?offset={}&complete={}&version=1.0",
            self.object, c.offset, c.complete
        );
        if let Some(ctx) = &self.ctx {
            url.push_str("&context=");
            url.push_str(ctx);
        }
        let md5 = self.content_md5(c, &body);
        let mut req = http
            .post(url)
            .header("x-nos-token", &self.token)
            .header("content-type", "video/mp4")
            .body(body);
        if let Some(m) = md5 {
            req = req.header("content-md5", m);
        }
        answer(req).await
    }

    /// Asks for the resume point.
    pub async fn query(&self, http: &reqwest::Client, base: &str) -> Answer {
        let Some(ctx) = &self.ctx else {
            return Answer::none();
        };
        let url = format!(
            "{base}/{BUCKET}/{}?uploadContext&context={ctx}&version=1.0",
            self.object
        );
        answer(http.get(url).header("x-nos-token", &self.token)).await
    }

    /// Downloads the published object and compares every byte with the
    /// pattern, and its ETag with the MD5. `Ok(bytes compared)`, or what
    /// was wrong (`Err((status, message))`; status 0: no answer).
    pub async fn verify(&mut self, http: &reqwest::Client, base: &str) -> Result<u64, (u16, String)> {
        let url = format!("{base}/{BUCKET}/{}", self.object);
        let resp = match http.get(url).header("x-nos-token", &self.token).send().await {
            Ok(r) => r,
            Err(e) => return Err((0, e.to_string())),
        };
        let status = resp.status().as_u16();
        if status != 200 {
            let text = resp.text().await.unwrap_or_default();
            return Err((status, format!("download answered {status}: {text}")));
        }
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim_matches('"')
            .to_owned();
        let mut stream = resp.bytes_stream();
        let mut at = 0u64;
        while let Some(frame) = stream.next().await {
            let frame = frame.map_err(|e| (0, format!("download cut at {at}: {e}")))?;
            if at + frame.len() as u64 > self.size {
                return Err((200, format!("object longer than {} bytes", self.size)));
            }
            if let Some(bad) = pattern::first_difference(self.seed, at, &frame) {
                return Err((200, format!("byte {bad} differs")));
            }
            at += frame.len() as u64;
        }
        if at != self.size {
            return Err((200, format!("object has {at} bytes, {} were uploaded", self.size)));
        }
        let md5 = hex::encode(self.whole_md5());
        if etag != md5 {
            return Err((200, format!("ETag {etag}, MD5 of the bytes {md5}")));
        }
        Ok(at)
    }
}

async fn answer(req: reqwest::RequestBuilder) -> Answer {
    // A rate limit says when to come back; a client does.
    for _ in 0..20 {
        let Some(again) = req.try_clone() else { break };
        let a = answer_once(again).await;
        if a.status != 429 {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    answer_once(req).await
}

async fn answer_once(req: reqwest::RequestBuilder) -> Answer {
    match req.timeout(Duration::from_secs(60)).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes().await {
                Ok(b) => Answer {
                    status,
                    body: serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
                },
                // The answer's body was cut off: no answer after all.
                Err(_) => Answer::none(),
            }
        }
        Err(_) => Answer::none(),
    }
}
