//! The one error type of the upload rules, and its protocol status.

use upline_proto::{NameError, PathError, QueryError, TokenError};

/// One variant per rule of the protocol that can refuse a request.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    BadParam(String),
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("chunk larger than {limit} bytes")]
    ChunkTooLarge { limit: u64 },
    #[error("unknown context")]
    UnknownCtx,
    #[error("no such object")]
    NoSuchObject,
    /// The object's stored bytes were found damaged (truncated, or not
    /// matching its recorded size or MD5) and moved to quarantine: they
    /// are never served. Upload it again.
    #[error("object quarantined: {0}; upload it again")]
    Quarantined(String),
    #[error("context belongs to another bucket or object")]
    CtxMismatch,
    /// A download's `Range` starts past the object's end.
    #[error("range not satisfiable: the object has {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("offset mismatch: committed offset is {committed}")]
    OffsetMismatch { committed: u64 },
    #[error("upload already complete at offset {offset}")]
    AlreadyComplete { offset: u64 },
    #[error("Content-MD5 mismatch: {0}")]
    Md5Mismatch(&'static str),
    #[error("{0}")]
    PolicyLimit(String),
    #[error("request body incomplete: {0}")]
    BodyIncomplete(String),
    /// Clients tell this refusal from the others by its message.
    #[error("{}", upline_proto::SUPERSEDED_MESSAGE)]
    Superseded,
    /// Clients tell this refusal from the others by its message.
    #[error("{}", upline_proto::BUSY_MESSAGE)]
    Busy,
    #[error("object stored, but its callback failed: {0}")]
    CallbackFailed(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl CoreError {
    /// The protocol's status code for this error. Exhaustive on purpose: a
    /// new variant does not compile until someone picks its status.
    pub fn status(&self) -> u16 {
        match self {
            CoreError::BadParam(_)
            | CoreError::ChunkTooLarge { .. }
            | CoreError::CtxMismatch
            | CoreError::OffsetMismatch { .. }
            | CoreError::AlreadyComplete { .. }
            | CoreError::Md5Mismatch(_)
            | CoreError::PolicyLimit(_)
            | CoreError::BodyIncomplete(_)
            | CoreError::Superseded
            | CoreError::Busy => 400,
            CoreError::Token(_) => 403,
            CoreError::UnknownCtx | CoreError::NoSuchObject => 404,
            CoreError::Quarantined(_) => 410,
            CoreError::RangeNotSatisfiable { .. } => 416,
            CoreError::Internal(_) => 500,
            CoreError::CallbackFailed(_) => 520,
        }
    }

    pub(crate) fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        CoreError::Internal(e.into())
    }
}

impl From<QueryError> for CoreError {
    fn from(e: QueryError) -> Self {
        CoreError::BadParam(e.to_string())
    }
}

impl From<PathError> for CoreError {
    fn from(e: PathError) -> Self {
        CoreError::BadParam(e.to_string())
    }
}

impl From<NameError> for CoreError {
    fn from(e: NameError) -> Self {
        CoreError::BadParam(e.to_string())
    }
}

impl From<upline_state::StateError> for CoreError {
    fn from(e: upline_state::StateError) -> Self {
        use upline_state::StateError as S;
        match e {
            S::NotFound => CoreError::UnknownCtx,
            S::Conflict { committed } => CoreError::OffsetMismatch { committed },
            S::LeaseLost => CoreError::Superseded,
            S::Exists | S::Completed | S::Backend(_) => CoreError::internal(e),
        }
    }
}

impl From<upline_storage::StorageError> for CoreError {
    fn from(e: upline_storage::StorageError) -> Self {
        match e {
            upline_storage::StorageError::Limit(why) => CoreError::PolicyLimit(why),
            e => CoreError::internal(e),
        }
    }
}
