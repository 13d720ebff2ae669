#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test.
# Services the tests talk to (PostgreSQL, Garage, Chromium for the browser
# tests) are installed and started by scripts/services.sh, idempotently;
# everything else the tests start themselves (nodes on port 0, temp data
# directories, callback servers).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_postgres
ensure_garage

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The dependency tree: licenses, sources, duplicates, advisories (deny.toml).
ensure_cargo_deny
bash scripts/deny.sh
cargo test --workspace --locked

# The browser uploader (web/): its npm packages from the committed lock file,
# then Debian's headless Chromium against the upline binary built above.
ensure_chromium
npm ci --prefix web --no-audit --no-fund
cargo build --locked -p upline
# README's first command as a user types it, asking only for help (debug
# build, not --release): cargo must be able to tell which binary it runs.
readme_serve=$(grep -m1 '^cargo run' README.md | sed -e 's/#.*//' -e 's/ --release//')
$readme_serve --help >/dev/null
node --test --test-concurrency=1 web/tests/
