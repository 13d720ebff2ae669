#!/usr/bin/env python3
"""Side-by-side benchmark runs (not part of CI).

Runs each scenario against each contender, alternating A B A B, RUNS times,
and prints medians and min-max as a Markdown table. Contenders so far:
upline (release build, embedded default), the disk's limit (dd with a sync
every 4 MiB), one core's MD5 speed (openssl), and nginx reading and
discarding 4 MiB bodies / answering /lbs with a fixed body (loopback
limit), and the peers @tus/server (npm, `bench/tus-node`) and rustus, in
its default and --force-fsync modes (`cargo install rustus --locked`).

Usage: python3 bench/run.py [--runs 5] [--size 1GiB]
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

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


class Upline:
    name = "upline"

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="upline-bench-", dir=ROOT)
        self.port = free_port()
        env = dict(os.environ, UPLINE_ACCESS_KEY="bench", UPLINE_SECRET_KEY="bench-secret")
        self.proc = subprocess.Popen([os.path.join(BIN, "upline"), "serve", "--listen", f"127.0.0.1:{self.port}",
                                      "--data-dir", self.dir], env=env, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return self

    def bench(self, *args):
        return run_bench(self.port, self.proc.pid, "upline", *args)

    def __exit__(self, *a):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Nginx:
    """Loopback limit: nginx reading and discarding bodies, a fixed /lbs."""
    name = "nginx"

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

    def bench(self, *args):
        return run_bench(self.port, self.proc.pid, "upline", *args)

    def __exit__(self, *a):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class TusNode:
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

    def bench(self, *args):
        return run_bench(self.port, self.proc.pid, "tus", *args)

    def __exit__(self, *a):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Rustus:
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

    bench = TusNode.bench

    def __exit__(self, *a):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def dd_sync(size_mib):
    """The disk's limit: the same bytes, synced every 4 MiB; MiB/s."""
    path = os.path.join(ROOT, "target", "dd-bench")
    t = time.time()
    sh(f"dd if=/dev/zero of={path} bs=4M count={size_mib // 4} oflag=dsync 2>/dev/null")
    dt = time.time() - t
    os.remove(path)
    return size_mib / dt


def md5_core():
    """One core's MD5 speed at 16 KiB blocks, MiB/s."""
    line = sh("openssl speed -evp md5 -seconds 2 2>/dev/null | tail -1").split()
    return float(line[-2].rstrip("k")) * 1000 / (1 << 20)


def summary(values):
    return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def series(a, size_mib, rows):
    """One round of every scenario, alternating contenders; appends to rows."""
    def add(key, value):
        rows.setdefault(key, []).append(value)

    with Upline() as u:
        add("single, upline (fsync every chunk)", u.bench("single", "--size", a.size)["mib_per_s"])
    add("single, dd with a sync every 4 MiB", dd_sync(size_mib))
    with TusNode() as t:
        add("single, @tus/server file-store", t.bench("single", "--size", a.size)["mib_per_s"])
    for fsync in (True, False):
        with Rustus(fsync) as r:
            add(f"single, {r.name}", r.bench("single", "--size", a.size)["mib_per_s"])
    with Upline() as u:
        add("single + Content-MD5, upline", u.bench("single", "--size", a.size, "--md5")["mib_per_s"])
    add("MD5, one core (openssl)", md5_core())
    with Nginx() as n:
        add("single, nginx discarding (loopback)", n.bench("single", "--size", a.size)["mib_per_s"])
        add("lbs req/s, nginx return 200", n.bench("lbs", "--seconds", "5")["requests_per_s"])
    with Upline() as u:
        add("lbs req/s, upline", u.bench("lbs", "--seconds", "5")["requests_per_s"])
        c = u.bench("concurrent", "--uploads", "256", "--size", "16MiB", "--chunk", "1MiB")
        add("concurrent 256×16 MiB, upline MiB/s", c["mib_per_s"])
        add("concurrent, upline peak RSS MiB", c["server_peak_rss_mib"])
        add("query p50 µs, upline", u.bench("query")["p50_ms"] * 1000)


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


if __name__ == "__main__":
    sys.exit(main())
