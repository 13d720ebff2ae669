//! Model-based test: random sequences of protocol operations — chunks at
//! right and wrong offsets, exact and altered replays, `Content-MD5` claims
//! good, bad and malformed, completions, queries, downloads, a context used
//! on another object, a token for another object, chunks over the limit,
//! expiry of every session, restarts — run against a real node over HTTP
//! and against a small in-memory model of PROTOCOL.md (with the decisions
//! of docs/PROTOCOL-DECISIONS.md). Every answer (status, offset, context,
//! the offset an `errMsg` names) must be the model's, and after every
//! operation every stored byte too: each object downloaded (and its ETag),
//! each open session's staged bytes read back.
//!
//! Cases: `PROPTEST_CASES` (default 24, about 16 s on 2 cores);
//! `scripts/crash-loop.sh` runs many more (`MODEL_CASES`). A failure is
//! shrunk to a short sequence and printed.

use std::sync::Arc;

use md5::{Digest, Md5};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use upline_core::ObjectRecord;
use upline_proto::PutPolicy;
use upline_server::testing::{ACCESS_KEY, SECRET_KEY, TestServer};
use upline_torture::pattern;

const BUCKET: &str = "model";
const OBJECTS: usize = 3;
/// The node's chunk limit in this test (small, so that some chunks pass it).
const MAX_CHUNK: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy)]
enum Claim {
    None,
    /// The chunk's own MD5 (hex).
    Chunk,
    /// The chunk's own MD5 (base64).
    ChunkB64,
    /// The MD5 of the whole planned upload (hex).
    Whole,
    /// Some other 16 bytes.
    Other([u8; 16]),
}

#[derive(Debug, Clone)]
enum Op {
    /// A first chunk (no context) of a new upload of object `obj`, whose
    /// planned size is `total`.
    Begin {
        obj: usize,
        total: u64,
        len: u64,
        complete: bool,
        claim: Claim,
    },
    /// A chunk at the committed offset of a known session.
    Next {
        s: Index,
        len: u64,
        complete: bool,
        claim: Claim,
    },
    /// A chunk at the committed offset plus `delta`.
    Wrong {
        s: Index,
        delta: i64,
        len: u64,
    },
    /// The last acknowledged chunk again, the same bytes, or other bytes.
    Replay {
        s: Index,
        altered: bool,
    },
    /// A chunk with this session's context on another object's path.
    Cross {
        s: Index,
        obj: usize,
    },
    /// A chunk whose token is for another object.
    BadToken {
        s: Index,
    },
    /// A `Content-MD5` that is no MD5.
    BadMd5 {
        s: Index,
    },
    Query {
        s: Index,
    },
    Download {
        obj: usize,
    },
    /// Every session idle past its lifetime and collected.
    Expire,
    /// A graceful restart on the same data.
    Restart,
}

fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0..=16u64,
        6 => 1..=40_000u64,
        1 => Just(MAX_CHUNK),
        1 => MAX_CHUNK + 1..=MAX_CHUNK + 5000,
    ]
}

fn claim() -> impl Strategy<Value = Claim> {
    prop_oneof![
        4 => Just(Claim::None),
        1 => Just(Claim::Chunk),
        1 => Just(Claim::ChunkB64),
        2 => Just(Claim::Whole),
        1 => any::<[u8; 16]>().prop_map(Claim::Other),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..OBJECTS, 0..=150_000u64, len(), prop::bool::weighted(0.2), claim())
            .prop_map(|(obj, total, len, complete, claim)| Op::Begin { obj, total, len, complete, claim }),
        8 => (any::<Index>(), len(), prop::bool::weighted(0.2), claim())
            .prop_map(|(s, len, complete, claim)| Op::Next { s, len, complete, claim }),
        1 => (any::<Index>(), prop_oneof![-70_000..=-1i64, 1..=70_000i64], len())
            .prop_map(|(s, delta, len)| Op::Wrong { s, delta, len }),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(s, altered)| Op::Replay { s, altered }),
        1 => (any::<Index>(), 0..OBJECTS).prop_map(|(s, obj)| Op::Cross { s, obj }),
        1 => any::<Index>().prop_map(|s| Op::BadToken { s }),
        1 => any::<Index>().prop_map(|s| Op::BadMd5 { s }),
        2 => any::<Index>().prop_map(|s| Op::Query { s }),
        1 => (0..OBJECTS).prop_map(|obj| Op::Download { obj }),
        1 => Just(Op::Expire),
        1 => Just(Op::Restart),
    ]
}

