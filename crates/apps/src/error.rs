//! Errors of the app API, in the original service's body codes.

/// An app API failure: `{"code": code, "msg": msg}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 403: missing or wrong AppKey/CheckSum, stale CurTime, replayed Nonce.
    #[error("{0}")]
    Auth(String),
    /// 414: a missing or invalid parameter.
    #[error("{0}")]
    Param(String),
    /// 500: the stores failed; details go to the log, not the client.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// The code in the response body (the original service's codes).
    pub fn code(&self) -> u16 {
        match self {
            ApiError::Auth(_) => 403,
            ApiError::Param(_) => 414,
            ApiError::Internal(_) => 500,
        }
    }

    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<upline_state::StateError> for ApiError {
    fn from(e: upline_state::StateError) -> Self {
        ApiError::internal(e)
    }
}

impl From<upline_core::CoreError> for ApiError {
    fn from(e: upline_core::CoreError) -> Self {
        ApiError::internal(e)
    }
}
