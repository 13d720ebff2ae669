#!/usr/bin/env python3
"""Side-by-side benchmark runs (not part of CI).

Runs each scenario against each contender, alternating A B A B, RUNS times,
and prints medians and min-max as a Markdown table. Contenders so far:
upline (release build, embedded default), the disk's limit (dd with a sync
every 4 MiB), the stop-and-wait limit (`upline-bench bare-server`: the least a
durable tus server does, with and without MD5, and dropping the bytes; also under the 256 concurrent
uploads, with its 1 MiB blocks and with upline's 64 KiB ones), one core's MD5 speed (openssl, and fast-md5, the node's
own), and nginx reading and
discarding 4 MiB bodies / answering /lbs with a fixed body (loopback
limit; /lbs is measured on `upline serve --role lbs` over a PostgreSQL
registry, as deployed, and on an upload node), and the peers @tus/server (npm, `bench/tus-node`) and rustus, in
its default and --force-fsync modes (`cargo install rustus --locked`).

Also upline on S3 (Garage, started by `upline-bench garage`), in both
layouts, against a plain multipart upload of the same bytes with each
layout's part size (4 MiB, the chunks, for the parts layout; 8 MiB for the
chunks layout), and upline's start-up time and idle RSS. Ends with issue
6's targets, met or missed, from the steady-state medians.

Usage: python3 bench/run.py [--runs 5] [--size 1GiB] [--no-s3] [--only s3]
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw).stdout


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "upline", "-p", "upline-bench"], cwd=ROOT, check=True)


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run_bench(port, pid, proto, *args):
    """One upline-bench scenario against 127.0.0.1:port; its report."""
    env = dict(os.environ, UPLINE_ACCESS_KEY="bench", UPLINE_SECRET_KEY="bench-secret")
    out = subprocess.run([os.path.join(BIN, "upline-bench"), "--url", f"http://127.0.0.1:{port}", "--proto", proto,
                          "--pid", str(pid), *args], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


class UplineProc:
    """An upline process on `self.port` (`self.proc`) that upline-bench drives."""

    def bench(self, *args):
        return run_bench(self.port, self.proc.pid, "upline", *args)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()


class Upline(UplineProc):
    name = "upline"

    def __init__(self, *extra, env=None):
        self.extra, self.env = list(extra), env or {}

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="upline-bench-", dir=ROOT)
        self.port = free_port()
        # The query scenario sends 2000 queries from one token: rate limits
        # off, so that it measures the query, not the limiter.
        env = dict(os.environ, UPLINE_ACCESS_KEY="bench", UPLINE_SECRET_KEY="bench-secret",
                   UPLINE_QUERY_RATE_PER_IP="0", UPLINE_QUERY_RATE_PER_TOKEN="0", **self.env)
        started = time.monotonic()
        self.proc = subprocess.Popen([os.path.join(BIN, "upline"), "serve", "--listen", f"127.0.0.1:{self.port}",
                                      "--data-dir", self.dir, *self.extra], env=env, stderr=subprocess.DEVNULL)
        # Start to first answered request: poll /healthz every millisecond.
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() - started > 30:
                    raise RuntimeError("upline did not start")
                time.sleep(0.001)
        self.startup_ms = (time.monotonic() - started) * 1000
        time.sleep(0.5)
        self.idle_rss_mib = rss_mib(self.proc.pid)
        return self

    def __exit__(self, *a):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class UplineLbs(UplineProc):
    """The deployment's LBS: `upline serve --role lbs` (one async worker per
    core) reading the node registry in PostgreSQL, where one upload node
    (same state, local disk) heartbeats. PostgreSQL is the machine's
    (127.0.0.1:5432, trust); the database `upline_bench_lbs` is made anew."""
    name = "upline --role lbs"
    DB = "upline_bench_lbs"

    def __enter__(self):
        sh(f"psql -h 127.0.0.1 -U postgres -qc 'DROP DATABASE IF EXISTS {self.DB} WITH (FORCE)' -c 'CREATE DATABASE {self.DB}'")
        state = f"postgres://postgres@127.0.0.1/{self.DB}"
        self.node = Upline("--state", state)
        self.node.__enter__()
        self.port = free_port()
        env = dict(os.environ, UPLINE_ACCESS_KEY="bench", UPLINE_SECRET_KEY="bench-secret")
        self.proc = subprocess.Popen([os.path.join(BIN, "upline"), "serve", "--role", "lbs", "--state", state,
                                      "--listen", f"127.0.0.1:{self.port}"], env=env, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{self.port}/lbs?version=1.0&bucketname=bench"
        started = time.monotonic()
        while True:
            try:
                body = json.loads(urllib.request.urlopen(url, timeout=1).read())
                if f"127.0.0.1:{self.node.port}" in body["upload"][0]:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() - started > 30:
                self.__exit__(None, None, None)
                raise RuntimeError("the LBS did not list the node")
            time.sleep(0.05)
        return self

    def __exit__(self, *a):
        self.stop()
        self.node.__exit__(*a)


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


class Garage:
    """Garage (cargo install garage --locked --version 2.5.0, SQLite engine only, as the test
    script does) started by `upline-bench garage`, with a bucket `bench`."""

    def __enter__(self):
        self.proc = subprocess.Popen([os.path.join(BIN, "upline-bench"), "garage"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())
        self.env = {"AWS_ACCESS_KEY_ID": self.info["access_key"], "AWS_SECRET_ACCESS_KEY": self.info["secret_key"]}
        return self

    def storage_url(self):
        return f"s3://{self.info['bucket']}?endpoint={self.info['endpoint']}&region=garage"

    def plain(self, size, part):
        env = dict(os.environ, **self.env)
        out = subprocess.run([os.path.join(BIN, "upline-bench"), "--url", self.info["endpoint"], "s3-plain",
                              "--bucket", self.info["bucket"], "--size", size, "--part-size", part],
                             env=env, check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    def __exit__(self, *a):
        self.proc.stdin.close()
        self.proc.wait()


class ServerProc:
    """A peer's process on `self.port` (`self.proc`) speaking `proto`, its files in `self.dir`."""
    proto = "tus"

    def bench(self, *args):
        return run_bench(self.port, self.proc.pid, self.proto, *args)

    def __exit__(self, *a):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Nginx(ServerProc):
    """Loopback limit: nginx reading and discarding bodies, a fixed /lbs."""
    name = "nginx"
    proto = "upline"

    def __enter__(self):
        if not shutil.which("nginx"):
            subprocess.run("apt-get install -y -qq nginx >/dev/null", shell=True, check=True)
        self.dir = tempfile.mkdtemp(prefix="nginx-bench-")
        self.port = free_port()
        conf = f"""
daemon off; worker_processes 1; pid {self.dir}/nginx.pid; error_log {self.dir}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {self.dir}; client_max_body_size 5m;
  client_body_buffer_size 4m;
  server {{ listen 127.0.0.1:{self.port};
    location = /lbs {{ default_type application/json;
      return 200 '{{"lbs":"http://127.0.0.1:{self.port}/lbs","upload":["http://127.0.0.1:{self.port}","http://127.0.0.1:{self.port}"]}}'; }}
    location / {{ return 200 '{{"offset":0,"context":"x","requestId":"r","requestID":"r","callbackRetMsg":""}}'; }}
  }} }}
"""
        open(f"{self.dir}/nginx.conf", "w").write(conf)
        self.proc = subprocess.Popen(["nginx", "-c", f"{self.dir}/nginx.conf", "-p", self.dir],
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return self


class TusNode(ServerProc):
    """@tus/server 2.x with @tus/file-store (npm, installed here on first use)."""
    name = "@tus/server"

    def __enter__(self):
        here = os.path.join(ROOT, "bench", "tus-node")
        if not os.path.isdir(os.path.join(here, "node_modules")):
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=here, check=True)
        self.dir = tempfile.mkdtemp(prefix="tus-bench-")
        self.port = free_port()
        env = dict(os.environ, PORT=str(self.port), DIR=self.dir)
        self.proc = subprocess.Popen(["node", "server.mjs"], cwd=here, env=env, stderr=subprocess.DEVNULL)
        time.sleep(1)
        return self

