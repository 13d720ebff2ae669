// upline.js — resumable uploads from a browser to upline, or to any server
// of its direct-upload protocol (LBS discovery, chunks with an offset and an
// opaque context, the resume-point query, `x-nos-token`).
//
// Plain modern JavaScript, one file, no import: load it as an ES module.
// The whole-file MD5 is optional and injected (`createMD5`, e.g. hash-wasm's),
// so this file needs no bundler and no import map.
//
// It behaves like upline's Rust client (crates/client):
// * nodes come from the LBS, best first; the by-IP `lbs` address an answer
//   gives is the one asked next;
// * network errors, timeouts, 5xx and 520 back off (exponential, equal
//   jitter) and move to the next node; after every node failed, the LBS is
//   asked again;
// * a retry sends the very same bytes, so a chunk whose answer was lost is
//   the protocol's exact replay;
// * a 400 asks the query endpoint where to continue; a 404 starts over; a
//   403 stops with a clear error;
// * chunks start at 256 KiB, double while one takes under 2 s, halve when
//   one takes over 4 s or times out (32 KiB to 4 MiB);
// * each acknowledged chunk is recorded in localStorage, keyed by the file's
//   identity (name, size, lastModified) and bucket/object, so a reload or a
//   browser restart and a re-selection of the same file continue from the
//   server's resume point — the record is a hint, the server the truth.

/** The protocol's largest chunk. */
export const MAX_CHUNK = 4 * 1024 * 1024;

const RECORD_PREFIX = 'upline:v1:';
/** Restarting from 0 more often than this means something is wrong. */
const MAX_RESTARTS = 3;
/**
 * The `errMsg`s of the two 400s that say "the same chunk, later": another
 * node still holds the session's lease (its request from before a network
 * loss runs on), or a newer request for the session took over.
 */
const BUSY_MESSAGE = 'another node is writing this session; retry';
const SUPERSEDED_MESSAGE = 'superseded by a newer request for the same session';

const DEFAULT_CHUNKS = { start: 256 * 1024, min: 32 * 1024, max: MAX_CHUNK, targetMs: 2000 };
const DEFAULT_RETRY = { maxAttempts: 12, baseDelayMs: 200, maxDelayMs: 10_000 };

/**
 * Why an upload stopped. `code` is one of:
 * `token` (403, or getToken failed), `refused` (another 4xx),
 * `exhausted` (retries used up), `aborted` (abort()), `file` (unreadable).
 */
export class UploadError extends Error {
  constructor(code, message, { status, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'UploadError';
    this.code = code;
    this.status = status;
  }
}

/** Why a request ended early: told apart from network errors. */
const PAUSED = Object.freeze({ reason: 'paused' });
const ABORTED = Object.freeze({ reason: 'aborted' });
const TIMEOUT = Object.freeze({ reason: 'timeout' });

export class Uploader {
  /**
   * @param {object} options
   * @param {string} [options.lbs] the LBS address, e.g. `https://upload.example.com/lbs` (or `/lbs`)
   * @param {string[]} [options.nodes] upload nodes to use instead of an LBS, tried in order
   * @param {(bucket: string, object: string) => string | Promise<string>} options.getToken
   *   an `x-nos-token` for the object, from your backend
   * @param {() => Promise<object>} [options.createMD5] a factory of incremental
   *   MD5 hashers with hash-wasm's interface (init, update, digest('hex'),
   *   save, load); default: `globalThis.hashwasm?.createMD5`; none: no
   *   `Content-MD5` claim is sent
   * @param {number} [options.chunkSize] a fixed chunk size instead of adaptive ones
   * @param {object} [options.retry] `{maxAttempts, baseDelayMs, maxDelayMs}`
   * @param {Storage|null} [options.storage] where resume records live
   *   (default `localStorage`; `null`: no resuming across reloads)
   * @param {number} [options.minRate] bytes/s a chunk is given before it
   *   times out (plus 10 s); default 100 kB/s
   * @param {typeof fetch} [options.fetch]
   */
  constructor(options = {}) {
    if (!options.lbs && !(options.nodes && options.nodes.length)) {
      throw new TypeError('upline: pass lbs (an LBS address) or nodes (upload node URLs)');
    }
    if (typeof options.getToken !== 'function') {
      throw new TypeError('upline: pass getToken(bucket, object), returning an x-nos-token');
    }
    this.getToken = options.getToken;
    this.createMD5 = 'createMD5' in options ? options.createMD5 : globalThis.hashwasm?.createMD5;
    if ('chunkSize' in options && !(Number.isSafeInteger(options.chunkSize) && options.chunkSize >= 1 && options.chunkSize <= MAX_CHUNK)) {
      // Out of range it was refused by every node (over 4 MiB) or sent
      // empty chunks forever (below 1).
      throw new TypeError(`upline: chunkSize must be a whole number of bytes from 1 to ${MAX_CHUNK}`);
    }
    this.chunks = options.chunkSize
      ? { start: options.chunkSize, min: options.chunkSize, max: options.chunkSize, targetMs: Infinity }
      : DEFAULT_CHUNKS;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.storage = 'storage' in options ? options.storage : defaultStorage();
    this.minRate = options.minRate ?? 100_000;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.nodes = new NodeList(options.lbs, options.nodes, this.fetch);
  }

