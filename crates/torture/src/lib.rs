//! Reliability harnesses for upline.
//!
//! The crash loop ([`run`]) drives the real `upline serve` binary as a
//! child process: many concurrent uploads, SIGKILL at random moments,
//! restarts on the same data, and after each restart a check of every
//! promise a 200 makes ([`check`]). Upload bytes are a function of a seed
//! and an offset ([`pattern`]), so nothing is kept in memory to compare
//! with. The `upline-torture` binary runs it from `scripts/crash-loop.sh`;
//! the command line's tests run a bounded version in CI.

pub mod check;
pub mod node;
pub mod pattern;
pub mod report;
pub mod run;
pub mod upload;

pub use node::Backend;
pub use report::Report;
pub use run::{Config, run};