class Bare(ServerProc):
    """`upline-bench bare-server`: the least a durable tus server does (1 MiB O_DIRECT writes while the
    body arrives, fdatasync, 204; nothing else), the stop-and-wait limit of this machine; `--no-write`
    drops the bytes, `--md5` hashes them on a thread of their own."""

    def __init__(self, *flags):
        self.flags = list(flags)

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="bare-bench-", dir=os.path.join(ROOT, "target"))
        self.proc = subprocess.Popen([os.path.join(BIN, "upline-bench"), "bare-server", "--dir", self.dir,
                                      *self.flags], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        return self


class Rustus(ServerProc):
    """rustus 0.5.x with file storage, bodies up to 4 MiB; `fsync` adds
    --force-fsync (its fsync-every-chunk mode). Installed with cargo
    install on first use (a long compile, once)."""

    def __init__(self, fsync):
        self.fsync = fsync
        self.name = "rustus --force-fsync" if fsync else "rustus"

    def __enter__(self):
        binary = os.path.expanduser("~/.cargo/bin/rustus")
        if not os.path.exists(binary):
            subprocess.run(["cargo", "install", "rustus", "--locked", "--quiet"], check=True)
        self.dir = tempfile.mkdtemp(prefix="rustus-bench-", dir=ROOT)
        self.port = free_port()
        args = [binary, "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", self.dir,
                "--info-dir", self.dir, "--max-body-size", "4194304"]
        if self.fsync:
            args += ["--force-fsync", "true"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        return self


def dd(size_mib, oflag):
    """The disk's limit: the same bytes in 4 MiB writes with `oflag`, to a
    file deleted and rewritten every round; MiB/s."""
    path = os.path.join(ROOT, "target", "dd-bench")
    t = time.time()
    sh(f"dd if=/dev/zero of={path} bs=4M count={size_mib // 4} oflag={oflag} 2>/dev/null")
    dt = time.time() - t
    os.remove(path)
    return size_mib / dt


def md5_core():
    """One core's MD5 speed at 16 KiB blocks, MiB/s."""
    line = sh("openssl speed -evp md5 -seconds 2 2>/dev/null | tail -1").split()
    return float(line[-2].rstrip("k")) * 1000 / (1 << 20)


def summary(values):
    digits = 2 if statistics.median(values) < 10 else 0
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def series(a, size_mib, rows):
    """One round of every scenario, alternating contenders; appends to rows."""
    def add(key, value):
        rows.setdefault(key, []).append(value)

    if a.only == "s3":
        return s3_series(a, add)
    with Upline() as u:
        add(SINGLE, u.bench("single", "--size", a.size)["mib_per_s"])
        add(STARTUP, u.startup_ms)
        add(IDLE_RSS, u.idle_rss_mib)
    add(DD_DIRECT, dd(size_mib, "direct,dsync"))
    with Bare() as b:
        add(BARE, b.bench("single", "--size", a.size)["mib_per_s"])
    with Bare("--no-write") as b:
        add(BARE_DROP, b.bench("single", "--size", a.size)["mib_per_s"])
    add(DD_CACHE, dd(size_mib, "dsync"))
    with TusNode() as t:
        add("single, @tus/server file-store", t.bench("single", "--size", a.size)["mib_per_s"])
    for fsync in (True, False):
        with Rustus(fsync) as r:
            add(f"single, {r.name}", r.bench("single", "--size", a.size)["mib_per_s"])
    with Upline() as u:
        add(SINGLE_MD5, u.bench("single", "--size", a.size, "--md5")["mib_per_s"])
    add(MD5, md5_core())
    with Bare("--md5") as b:
        add(BARE_MD5, b.bench("single", "--size", a.size)["mib_per_s"])
    with Bare("--md5", "--no-write") as b:
        add(BARE_MD5_DROP, b.bench("single", "--size", a.size)["mib_per_s"])
    add(MD5_NODE, json.loads(sh(f"{os.path.join(BIN, 'upline-bench')} md5-speed"))["mib_per_s"])
    with Nginx() as n:
        add("single, nginx discarding (loopback)", n.bench("single", "--size", a.size)["mib_per_s"])
        add(LBS_NGINX, n.bench("lbs", "--seconds", "5")["requests_per_s"])
    with UplineLbs() as l:
        add(LBS, l.bench("lbs", "--seconds", "5")["requests_per_s"])
    with Upline() as u:
        add(LBS_NODE, u.bench("lbs", "--seconds", "5")["requests_per_s"])
        c = u.bench("concurrent", "--uploads", "256", "--size", "16MiB", "--chunk", "1MiB")
        add(CONC, c["mib_per_s"])
        add(CONC_P50, c["p50_ms"])
        add(CONC_P99, c["p99_ms"])
        add(CONC_RSS, c["server_peak_rss_mib"])
        add(CONC + ", CPU-s/GiB", c["server_cpu_s_per_gib"])
        add("query p50 µs, upline", u.bench("query")["p50_ms"] * 1000)
    # The same 256 uploads on the bare server: with its 1 MiB blocks and no memory bound, and with
    # the 64 KiB blocks that upline's write budget gives each of 256 writers.
    for key, flags in ((BARE_CONC, ()), (BARE_CONC_64K, ("--block", "64KiB"))):
        with Bare(*flags) as b:
            c = b.bench("concurrent", "--uploads", "256", "--size", "16MiB", "--chunk", "1MiB")
            add(key, c["mib_per_s"])
            add(key + ", CPU-s/GiB", c["server_cpu_s_per_gib"])
            add(key + ", peak RSS MiB", c["server_peak_rss_mib"])
    if a.s3:
        s3_series(a, add)


def s3_series(a, add):
    """upline on Garage in both layouts (the parts layout is what `auto` picks there) and a plain
    multipart upload of the same bytes."""
    with Garage() as g:
        with Upline("--storage", g.storage_url(), env=g.env) as u:
            add(S3_UPLINE, u.bench("single", "--size", a.s3_size)["mib_per_s"])
        add(S3_PLAIN4, g.plain(a.s3_size, "4MiB")["mib_per_s"])
        with Upline("--storage", g.storage_url(), env=dict(g.env, UPLINE_S3_LAYOUT="chunks")) as u:
            add(S3_CHUNKS, u.bench("single", "--size", a.s3_size)["mib_per_s"])
        add(S3_PLAIN, g.plain(a.s3_size, "8MiB")["mib_per_s"])


SINGLE = "single, upline (fsync every chunk)"
SINGLE_MD5 = "single + Content-MD5, upline"
STARTUP = "upline start to first answer, ms"
IDLE_RSS = "upline idle RSS, MiB"
DD_DIRECT = "single, dd oflag=direct, sync every 4 MiB"
BARE = "single, bare durable tus server (the stop-and-wait limit)"
BARE_DROP = "single, bare tus server dropping the bytes (loopback + HTTP)"
BARE_MD5 = "single + MD5 on its own thread, bare durable tus server"
BARE_MD5_DROP = "single + MD5 on its own thread, bare tus server dropping the bytes"
DD_CACHE = "single, dd through the page cache, sync every 4 MiB"
MD5 = "MD5, one core (openssl)"
MD5_NODE = "MD5, one core (fast-md5, the node's)"
LBS = "lbs req/s, upline --role lbs (PostgreSQL registry)"
LBS_NODE = "lbs req/s, upline upload node (one async worker)"
LBS_NGINX = "lbs req/s, nginx return 200"
CONC = "concurrent 256×16 MiB, upline MiB/s"
CONC_P50 = "concurrent, upline p50 chunk ms"
CONC_P99 = "concurrent, upline p99 chunk ms"
CONC_RSS = "concurrent, upline peak RSS MiB"
BARE_CONC = "concurrent 256×16 MiB, bare durable server, 1 MiB blocks"
BARE_CONC_64K = "concurrent 256×16 MiB, bare durable server, 64 KiB blocks"
S3_UPLINE = "S3 (Garage), upline 4 MiB chunks, one part each (auto: parts layout)"
S3_CHUNKS = "S3 (Garage), upline 4 MiB chunks, 8 MiB parts (chunks layout)"
S3_PLAIN = "S3 (Garage), plain multipart, 8 MiB parts"
S3_PLAIN4 = "S3 (Garage), plain multipart, 4 MiB parts"


def targets(rows):
    """Issue 6's targets from the medians of one run."""
    m = {k: statistics.median(v) for k, v in rows.items()}
    s3_checks = []
    if S3_UPLINE in m:
        # The parts layout's parts are the 4 MiB chunks, the chunks layout's 8 MiB: each is held
        # against a plain upload with its own part size, and the parts layout against 8 MiB too.
        s3_checks = [("S3 vs plain multipart, same part size (4 MiB)", m[S3_UPLINE] / m[S3_PLAIN4], ">=", 0.7),
                     ("(S3 vs plain multipart with 8 MiB parts)", m[S3_UPLINE] / m[S3_PLAIN], ">=", 0.7),
                     ("(S3, chunks layout, vs plain multipart, 8 MiB parts)", m[S3_CHUNKS] / m[S3_PLAIN],
                      ">=", 0.7)]
    if SINGLE not in m:
        checks = s3_checks
    else:
        checks = [
            ("single vs rustus --force-fsync", m[SINGLE] / m["single, rustus --force-fsync"], ">=", 1.5),
            ("single vs rustus (no fsync)", m[SINGLE] / m["single, rustus"], ">=", 1.0),
            ("single vs dd direct, sync every 4 MiB", m[SINGLE] / m[DD_DIRECT], ">=", 0.85),
            ("(single vs the bare durable server)", m[SINGLE] / m[BARE], ">=", 0.85),
            ("(the bare durable server vs dd direct)", m[BARE] / m[DD_DIRECT], ">=", 0.85),
            ("single vs dd page cache, sync every 4 MiB", m[SINGLE] / m[DD_CACHE], ">=", 0.85),
            ("Content-MD5 vs one core's MD5", m[SINGLE_MD5] / m[MD5], ">=", 0.8),
            ("(Content-MD5 vs the node's MD5 on one core)", m[SINGLE_MD5] / m[MD5_NODE], ">=", 0.8),
            ("(Content-MD5 vs the bare durable server with MD5)", m[SINGLE_MD5] / m[BARE_MD5], ">=", 0.8),
            ("(the bare server with MD5, dropping the bytes, vs one core's MD5)", m[BARE_MD5_DROP] / m[MD5],
             ">=", 0.8),
            ("concurrent vs single", m[CONC] / m[SINGLE], ">=", 0.8),
            ("(concurrent vs the bare server, concurrent, 64 KiB blocks)", m[CONC] / m[BARE_CONC_64K], ">=", 0.8),
            ("(the bare server, concurrent, 1 MiB blocks, vs its single)", m[BARE_CONC] / m[BARE], ">=", 0.8),
            ("concurrent p99 / p50", m[CONC_P99] / m[CONC_P50], "<=", 5.0),
            ("concurrent peak RSS MiB", m[CONC_RSS], "<=", 150),
            ("lbs vs nginx", m[LBS] / m[LBS_NGINX], ">=", 0.8),
            ("(lbs answered by an upload node vs nginx)", m[LBS_NODE] / m[LBS_NGINX], ">=", 0.8),
            ("idle RSS MiB", m[IDLE_RSS], "<=", 20),
            ("start to first answer ms", m[STARTUP], "<=", 100),
        ] + s3_checks
    print("| target | measured | wanted | |")
    print("|---|---|---|---|")
    for name, value, op, want in checks:
        ok = value >= want if op == ">=" else value <= want
        print(f"| {name} | {value:.2f} | {op} {want} | {'met' if ok else 'missed'} |")
    print()


def table(title, rows):
    print(f"| {title} | median (min–max) |")
    print("|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {summary(v)} |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--s3", action=argparse.BooleanOptionalAction, default=True,
                    help="also upline on Garage vs a plain multipart upload (needs garage)")
    ap.add_argument("--s3-size", default="256MiB")
    ap.add_argument("--only", choices=["s3"], help="run only these rows (the S3 ones)")
    a = ap.parse_args()
    size_mib = int(a.size.rstrip("GiB")) * 1024 if a.size.endswith("GiB") else int(a.size.rstrip("MiB"))
    build()
    # The first round writes to memory pages the VM has never touched
    # (capped near 300 MB/s for any writer); later rounds delete and
    # rewrite the same amount, which is the steady state.
    first, steady = {}, {}
    series(a, size_mib, first)
    for _ in range(a.runs):
        series(a, size_mib, steady)
    table("first round (first-touch)", first)
    table(f"steady state ({a.runs} rounds, A B A B)", steady)
    targets(steady)


if __name__ == "__main__":
    sys.exit(main())