  /**
   * Starts (or resumes) the upload of `file` to `bucket`/`object`.
   * @param {File|Blob} file
   * @param {{bucket: string, object: string, contentType?: string,
   *   onProgress?: (p: {loaded: number, total: number, rate: number, eta: number,
   *   resumedFrom: number}) => void, onEvent?: (e: object) => void}} target
   * @returns {Upload} with pause(), resume(), abort() and `promise`
   */
  upload(file, target) {
    if (!target || !target.bucket || !target.object) {
      throw new TypeError('upline: upload(file, {bucket, object}) needs a bucket and an object');
    }
    return new Upload(this, file, target);
  }
}

/** Interrupted uploads recorded in `storage`, for a page to offer resuming. */
export function pendingUploads(storage = defaultStorage()) {
  const out = [];
  if (!storage) return out;
  for (let i = 0; i < storage.length; i++) {
    const key = storage.key(i);
    if (!key || !key.startsWith(RECORD_PREFIX)) continue;
    try {
      const [name, size, lastModified, bucket, object] = JSON.parse(key.slice(RECORD_PREFIX.length));
      const rec = JSON.parse(storage.getItem(key));
      out.push({ name, size, lastModified, bucket, object, offset: rec.offset, savedAt: rec.savedAt });
    } catch {
      // Not ours after all, or damaged: ignore.
    }
  }
  return out;
}

function defaultStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // storage disabled (some private modes throw on access)
  }
}

/** The node list of one uploader, shared by its uploads. */
class NodeList {
  constructor(lbs, nodes, fetchFn) {
    this.lbs = lbs ? withScheme(lbs) : null; // '/lbs' on a page is this origin's
    this.list = nodes ? nodes.map(withScheme) : [];
    this.remembered = null; // the `lbs` of the last answer, by IP
    this.fetch = fetchFn;
  }

  async get(bucket) {
    return this.list.length ? this.list : this.refresh(bucket);
  }

  /** Asks the LBS again: the remembered address first, then the configured one. */
  async refresh(bucket) {
    if (!this.lbs) return this.list;
    let last = '';
    for (const base of new Set([this.remembered, this.lbs].filter(Boolean))) {
      const url = new URL(base);
      url.searchParams.set('version', '1.0');
      url.searchParams.set('bucketname', bucket);
      try {
        const res = await timed(this.fetch, url, {}, 10_000, null);
        const body = await res.json().catch(() => ({}));
        if (res.ok && Array.isArray(body.upload) && body.upload.length) {
          this.list = body.upload.map(withScheme);
          if (body.lbs) this.remembered = withScheme(body.lbs);
          return this.list;
        }
        last = res.ok ? `${base} listed no upload node` : `${base} answered ${res.status}: ${body.Message ?? ''}`;
      } catch (e) {
        last = `${base}: ${describe(e)}`;
      }
    }
    throw new Transient(`node discovery failed (${last})`);
  }
}

