//! Wire types of the upline upload protocol (see `docs/PROTOCOL-DECISIONS.md`).
//!
//! Everything a server, a client or a fuzzer needs to agree on the bytes of
//! the protocol lives here, and nothing else: no async runtime, no HTTP
//! framework, no storage. Parsers follow "parse, don't validate": each one
//! turns raw text into a type that can only hold a valid value.

pub mod body;
pub mod callback;
pub mod md5;
pub mod names;
pub mod path;
pub mod query;
pub mod signed_url;
pub mod token;

pub use body::{BUSY_MESSAGE, ErrorBody, LbsError, LbsOk, QueryOk, SUPERSEDED_MESSAGE, UploadOk};
pub use md5::ContentMd5;
pub use names::{Bucket, NameError, ObjectKey, UploadCtx};
pub use path::{ObjectPath, PathError};
pub use query::{LbsParams, QueryError, ResumeParams, UploadParams};
pub use token::{PutPolicy, Token, TokenError};

/// The protocol's largest chunk body: 4 MiB.
pub const MAX_CHUNK: u64 = 4 * 1024 * 1024;

/// The only API version the protocol knows.
pub const VERSION: &str = "1.0";

/// Header carrying the upload token.
pub const TOKEN_HEADER: &str = "x-nos-token";
