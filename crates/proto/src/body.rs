//! JSON bodies of the protocol's responses.
//!
//! Both `requestId` and `requestID` are sent: the source documents the
//! first, the original service's mobile clients read the second.

use serde::{Deserialize, Serialize};

/// 200 answer to a chunk upload. `offset` and `context` are always present,
/// also on the final chunk: one mobile client retries when either is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadOk {
    #[serde(rename = "requestId")]
    pub request_id: String,
    #[serde(rename = "requestID")]
    pub request_id_caps: String,
    pub offset: u64,
    pub context: String,
    /// base64 of the completion callback's answer, or empty.
    #[serde(rename = "callbackRetMsg")]
    pub callback_ret_msg: String,
}

/// 200 answer to a resume-point query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryOk {
    #[serde(rename = "requestId")]
    pub request_id: String,
    #[serde(rename = "requestID")]
    pub request_id_caps: String,
    pub offset: u64,
}

/// `errMsg` of the 400 a node answers to a chunk while another node
/// holds the session's lease: the same chunk may be sent again later.
pub const BUSY_MESSAGE: &str = "another node is writing this session; retry";

/// `errMsg` of the 400 a chunk gets when a newer request for its session
/// (a retry of the same chunk) takes over: the newer one goes on.
pub const SUPERSEDED_MESSAGE: &str = "superseded by a newer request for the same session";

/// Every non-200 answer of the upload and query endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "requestId")]
    pub request_id: String,
    #[serde(rename = "requestID")]
    pub request_id_caps: String,
    #[serde(rename = "errMsg")]
    pub err_msg: String,
}

/// 200 answer of `GET /lbs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbsOk {
    pub lbs: String,
    pub upload: Vec<String>,
}

/// Error answer of `GET /lbs` (the source's own field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LbsError {
    pub code: String,
    pub message: String,
}

impl UploadOk {
    pub fn new(request_id: &str, offset: u64, context: &str, callback_ret_msg: String) -> Self {
        Self {
            request_id: request_id.to_owned(),
            request_id_caps: request_id.to_owned(),
            offset,
            context: context.to_owned(),
            callback_ret_msg,
        }
    }
}

impl QueryOk {
    pub fn new(request_id: &str, offset: u64) -> Self {
        Self {
            request_id: request_id.to_owned(),
            request_id_caps: request_id.to_owned(),
            offset,
        }
    }
}

impl ErrorBody {
    pub fn new(request_id: &str, err_msg: impl Into<String>) -> Self {
        Self {
            request_id: request_id.to_owned(),
            request_id_caps: request_id.to_owned(),
            err_msg: err_msg.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_wire_names() {
        let v = serde_json::to_value(UploadOk::new("r", 5, "c", String::new())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"requestId":"r","requestID":"r","offset":5,"context":"c","callbackRetMsg":""})
        );
        let v = serde_json::to_value(ErrorBody::new("r", "bad")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"requestId":"r","requestID":"r","errMsg":"bad"})
        );
        let v = serde_json::to_value(LbsError {
            code: "BadRequest".into(),
            message: "m".into(),
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"Code":"BadRequest","Message":"m"}));
    }
}
