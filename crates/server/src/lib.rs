//! The HTTP face of an upline node.
//!
//! Requests are parsed into typed [`routes::Endpoint`]s, handled by calling
//! `upline-core`, and rendered in [`render`] — the one place errors get
//! their status codes and JSON bodies. [`App`] owns the accept loop.

pub mod app;
pub mod appapi;
pub mod backends;
pub mod callback;
pub mod config;
pub mod demo;
pub mod download;
pub mod handlers;
pub mod metrics;
pub mod render;
pub mod routes;
pub mod secrets;
pub mod testing;

pub use app::{App, BLOCKING_THREADS, StartError, unix_now};
pub use config::{Credential, Role, Secret, ServerConfig};
