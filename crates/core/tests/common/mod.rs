//! What the core tests share: a callback sender that sends nothing, and a
//! chunk request of the `doc/o` upload.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use upline_core::{CallbackSender, ChunkRequest};
use upline_proto::callback::CallbackBody;
use upline_proto::{ObjectPath, PutPolicy, UploadParams};

/// Callbacks are not what these tests look at: every one fails.
pub struct NoCallbacks;

#[async_trait::async_trait]
impl CallbackSender for NoCallbacks {
    async fn post(&self, _: &str, _: &CallbackBody, _: Duration) -> Result<Bytes, String> {
        Err("no callbacks in this test".into())
    }
}

/// A chunk of `/doc/o` at `offset` (not the last), signed for key `ak`
/// with secret `sk`; `ctx` for every chunk but the first.
pub fn req(offset: u64, ctx: Option<&str>) -> ChunkRequest {
    let token = PutPolicy {
        bucket: "doc".into(),
        object: "o".into(),
        expires: Some(10_000),
        ..Default::default()
    }
    .sign("ak", b"sk");
    ChunkRequest {
        path: ObjectPath::parse("/doc/o").unwrap(),
        params: UploadParams {
            offset,
            complete: false,
            context: ctx.map(str::to_owned),
        },
        token: Some(token),
        content_length: None,
        content_type: None,
        content_md5: None,
        now: 1_000,
    }
}