/// One upload session as the protocol says it must be.
#[derive(Debug, Clone)]
struct Session {
    ctx: String,
    obj: usize,
    seed: u64,
    total: u64,
    /// Committed offset; the stored bytes are `pattern(seed, 0..offset)`.
    offset: u64,
    /// The last acknowledged chunk: offset, length, `complete`.
    last: Option<(u64, u64, bool)>,
    claim: Option<[u8; 16]>,
    completed: bool,
    /// Forgotten (expired and collected).
    gone: bool,
}

/// An object: the bytes of which session, how many.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Object {
    seed: u64,
    size: u64,
    ctx_index: usize,
}

#[derive(Default)]
struct Model {
    sessions: Vec<Session>,
    objects: [Option<Object>; OBJECTS],
}

/// What the model expects of a chunk request.
#[derive(Debug, PartialEq)]
enum Expect {
    Ok {
        offset: u64,
    },
    /// 400 whose errMsg names this offset (an offset mismatch or a
    /// complete session), or any 400.
    Refused {
        names: Option<u64>,
    },
    Forbidden,
    Unknown,
}

/// A chunk request.
struct Chunk {
    obj: usize,
    token_obj: usize,
    ctx: Option<String>,
    offset: u64,
    data: Vec<u8>,
    complete: bool,
    md5: Option<String>,
}

fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

fn name(obj: usize) -> String {
    format!("m{obj}")
}

fn token(obj: usize) -> String {
    PutPolicy {
        bucket: BUCKET.into(),
        object: name(obj),
        expires: Some(upline_server::unix_now() + 3600),
        ..Default::default()
    }
    .sign(ACCESS_KEY, SECRET_KEY.as_bytes())
}

fn header(claim: Claim, data: &[u8], whole: [u8; 16]) -> Option<String> {
    use base64::Engine;
    match claim {
        Claim::None => None,
        Claim::Chunk => Some(hex::encode(md5(data))),
        Claim::ChunkB64 => Some(base64::engine::general_purpose::STANDARD.encode(md5(data))),
        Claim::Whole => Some(hex::encode(whole)),
        Claim::Other(b) => Some(hex::encode(b)),
    }
}

impl Model {
    /// The rules of a chunk request, in upline's order; applies what a 200
    /// changes. `session` is the index of the session the context names.
    fn chunk(&mut self, req: &Chunk, session: Option<usize>, new_seed: u64, new_total: u64) -> Expect {
        if req.token_obj != req.obj {
            return Expect::Forbidden;
        }
        if req.data.len() as u64 > MAX_CHUNK {
            return Expect::Refused { names: None };
        }
        let claim = match &req.md5 {
            None => None,
            Some(h) => match upline_proto::ContentMd5::parse(h) {
                Some(c) => Some(c.0),
                None => return Expect::Refused { names: None },
            },
        };
        let len = req.data.len() as u64;
        let Some(i) = session else {
            // A new session.
            if req.offset != 0 {
                return Expect::Refused { names: None };
            }
            let (new_claim, ok) = md5_rule(claim, &req.data, req.complete, None, || md5(&req.data));
            if !ok {
                return Expect::Refused { names: None };
            }
            self.sessions.push(Session {
                ctx: String::new(),
                obj: req.obj,
                seed: new_seed,
                total: new_total,
                offset: len,
                last: Some((0, len, req.complete)),
                claim: new_claim,
                completed: req.complete,
                gone: false,
            });
            let idx = self.sessions.len() - 1;
            if req.complete {
                self.publish(idx);
            }
            return Expect::Ok { offset: len };
        };
        let s = self.sessions[i].clone();
        if s.gone {
            return Expect::Unknown;
        }
        if s.obj != req.obj {
            return Expect::Refused { names: None };
        }
        if !s.completed && req.offset == s.offset {
            let end = s.offset + len;
            let whole = || {
                let mut h = Md5::new();
                h.update(pattern::bytes(s.seed, 0, s.offset as usize));
                h.update(&req.data);
                <[u8; 16]>::from(h.finalize())
            };
            let (new_claim, ok) = md5_rule(claim, &req.data, req.complete, s.claim, whole);
            if !ok {
                return Expect::Refused { names: None };
            }
            let m = &mut self.sessions[i];
            m.offset = end;
            m.last = Some((req.offset, len, req.complete));
            if new_claim.is_some() {
                m.claim = new_claim;
            }
            if req.complete {
                m.completed = true;
                self.publish(i);
            }
            return Expect::Ok { offset: end };
        }
        let refusal = Expect::Refused {
            names: Some(s.offset),
        };
        // The exact replay of the last acknowledged chunk (its bytes are
        // read back from storage: gone with an object replaced since).
        let Some((_, last_len, _)) = s.last else {
            return refusal;
        };
        let replayable = req.offset.checked_add(last_len) == Some(s.offset)
            && len == last_len
            && req.complete == s.completed
            && req.data == pattern::bytes(s.seed, req.offset, len as usize);
        let bytes_kept = !s.completed || self.objects[s.obj].is_some_and(|o| o.ctx_index == i);
        if replayable && bytes_kept {
            Expect::Ok { offset: s.offset }
        } else {
            refusal
        }
    }

