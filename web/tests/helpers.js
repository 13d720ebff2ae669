// What the browser tests share: an upline node (the real binary, on a
// random port, with a temp data directory), Debian's Chromium driven by
// playwright-core (never a downloaded browser), test files, and the node's
// own count of the chunk bytes it received (`/metrics`).

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export const CHROMIUM = process.env.UPLINE_CHROMIUM ?? '/usr/bin/chromium';

/** The `upline` binary scripts/test.sh built (or UPLINE_BIN). */
export function uplineBin() {
  const bin =
    process.env.UPLINE_BIN ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(root, 'target'), 'debug', 'upline');
  if (!existsSync(bin)) throw new Error(`no upline binary at ${bin}: run cargo build -p upline (or set UPLINE_BIN)`);
  return bin;
}

const cleanups = new WeakMap();

/**
 * Runs `fn` when the test ends, last registered first (a browser closes
 * before its profile directory goes), each whatever the others did.
 */
export function defer(t, fn) {
  let stack = cleanups.get(t);
  if (!stack) {
    stack = [];
    cleanups.set(t, stack);
    t.after(async () => {
      while (stack.length) {
        try {
          // A wedged browser must not keep the test run from ending.
          await within(30_000, stack.pop()());
        } catch (e) {
          console.error('cleanup failed:', e);
        }
      }
    });
  }
  stack.push(fn);
}

async function within(ms, promise) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A temp directory removed when the test ends. */
export function tempDir(t, prefix = 'upline-web-') {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  defer(t, () => rmSync(dir, { recursive: true, force: true, maxRetries: 5 }));
  return dir;
}

