//! What can stop an upload.

use std::io;

/// Why an upload stopped. Retryable trouble (network errors, timeouts,
/// 5xx, 520) never shows up here until the retry policy gives up.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The local file could not be read.
    #[error("cannot read {path}: {source}")]
    File { path: String, source: io::Error },
    /// 403: the token is expired, for another object, or signed wrongly.
    #[error("the server refused the upload token (expired or wrong): {0}")]
    Token(String),
    /// A 4xx the client cannot fix by retrying; the server's `errMsg`.
    #[error("the server refused the upload ({status}): {message}")]
    Refused { status: u16, message: String },
    /// Retries ran out; the last failure.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    /// No upload node could be found.
    #[error("node discovery failed: {0}")]
    Discovery(String),
    /// Configuration of the uploader.
    #[error("invalid uploader configuration: {0}")]
    Config(String),
    /// The resume journal could not be written.
    #[error("cannot write the resume journal {path}: {source}")]
    Journal { path: String, source: io::Error },
}