    fn publish(&mut self, i: usize) {
        let s = &self.sessions[i];
        self.objects[s.obj] = Some(Object {
            seed: s.seed,
            size: s.offset,
            ctx_index: i,
        });
    }

    fn query(&self, i: usize, obj: usize) -> Expect {
        let s = &self.sessions[i];
        if s.gone {
            Expect::Unknown
        } else if s.obj != obj {
            Expect::Refused { names: None }
        } else {
            Expect::Ok { offset: s.offset }
        }
    }
}

/// `Content-MD5`: equal to the chunk's MD5 it verifies the chunk; any
/// other value claims the whole object (the latest claim wins), checked
/// when the session completes. Returns the new claim and whether the
/// chunk is accepted.
fn md5_rule(
    claim: Option<[u8; 16]>,
    data: &[u8],
    complete: bool,
    prior: Option<[u8; 16]>,
    whole: impl FnOnce() -> [u8; 16],
) -> (Option<[u8; 16]>, bool) {
    let new_claim = claim.filter(|c| *c != md5(data));
    if complete && let Some(want) = new_claim.or(prior) {
        return (new_claim, want == whole());
    }
    (new_claim, true)
}

struct Harness {
    server: Option<TestServer>,
    tmp: Arc<tempfile::TempDir>,
    http: reqwest::Client,
    model: Model,
    step: usize,
}

fn tweak(c: &mut upline_server::ServerConfig) {
    c.max_chunk = MAX_CHUNK;
    c.query_rate_per_ip = 0;
    c.query_rate_per_token = 0;
}

impl Harness {
    fn base(&self) -> String {
        self.server.as_ref().expect("a running node").base.clone()
    }

