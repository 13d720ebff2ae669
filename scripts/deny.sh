#!/usr/bin/env bash
# The dependency-tree check of the test suite (deny.toml): licenses,
# bans and sources always; advisories (RustSec) when the advisory
# database can be had. It lives on GitHub, which some machines (this
# project's CI among them) cannot reach: then the advisories are skipped
# with a message saying so, rather than failing or passing silently.
# cargo-deny itself is installed by ensure_cargo_deny (scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo deny --locked check --hide-inclusion-graph licenses bans sources

if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
  cargo deny --locked check --hide-inclusion-graph advisories
elif compgen -G "$HOME/.cargo/advisory-dbs/*/crates" >/dev/null; then
  echo "deny: advisory database unreachable; checking against the copy fetched earlier" >&2
  cargo deny --locked --offline check --hide-inclusion-graph advisories
else
  echo "deny: SKIPPED advisories: the RustSec advisory database (github.com/RustSec/advisory-db) cannot be fetched from this machine" >&2
fi