/** A running `upline serve`. */
export class UplineNode {
  /** Starts a node on `port` (0: any free one) over `dataDir`. */
  static async start(t, { dataDir, port = 0, args = [] }) {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('UPLINE_')));
    env.RUST_LOG = 'warn';
    const child = spawn(uplineBin(), ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, ...args], {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const node = new UplineNode(child);
    defer(t, () => node.kill());
    node.base = await node.#serving();
    node.port = Number(new URL(node.base).port);
    return node;
  }

  constructor(child) {
    this.child = child;
    this.log = '';
    this.exited = new Promise((resolve) => child.once('exit', resolve));
  }

  /** The address from the start-up line. */
  #serving() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`upline did not start:\n${this.log}`)), 30_000);
      this.child.stderr.setEncoding('utf8');
      this.child.stderr.on('data', (text) => {
        this.log += text;
        const m = /serving on (http:\/\/[\d.:]+) /.exec(this.log); // the whole address
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      this.exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`upline exited (${code}) before serving:\n${this.log}`));
      });
    });
  }

  /** Stops the node: SIGKILL for a crash, SIGTERM for a clean stop. */
  async kill(signal = 'SIGKILL') {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    await this.exited;
  }

  /**
   * Chunk body bytes this node process received, from its Prometheus
   * endpoint (`upline_bytes_received_total`, summed over any labels).
   */
  async bytesReceived() {
    const res = await fetch(`${this.base}/metrics`);
    if (!res.ok) throw new Error(`/metrics answered ${res.status}`);
    const text = await res.text();
    let total = 0;
    let seen = false;
    for (const line of text.split('\n')) {
      const m = /^upline_bytes_received_total(?:\{[^}]*\})?\s+(\S+)/.exec(line);
      if (m) {
        total += Number(m[1]);
        seen = true;
      }
    }
    if (!seen) throw new Error(`/metrics has no upline_bytes_received_total:\n${text.slice(0, 500)}`);
    return total;
  }

  /** The received-bytes count once it stopped moving (a cut-off body has arrived). */
  async settledBytes() {
    let last = await this.bytesReceived();
    for (;;) {
      await new Promise((r) => setTimeout(r, 250));
      const now = await this.bytesReceived();
      if (now === last) return now;
      last = now;
    }
  }

  /** An upload token and a signed download link for `object`, from the demo's endpoint. */
  async token(object, bucket = 'uploads') {
    const res = await fetch(`${this.base}/demo/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ bucket, object }),
    });
    if (!res.ok) throw new Error(`/demo/token answered ${res.status}: ${await res.text()}`);
    return res.json();
  }

  /** The server's resume point of an upload (the query endpoint). */
  async resumePoint(object, context) {
    const { token } = await this.token(object);
    const res = await fetch(
      `${this.base}/uploads/${encodeURIComponent(object)}?uploadContext&context=${encodeURIComponent(context)}&version=1.0`,
      { headers: { 'x-nos-token': token } },
    );
    if (!res.ok) throw new Error(`resume query answered ${res.status}: ${await res.text()}`);
    return (await res.json()).offset;
  }

  /** The stored bytes of an object, downloaded through the node. */
  async stored(object) {
    const { download } = await this.token(object);
    const res = await fetch(new URL(download, this.base));
    if (!res.ok) throw new Error(`download of ${object} answered ${res.status}`);
    return Buffer.from(await res.arrayBuffer());
  }
}

/** A loopback port nothing listens on (it was free a moment ago). */
export async function closedPort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A file of `size` random bytes in `dir`, with its MD5 (hex). */
export function testFile(dir, name, size) {
  const bytes = randomBytes(size);
  const file = path.join(dir, name);
  writeFileSync(file, bytes);
  return { path: file, name, size, bytes, md5: createHash('md5').update(bytes).digest('hex') };
}

/** Flags for Chromium run as root in a closed network. */
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

/** Headless Chromium with a fresh profile; closed when the test ends. */
export async function browser(t) {
  const b = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
  defer(t, () => b.close());
  return b;
}

/**
 * Chromium on a profile kept in `userDataDir`, so localStorage outlives
 * closing it: a browser restart is close() and this again.
 */
export async function persistentBrowser(userDataDir) {
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 900, height: 700 },
  });
}

/**
 * Limits the page's upload rate (Chrome's own network throttling). Without
 * Network.enable: its events would slow every other call to the page.
 */
export async function throttle(page, bytesPerSecond) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: bytesPerSecond,
  });
  return cdp;
}

/** Polls `check` until it returns a truthy value. */
export async function until(check, { timeout = 30_000, every = 50, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/**
 * Waits until the page shows `bytes` of `name` acknowledged, then clicks
 * `click` in its row (if given) at once: checked and clicked in the page,
 * since a round trip per poll lags behind a busy page.
 */
export async function whenLoaded(page, name, bytes, click) {
  await page.waitForFunction(
    ({ name, bytes, click }) => {
      const row = [...document.querySelectorAll('#uploads .file')].find((r) => r.dataset.name === name);
      if (!row || Number(row.dataset.loaded ?? 0) < bytes) return false;
      if (click) row.querySelector(click).click();
      return true;
    },
    { name, bytes, click },
    { timeout: 60_000, polling: 20 },
  );
}

/** The upload rows' progress, as the page shows it. */
export async function rowLoaded(page, name) {
  return page.evaluate((n) => {
    const row = [...document.querySelectorAll('#uploads .file')].find((r) => r.dataset.name === n);
    return row ? Number(row.dataset.loaded ?? 0) : -1;
  }, name);
}

/** Waits for `name` in the page's list of finished uploads; its text and link. */
export async function finished(page, name, timeout = 60_000) {
  const outcome = await page.waitForFunction(
    (n) => {
      const done = [...document.querySelectorAll('#done li')].find((li) => li.dataset.name === n);
      if (done) return { text: done.innerText, href: done.querySelector('a').getAttribute('href') };
      const failed = [...document.querySelectorAll('#uploads .file')].find(
        (r) => r.dataset.name === n && (r.dataset.state === 'failed' || r.dataset.state === 'aborted'),
      );
      return failed ? { error: failed.querySelector('.error').textContent } : null;
    },
    name,
    { timeout, polling: 100 },
  );
  const v = await outcome.jsonValue();
  if (v.error) throw new Error(`the page's upload of ${name} failed: ${v.error}`);
  return v;
}

/** The page's resume records (localStorage). */
export async function records(page) {
  return page.evaluate(() =>
    Object.keys(localStorage)
      .filter((k) => k.startsWith('upline:'))
      .map((k) => ({ key: k, ...JSON.parse(localStorage.getItem(k)) })),
  );
}