    async fn send(&self, c: &Chunk) -> (u16, serde_json::Value) {
        let mut url = format!(
            "{}/{BUCKET}/{}?offset={}&complete={}&version=1.0",
            self.base(),
            name(c.obj),
            c.offset,
            c.complete
        );
        if let Some(ctx) = &c.ctx {
            url.push_str("&context=");
            url.push_str(ctx);
        }
        let mut req = self
            .http
            .post(url)
            .header("x-nos-token", token(c.token_obj))
            .body(c.data.clone());
        if let Some(m) = &c.md5 {
            req = req.header("content-md5", m);
        }
        let r = req.send().await.expect("the node answers");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    fn fail(&self, op: &Op, what: String) -> TestCaseError {
        TestCaseError::fail(format!("step {} ({op:?}): {what}", self.step))
    }

    /// Compares a chunk's answer with the model's expectation; a new
    /// session's context is recorded in the model.
    fn check(
        &mut self,
        op: &Op,
        want: Expect,
        got: (u16, serde_json::Value),
        session: Option<usize>,
    ) -> Result<(), TestCaseError> {
        let (status, body) = got;
        let err = body["errMsg"].as_str().unwrap_or("");
        let ok = match &want {
            Expect::Ok { offset } => {
                let ctx = body["context"].as_str().unwrap_or("");
                if status == 200 && body["offset"].as_u64() == Some(*offset) {
                    match session {
                        Some(i) => ctx == self.model.sessions[i].ctx,
                        None => {
                            let last = self.model.sessions.last_mut().expect("a new session");
                            last.ctx = ctx.to_owned();
                            !ctx.is_empty()
                        }
                    }
                } else {
                    false
                }
            }
            Expect::Refused { names } => {
                status == 400
                    && names.is_none_or(|n| {
                        err.contains(&format!("offset is {n}")) || err.contains(&format!("at offset {n}"))
                    })
            }
            Expect::Forbidden => status == 403,
            Expect::Unknown => status == 404,
        };
        let json_ok = status == 200 || (body["requestId"].is_string() && body["errMsg"].is_string());
        if ok && json_ok {
            Ok(())
        } else {
            Err(self.fail(op, format!("expected {want:?}, got {status} {body}")))
        }
    }

    /// Every object downloaded and compared (and its ETag), every open
    /// session's staged bytes read back.
    async fn check_bytes(&self, op: &Op) -> Result<(), TestCaseError> {
        for obj in 0..OBJECTS {
            self.download(op, obj).await?;
        }
        let node = self.server.as_ref().expect("a running node").node.clone();
        for s in self
            .model
            .sessions
            .iter()
            .filter(|s| !s.gone && !s.completed && s.offset > 0)
        {
            let rec = ObjectRecord {
                bucket: BUCKET.into(),
                object: name(s.obj),
                blob: s.ctx.clone(),
                size: s.offset,
                content_type: String::new(),
                created_at: 0,
                md5: None,
            };
            let mut stream = node
                .read_object(&rec, 0, s.offset)
                .await
                .map_err(|e| self.fail(op, format!("staged bytes of {} unreadable: {e}", s.ctx)))?;
            let mut at = 0u64;
            use futures_util::StreamExt;
            while let Some(frame) = stream.next().await {
                let frame = frame.map_err(|e| self.fail(op, format!("staged read: {e}")))?;
                if let Some(bad) = pattern::first_difference(s.seed, at, &frame) {
                    return Err(self.fail(op, format!("staged byte {bad} of {} differs", s.ctx)));
                }
                at += frame.len() as u64;
            }
            if at != s.offset {
                return Err(self.fail(
                    op,
                    format!("{} staged bytes of {}, {} committed", at, s.ctx, s.offset),
                ));
            }
        }
        Ok(())
    }

    async fn download(&self, op: &Op, obj: usize) -> Result<(), TestCaseError> {
        let r = self
            .http
            .get(format!("{}/{BUCKET}/{}", self.base(), name(obj)))
            .header("x-nos-token", token(obj))
            .send()
            .await
            .expect("the node answers");
        let status = r.status().as_u16();
        match self.model.objects[obj] {
            None if status == 404 => Ok(()),
            None => Err(self.fail(op, format!("object {obj}: {status}, expected 404"))),
            Some(o) => {
                let etag = r
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_owned();
                let body = r.bytes().await.expect("object body");
                let want = pattern::bytes(o.seed, 0, o.size as usize);
                if status != 200 || body[..] != want[..] {
                    return Err(self.fail(
                        op,
                        format!(
                            "object {obj}: {status}, {} bytes, expected {} bytes of seed {}",
                            body.len(),
                            o.size,
                            o.seed
                        ),
                    ));
                }
                if etag != hex::encode(md5(&want)) {
                    return Err(self.fail(op, format!("object {obj}: ETag {etag}")));
                }
                Ok(())
            }
        }
    }

    /// Runs one operation on both sides and compares.
    async fn apply(&mut self, op: &Op, seed: u64) -> Result<(), TestCaseError> {
        let pick = |s: &Index, m: &Model| (!m.sessions.is_empty()).then(|| s.index(m.sessions.len()));
        match op {
            Op::Begin {
                obj,
                total,
                len,
                complete,
                claim,
            } => {
                let len = if *len > MAX_CHUNK {
                    *len
                } else {
                    (*len).min(*total)
                };
                let data = pattern::bytes(seed, 0, len as usize);
                let whole = md5(&pattern::bytes(seed, 0, *total as usize));
                let complete = *complete || len == *total;
                let c = Chunk {
                    obj: *obj,
                    token_obj: *obj,
                    ctx: None,
                    offset: 0,
                    md5: header(*claim, &data, whole),
                    data,
                    complete,
                };
                let want = self.model.chunk(&c, None, seed, *total);
                let got = self.send(&c).await;
                self.check(op, want, got, None)?;
            }
            Op::Next {
                s,
                len,
                complete,
                claim,
            } => {
                let Some(i) = pick(s, &self.model) else {
                    return Ok(());
                };
                let m = self.model.sessions[i].clone();
                let left = m.total.saturating_sub(m.offset);
                let len = if *len > MAX_CHUNK { *len } else { (*len).min(left) };
                let data = pattern::bytes(m.seed, m.offset, len as usize);
                let whole = md5(&pattern::bytes(m.seed, 0, m.total as usize));
                let c = Chunk {
                    obj: m.obj,
                    token_obj: m.obj,
                    ctx: Some(m.ctx.clone()),
                    offset: m.offset,
                    md5: header(*claim, &data, whole),
                    complete: *complete || m.offset + len == m.total,
                    data,
                };
                let want = self.model.chunk(&c, Some(i), 0, 0);
                let got = self.send(&c).await;
                self.check(op, want, got, Some(i))?;
            }
            Op::Wrong { s, delta, len } => {
                let Some(i) = pick(s, &self.model) else {
                    return Ok(());
                };
                let m = self.model.sessions[i].clone();
                let offset = m
                    .offset
                    .checked_add_signed(*delta)
                    .unwrap_or(m.offset + delta.unsigned_abs());
                let c = Chunk {
                    obj: m.obj,
                    token_obj: m.obj,
                    ctx: Some(m.ctx.clone()),
                    offset,
                    data: pattern::bytes(m.seed, offset, (*len).min(MAX_CHUNK) as usize),
                    complete: false,
                    md5: None,
                };
                let want = self.model.chunk(&c, Some(i), 0, 0);
                let got = self.send(&c).await;
                self.check(op, want, got, Some(i))?;
            }
            Op::Replay { s, altered } => {
                let Some(i) = pick(s, &self.model) else {
                    return Ok(());
                };
                let m = self.model.sessions[i].clone();
                let Some((offset, len, complete)) = m.last else {
                    return Ok(());
                };
                let seed = if *altered { m.seed ^ 0x5555 } else { m.seed };
                let c = Chunk {
                    obj: m.obj,
                    token_obj: m.obj,
                    ctx: Some(m.ctx.clone()),
                    offset,
                    data: pattern::bytes(seed, offset, len as usize),
                    complete,
                    md5: None,
                };
                let want = self.model.chunk(&c, Some(i), 0, 0);
                let got = self.send(&c).await;
                self.check(op, want, got, Some(i))?;
            }
            Op::Cross { s, obj } => {
                let Some(i) = pick(s, &self.model) else {
                    return Ok(());
                };
                let m = self.model.sessions[i].clone();
                if m.obj == *obj {
                    return Ok(());
                }
                let c = Chunk {
                    obj: *obj,
                    token_obj: *obj,
                    ctx: Some(m.ctx.clone()),
                    offset: m.offset,
                    data: pattern::bytes(m.seed, m.offset, 10),
                    complete: false,
                    md5: None,
                };
                let want = self.model.chunk(&c, Some(i), 0, 0);
                let got = self.send(&c).await;
                self.check(op, want, got, Some(i))?;
                let (status, body) = self.query_raw(&m.ctx, *obj).await;
                let want = self.model.query(i, *obj);
                self.check_query(op, want, status, body)?;
            }
            Op::BadToken { s } | Op::BadMd5 { s } => {
                let Some(i) = pick(s, &self.model) else {
                    return Ok(());
                };
                let m = self.model.sessions[i].clone();
                let bad_token = matches!(op, Op::BadToken { .. });
                let c = Chunk {
                    obj: m.obj,
                    token_obj: if bad_token { (m.obj + 1) % OBJECTS } else { m.obj },
                    ctx: Some(m.ctx.clone()),
                    offset: m.offset,
                    data: pattern::bytes(
                        m.seed,
                        m.offset,
                        10.min(m.total.saturating_sub(m.offset)) as usize,
                    ),
                    complete: false,
                    md5: (!bad_token).then(|| "not-an-md5".to_owned()),
                };
                let want = self.model.chunk(&c, Some(i), 0, 0);
                let got = self.send(&c).await;
                self.check(op, want, got, Some(i))?;
            }
            Op::Query { s } => {
                let Some(i) = pick(s, &self.model) else {
                    return Ok(());
                };
                let m = self.model.sessions[i].clone();
                let (status, body) = self.query_raw(&m.ctx, m.obj).await;
                let want = self.model.query(i, m.obj);
                self.check_query(op, want, status, body)?;
            }
            Op::Download { obj } => self.download(op, *obj).await?,
            Op::Expire => {
                let node = self.server.as_ref().expect("a running node").node.clone();
                let far = upline_server::unix_now() + 8 * 24 * 3600;
                node.collect(far)
                    .await
                    .map_err(|e| self.fail(op, format!("collection failed: {e}")))?;
                for s in &mut self.model.sessions {
                    s.gone = true;
                }
            }
            Op::Restart => {
                if let Some(server) = self.server.take() {
                    server.stop().await;
                }
                self.server = Some(TestServer::start_in(self.tmp.clone(), tweak).await);
            }
        }
        self.check_bytes(op).await
    }

    async fn query_raw(&self, ctx: &str, obj: usize) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!(
                "{}/{BUCKET}/{}?uploadContext&context={ctx}&version=1.0",
                self.base(),
                name(obj)
            ))
            .header("x-nos-token", token(obj))
            .send()
            .await
            .expect("the node answers");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    fn check_query(
        &self,
        op: &Op,
        want: Expect,
        status: u16,
        body: serde_json::Value,
    ) -> Result<(), TestCaseError> {
        let ok = match want {
            Expect::Ok { offset } => status == 200 && body["offset"].as_u64() == Some(offset),
            Expect::Refused { .. } => status == 400,
            Expect::Unknown => status == 404,
            Expect::Forbidden => status == 403,
        };
        if ok {
            Ok(())
        } else {
            Err(self.fail(op, format!("query: expected {want:?}, got {status} {body}")))
        }
    }
}

