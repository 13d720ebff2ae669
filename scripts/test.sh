#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test.
# Everything the tests need is started by the tests themselves (a node on
# port 0, temp data directories, a callback server, the binary itself).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