/** A failure worth retrying (network, timeout, 5xx, discovery). */
class Transient extends Error {}

/** Some LBS answers carry addresses without `http://`; a page may say `/lbs`. */
function withScheme(u) {
  u = String(u).replace(/\/+$/, '');
  if (/^https?:\/\//.test(u)) return u;
  if (u.startsWith('/') && globalThis.location) return new URL(u, globalThis.location.href).href;
  return `http://${u}`;
}

/** One file's upload: the handle `Uploader.upload` returns. */
export class Upload {
  #up;
  #file;
  #target;
  #paused = false;
  #aborted = false;
  #wake = null; // resolves a wait on pause
  #current = null; // the AbortController of the request in flight
  #token = null;
  #ctx = null;
  #offset = 0;
  #node = 0;
  #chunk;
  #hasher = null;
  #key;
  #samples = []; // [time ms, acked bytes] for the rate
  #resumedFrom = 0;

  constructor(uploader, file, target) {
    this.#up = uploader;
    this.#file = file;
    this.#target = target;
    this.#chunk = uploader.chunks.start;
    this.#key = recordKey(file, target.bucket, target.object);
    /** `running`, `paused`, `done`, `failed` or `aborted`. */
    this.state = 'running';
    /** Resolves with `{bucket, object, size, md5, context, resumedFrom}`, rejects with an UploadError. */
    this.promise = this.#run().then(
      (done) => {
        this.state = 'done';
        return done;
      },
      (e) => {
        const aborted = e instanceof UploadError && e.code === 'aborted';
        this.state = aborted ? 'aborted' : 'failed';
        if (aborted) this.#forget();
        throw e;
      },
    );
  }

  /** Stops sending (the chunk in flight is cut off) until resume(). */
  pause() {
    if (this.state !== 'running') return;
    this.#paused = true;
    this.state = 'paused';
    this.#current?.abort(PAUSED);
    this.#emit({ type: 'paused' });
    this.#progress();
  }

  resume() {
    if (this.state !== 'paused') return;
    this.#paused = false;
    this.state = 'running';
    this.#samples = [];
    this.#wake?.();
    this.#emit({ type: 'resumed' });
  }

  /** Gives the upload up and forgets its resume record. */
  abort() {
    if (this.state === 'done' || this.state === 'failed' || this.state === 'aborted') return;
    this.#aborted = true;
    this.#current?.abort(ABORTED);
    this.#wake?.();
  }

  async #run() {
    const { bucket, object } = this.#target;
    const size = this.#file.size;
    try {
      this.#token = await this.#up.getToken(bucket, object);
    } catch (e) {
      throw new UploadError('token', `could not get an upload token: ${describe(e)}`, { cause: e });
    }
    await this.#startHasher();
    const rec = this.#load();
    if (rec && rec.context) {
      const at = await this.#resumePoint(rec.context);
      if (at === null) {
        this.#forget();
        this.#emit({ type: 'warning', message: 'the server no longer knows the interrupted upload; starting over' });
      } else {
        this.#ctx = rec.context;
        this.#offset = Math.min(at, size);
      }
    }
    this.#resumedFrom = this.#offset;
    if (this.#offset > 0) this.#emit({ type: 'resuming', offset: this.#offset });
    await this.#hashPrefix(this.#offset);
    this.#progress();
    let restarts = 0;
    for (;;) {
      if (this.#ctx && this.#offset === size && size > 0) {
        // The final chunk landed but its answer was lost (a crash, a
        // reload): only a final chunk brings a session of ours to its size.
        this.#forget();
        return this.#finished(this.#claim(new Uint8Array(0)), '');
      }
      const len = Math.min(this.#chunk, size - this.#offset);
      const complete = this.#offset + len === size;
      const bytes = await this.#read(this.#offset, len);
      // The whole-file MD5 goes with the final chunk, as a claim the server
      // checks before it publishes anything.
      const claim = complete ? this.#claim(bytes) : null;
      const sent = await this.#send(bytes, complete, claim);
      if (sent.kind === 'acked' && sent.ok.offset === this.#offset + len) {
        this.#hasher?.update(bytes);
        this.#offset = sent.ok.offset;
        this.#ctx = sent.ok.context;
        this.#progress();
        if (complete) {
          this.#forget();
          return this.#finished(claim, sent.ok.callbackRetMsg ?? '');
        }
        this.#save();
      } else if (sent.kind === 'acked' || sent.kind === 'resync') {
        const at = sent.kind === 'acked' ? sent.ok.offset : sent.offset;
        this.#emit({ type: 'warning', message: `continuing from the server's offset ${at}, not ${this.#offset}` });
        if (sent.kind === 'acked') this.#ctx = sent.ok.context;
        this.#offset = Math.min(at, size);
        await this.#hashPrefix(this.#offset);
      } else {
        restarts += 1;
        if (restarts > MAX_RESTARTS) {
          throw new UploadError('refused', `the server keeps forgetting this upload: ${sent.why}`, { status: 404 });
        }
        this.#emit({ type: 'warning', message: `the server no longer knows this upload (${sent.why}); starting over` });
        this.#forget();
        this.#ctx = null;
        this.#offset = 0;
        await this.#hashPrefix(0);
      }
    }
  }

  #finished(md5, callbackRetMsg) {
    const { bucket, object } = this.#target;
    return { bucket, object, size: this.#file.size, md5, context: this.#ctx, resumedFrom: this.#resumedFrom, callbackRetMsg };
  }

  /**
   * Sends one chunk until it is acknowledged or a final answer comes.
   * A retry sends the very same bytes: the protocol's exact replay makes
   * that safe when the first try did land.
   */
  async #send(bytes, complete, claim) {
    const len = bytes.byteLength;
    let attempt = 0;
    for (;;) {
      await this.#gate();
      attempt += 1;
      let failure;
      try {
        const url = new URL(await this.#objectUrl());
        url.searchParams.set('offset', String(this.#offset));
        url.searchParams.set('complete', String(complete));
        url.searchParams.set('version', '1.0');
        if (this.#ctx) url.searchParams.set('context', this.#ctx);
        const headers = {
          'x-nos-token': this.#token,
          'Content-Type': this.#target.contentType || this.#file.type || 'application/octet-stream',
        };
        if (claim) headers['Content-MD5'] = claim;
        const started = performance.now();
        const res = await this.#request(url, { method: 'POST', headers, body: bytes }, this.#timeout(len));
        const body = res.body;
        if (res.ok) {
          this.#adapt(len, performance.now() - started);
          return { kind: 'acked', ok: body };
        }
        const msg = body.errMsg ?? '';
        if (res.status === 403) throw tokenRefused(msg);
        if (res.status === 404 && this.#ctx) return { kind: 'restart', why: msg };
        if (res.status === 400 && this.#ctx) {
          // Most likely an offset mismatch: the query endpoint has the truth.
          const at = await this.#resumePoint(this.#ctx);
          if (at === null) return { kind: 'restart', why: msg };
          if (at !== this.#offset) return { kind: 'resync', offset: at };
          // Busy or superseded: the same chunk after a pause (they used to
          // end the upload, as they did in the Rust client).
          if (msg !== BUSY_MESSAGE && msg !== SUPERSEDED_MESSAGE) {
            throw new UploadError('refused', `the server refused the chunk (400): ${msg}`, { status: 400 });
          }
          failure = `400: ${msg}`;
        } else if (res.status < 500) {
          throw new UploadError('refused', `the server refused the chunk (${res.status}): ${msg}`, { status: res.status });
        } else {
          failure = `${res.status}: ${msg}`;
        }
      } catch (e) {
        if (e instanceof UploadError) throw e;
        if (e === PAUSED || e === ABORTED) {
          attempt -= 1; // not a failure: #gate waits for resume() or throws
          continue;
        }
        if (e === TIMEOUT) this.#chunk = Math.max(Math.floor(this.#chunk / 2), this.#up.chunks.min);
        failure = describe(e);
      }
      await this.#backoff(attempt, failure);
    }
  }

  /** The server's resume point of `ctx`; `null` when it does not know it. */
  async #resumePoint(ctx) {
    let attempt = 0;
    for (;;) {
      await this.#gate();
      attempt += 1;
      let failure;
      try {
        const url = `${await this.#objectUrl()}?uploadContext&context=${encodeURIComponent(ctx)}&version=1.0`;
        const res = await this.#request(url, { headers: { 'x-nos-token': this.#token } }, 10_000);
        if (res.ok && Number.isSafeInteger(res.body.offset)) return res.body.offset;
        const msg = res.body.errMsg ?? '';
        if (res.status === 404) return null;
        if (res.status === 403) throw tokenRefused(msg);
        // 429 is the node's query rate limit: back off and ask again.
        if (res.status < 500 && res.status !== 429 && !res.ok) {
          throw new UploadError('refused', `the server refused the resume query (${res.status}): ${msg}`, { status: res.status });
        }
        failure = `resume query: ${res.status} ${msg}`;
      } catch (e) {
        if (e instanceof UploadError) throw e;
        if (e === PAUSED || e === ABORTED) {
          attempt -= 1;
          continue;
        }
        failure = describe(e);
      }
      await this.#backoff(attempt, failure);
    }
  }

  /** One request, cut off by its timeout, pause() or abort(). */
  async #request(url, init, timeoutMs) {
    const ac = new AbortController();
    this.#current = ac;
    try {
      return await timed(this.#up.fetch, url, init, timeoutMs, ac, true);
    } catch (e) {
      throw ac.signal.aborted ? ac.signal.reason : e;
    } finally {
      if (this.#current === ac) this.#current = null;
    }
  }

  /** Waits while paused; throws once aborted. */
  async #gate() {
    for (;;) {
      if (this.#aborted) throw new UploadError('aborted', 'the upload was aborted');
      if (!this.#paused) return;
      await new Promise((resolve) => {
        this.#wake = resolve;
      });
      this.#wake = null;
    }
  }

  async #backoff(attempt, reason) {
    const { maxAttempts, baseDelayMs, maxDelayMs } = this.#up.retry;
    if (attempt >= maxAttempts) {
      throw new UploadError('exhausted', `gave up after ${attempt} attempts; last failure: ${reason}`);
    }
    this.#emit({ type: 'retry', attempt, reason });
    await this.#failOver();
    // "Equal jitter": between half the exponential step and all of it.
    const step = Math.min(baseDelayMs * 2 ** Math.min(attempt - 1, 20), maxDelayMs);
    const delay = step / 2 + (Math.random() * step) / 2;
    await new Promise((resolve) => {
      const t = setTimeout(resolve, delay);
      // abort() and pause() end the wait at once; #gate then decides.
      this.#wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
    this.#wake = null;
  }

  /** The next node; a fresh LBS answer once every node of the list failed. */
  async #failOver() {
    this.#node += 1;
    const count = this.#up.nodes.list.length || 1;
    if (this.#node % count === 0) {
      await this.#up.nodes.refresh(this.#target.bucket).catch(() => {});
    }
  }

  async #objectUrl() {
    const nodes = await this.#up.nodes.get(this.#target.bucket);
    const node = nodes[this.#node % nodes.length];
    return `${node}/${encodeURIComponent(this.#target.bucket)}/${encodeURIComponent(this.#target.object)}`;
  }

  #timeout(len) {
    return 10_000 + (len / Math.max(this.#up.minRate, 1)) * 1000;
  }

  /** The adaptive chunk size after a full-size chunk took `ms`. */
  #adapt(len, ms) {
    const { min, max, targetMs } = this.#up.chunks;
    if (len < this.#chunk) return; // a short tail says nothing about the network
    if (ms < targetMs) this.#chunk = Math.min(this.#chunk * 2, max);
    else if (ms > targetMs * 2) this.#chunk = Math.max(Math.floor(this.#chunk / 2), min);
  }

  async #read(offset, len) {
    try {
      return new Uint8Array(await this.#file.slice(offset, offset + len).arrayBuffer());
    } catch (e) {
      // A file changed or removed since it was picked cannot be read.
      throw new UploadError('file', `cannot read ${this.#file.name ?? 'the file'}: ${describe(e)}`, { cause: e });
    }
  }

  async #startHasher() {
    if (!this.#up.createMD5) return;
    try {
      this.#hasher = await this.#up.createMD5();
    } catch (e) {
      // WebAssembly blocked by a Content-Security-Policy, say: upload anyway.
      this.#emit({ type: 'warning', message: `no whole-file MD5 (${describe(e)}); uploading without it` });
    }
  }

  /** MD5 state over the file's first `upto` bytes, read locally. */
  async #hashPrefix(upto) {
    if (!this.#hasher) return;
    this.#hasher.init();
    for (let at = 0; at < upto; at += MAX_CHUNK) {
      this.#hasher.update(await this.#read(at, Math.min(MAX_CHUNK, upto - at)));
    }
  }

  /** The whole file's MD5 with `last` appended, leaving the running state as it was. */
  #claim(last) {
    if (!this.#hasher) return null;
    const saved = this.#hasher.save();
    this.#hasher.update(last);
    const hex = this.#hasher.digest('hex');
    this.#hasher.load(saved);
    return hex;
  }

  #progress() {
    const now = performance.now();
    const total = this.#file.size;
    this.#samples.push([now, this.#offset]);
    // The rate over the last few seconds of acknowledged chunks.
    while (this.#samples.length > 2 && now - this.#samples[1][0] > 5000) this.#samples.shift();
    const [t0, b0] = this.#samples[0];
    const rate = this.state === 'running' && now > t0 ? ((this.#offset - b0) * 1000) / (now - t0) : 0;
    const eta = rate > 0 ? (total - this.#offset) / rate : Infinity;
    this.#target.onProgress?.({ loaded: this.#offset, total, rate, eta, resumedFrom: this.#resumedFrom });
  }

  #emit(event) {
    this.#target.onEvent?.(event);
  }

  #load() {
    try {
      const text = this.#up.storage?.getItem(this.#key);
      return text ? JSON.parse(text) : null;
    } catch {
      return null;
    }
  }

  #save() {
    try {
      this.#up.storage?.setItem(
        this.#key,
        JSON.stringify({ context: this.#ctx, offset: this.#offset, savedAt: Date.now() }),
      );
    } catch {
      // Full or disabled storage: this upload just cannot resume after a reload.
    }
  }

  #forget() {
    try {
      this.#up.storage?.removeItem(this.#key);
    } catch {
      // as above
    }
  }
}

/** The resume record's key: the file's identity and where it goes. */
function recordKey(file, bucket, object) {
  return RECORD_PREFIX + JSON.stringify([file.name ?? '', file.size, file.lastModified ?? 0, bucket, object]);
}

function tokenRefused(msg) {
  return new UploadError('token', `the server refused the upload token (403): ${msg || 'no reason given'}`, { status: 403 });
}

/**
 * fetch with a timeout; the JSON body (or `{}`) is read inside it, so a
 * stalled body is cut off too. With `ac`, pause() and abort() can cut it.
 */
async function timed(fetchFn, url, init, timeoutMs, ac, parse = false) {
  ac = ac ?? new AbortController();
  const t = setTimeout(() => ac.abort(TIMEOUT), timeoutMs);
  try {
    const res = await fetchFn(url, { ...init, signal: ac.signal });
    if (!parse) return res;
    const text = await res.text();
    let body = {};
    try {
      body = text ? JSON.parse(text) : {};
    } catch {
      body = { errMsg: text.slice(0, 200) };
    }
    return { ok: res.ok, status: res.status, body };
  } catch (e) {
    throw ac.signal.aborted ? ac.signal.reason : e;
  } finally {
    clearTimeout(t);
  }
}

function describe(e) {
  if (e === TIMEOUT) return 'timed out';
  if (e === PAUSED || e === ABORTED) return e.reason;
  return e && e.message ? e.message : String(e);
}