async fn run_case(ops: Vec<(Op, u64)>) -> Result<(), TestCaseError> {
    let tmp = Arc::new(tempfile::tempdir().expect("temp dir"));
    let server = TestServer::start_in(tmp.clone(), tweak).await;
    let mut h = Harness {
        server: Some(server),
        tmp,
        http: reqwest::Client::new(),
        model: Model::default(),
        step: 0,
    };
    let mut result = Ok(());
    for (i, (op, seed)) in ops.iter().enumerate() {
        h.step = i;
        result = h.apply(op, *seed).await;
        if result.is_err() {
            break;
        }
    }
    if let Some(s) = h.server.take() {
        s.stop().await;
    }
    result
}

#[test]
fn upline_behaves_like_the_model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(24);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(PtConfig {
        cases,
        max_shrink_iters: 400,
        // The shrunk sequence is printed; no regressions file.
        failure_persistence: None,
        ..PtConfig::default()
    });
    let ops = prop::collection::vec((op(), any::<u64>()), 1..48);
    let counted = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&ops, |ops| {
        counted.fetch_add(ops.len(), std::sync::atomic::Ordering::Relaxed);
        rt.block_on(run_case(ops))
    });
    eprintln!(
        "model test: {cases} cases, {} operations run (shrinking included)",
        counted.load(std::sync::atomic::Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
