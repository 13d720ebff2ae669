//! The HTTP face of an upline node.
//!
//! Requests are parsed into typed [`routes::Endpoint`]s, handled by calling
//! `upline-core`, and rendered in [`render`] — the one place errors get
//! their status codes and JSON bodies. [`App`] owns the accept loop.

pub mod accept;
pub mod app;
pub mod appapi;
pub mod backends;
pub mod callback;
pub mod config;
pub mod datadir;
pub mod demo;
pub mod download;
pub mod handlers;
pub mod limits;
pub mod metrics;
pub mod render;
pub mod routes;
pub mod secrets;
pub mod testing;
pub mod throttle;
pub mod tls;

pub use app::{App, BLOCKING_THREADS, StartError, unix_now};
pub use config::{Credential, Role, Secret, ServerConfig};
