// The demo page in real headless Chromium against the real `upline serve`:
// every check compares what the node stored with the file, and counts on the
// node's side the chunk bytes it received, so a client that re-sends
// acknowledged bytes or stores the wrong ones fails.

import assert from 'node:assert/strict';
import { copyFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import {
  UplineNode,
  browser,
  defer,
  finished,
  persistentBrowser,
  records,
  rowLoaded,
  tempDir,
  testFile,
  throttle,
  until,
  whenLoaded,
} from './helpers.js';

const MiB = 1024 * 1024;
const docs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docs');

/** A node and a page on its /demo. */
async function demo(t, { dataDir } = {}) {
  const dir = tempDir(t);
  const node = await UplineNode.start(t, { dataDir: dataDir ?? path.join(dir, 'data') });
  const page = await (await browser(t)).newPage({ viewport: { width: 900, height: 700 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`${node.base}/demo`);
  return { dir, node, page, errors };
}

test('a 20 MiB file through the page: stored bytes equal, MD5 claimed with the last chunk', { timeout: 120_000 }, async (t) => {
  const { dir, node, page, errors } = await demo(t);
  const file = testFile(dir, 'clip-20MiB.bin', 20 * MiB);
  assert.match(await page.locator('#md5-status').innerText(), /MD5: on/);
  const chunks = [];
  page.on('request', (r) => {
    if (r.method() === 'POST' && r.url().includes('offset=')) chunks.push({ url: new URL(r.url()), headers: r.headers() });
  });

  await page.setInputFiles('#files', file.path);
  const done = await finished(page, file.name);

  assert.deepEqual(await node.stored(file.name), file.bytes, 'the stored object is the file');
  assert.ok(done.text.includes(`md5 ${file.md5}`), done.text);
  const downloaded = Buffer.from(await (await fetch(new URL(done.href, node.base))).arrayBuffer());
  assert.deepEqual(downloaded, file.bytes, "the page's download link serves the file");
  const last = chunks.at(-1);
  assert.equal(last.url.searchParams.get('complete'), 'true');
  assert.equal(last.headers['content-md5'], file.md5, 'the whole-file MD5 goes with the final chunk');
  assert.ok(chunks.slice(0, -1).every((c) => !c.headers['content-md5']), 'and only with it');
  const sizes = chunks.map((c, i) => (chunks[i + 1] ? Number(chunks[i + 1].url.searchParams.get('offset')) : file.size) - Number(c.url.searchParams.get('offset')));
  assert.equal(sizes[0], 256 * 1024, 'chunks start at 256 KiB');
  assert.equal(Math.max(...sizes), 4 * MiB, 'and grow to 4 MiB on a fast link');
  assert.deepEqual(await records(page), [], 'a finished upload leaves no resume record');
  assert.deepEqual(errors, []);
  assert.equal(await node.bytesReceived(), file.size, 'each byte sent once');
});

test('two files at once', { timeout: 120_000 }, async (t) => {
  const { dir, node, page } = await demo(t);
  await throttle(page, 8 * MiB);
  const a = testFile(dir, 'first.bin', 7 * MiB + 123);
  const b = testFile(dir, 'second.bin', 11 * MiB);
  const chunks = [];
  page.on('request', (r) => r.url().includes('offset=') && chunks.push(decodeURIComponent(new URL(r.url()).pathname)));
  await page.setInputFiles('#files', [a.path, b.path]);
  await Promise.all([finished(page, a.name), finished(page, b.name)]);
  // Side by side, not one after the other: each sent a chunk before the other's last.
  const last = (name) => chunks.lastIndexOf(`/uploads/${name}`);
  assert.ok(chunks.indexOf(`/uploads/${b.name}`) < last(a.name) && chunks.indexOf(`/uploads/${a.name}`) < last(b.name), chunks.join(' '));
  assert.deepEqual(await node.stored(a.name), a.bytes);
  assert.deepEqual(await node.stored(b.name), b.bytes);
  assert.equal(await node.bytesReceived(), a.size + b.size);
});

test('pause stops sending, resume finishes', { timeout: 120_000 }, async (t) => {
  const { dir, node, page } = await demo(t);
  await throttle(page, 4 * MiB);
  const file = testFile(dir, 'paused.bin', 12 * MiB);
  await page.setInputFiles('#files', file.path);
  await whenLoaded(page, file.name, 2 * MiB, 'button.pause');

  const row = page.locator('#uploads .file', { hasText: file.name });
  assert.equal(await row.getAttribute('data-state'), 'paused');
  assert.equal(await row.locator('button.pause').innerText(), 'Resume');
  const atPause = await node.settledBytes(); // the cut-off chunk's last bytes arrived
  const shown = await rowLoaded(page, file.name);
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(await node.bytesReceived(), atPause, 'nothing is sent while paused');
  assert.equal(await rowLoaded(page, file.name), shown);
  assert.ok(shown < file.size);

  await row.locator('button.pause').click();
  await finished(page, file.name);
  assert.deepEqual(await node.stored(file.name), file.bytes);
  const received = await node.bytesReceived();
  assert.ok(received >= file.size && received <= file.size + 4 * MiB, `at most the cut-off chunk again: ${received}`);
});

test('a reload mid-upload: the same file picked again continues from the resume point', { timeout: 120_000 }, async (t) => {
  const { dir, node, page } = await demo(t);
  await throttle(page, 3 * MiB);
  const file = testFile(dir, 'reloaded.bin', 14 * MiB);
  await page.setInputFiles('#files', file.path);
  await until(async () => (await records(page)).some((r) => r.offset >= 2 * MiB), { what: 'a resume record' });

  await page.reload(); // cuts off the chunk in flight
  const before = await node.settledBytes();
  const [rec] = await records(page);
  const committed = await node.resumePoint(file.name, rec.context);
  assert.match(await page.locator('#pending').innerText(), /reloaded\.bin/);

  await page.setInputFiles('#files', file.path);
  const done = await finished(page, file.name);
  assert.match(done.text, /resumed from/);
  assert.deepEqual(await node.stored(file.name), file.bytes);
  assert.equal((await node.bytesReceived()) - before, file.size - committed, 'only the bytes after the resume point');
});

test('files dropped on the page upload too', { timeout: 60_000 }, async (t) => {
  const { node, page } = await demo(t);
  const bytes = await page.evaluate(() => {
    const data = crypto.getRandomValues(new Uint8Array(60_000));
    const dt = new DataTransfer();
    dt.items.add(new File([data], 'dropped.txt', { type: 'text/plain' }));
    document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    return [...data];
  });
  await finished(page, 'dropped.txt');
  assert.deepEqual(await node.stored('dropped.txt'), Buffer.from(bytes));
});

test('node killed mid-upload, browser restarted: the same file finishes without re-sending acknowledged bytes', { timeout: 180_000 }, async (t) => {
  const dir = tempDir(t);
  const dataDir = path.join(dir, 'data');
  const profile = path.join(dir, 'profile');
  const file = testFile(dir, 'restart.bin', 20 * MiB);

  const first = await UplineNode.start(t, { dataDir });
  let ctx = await persistentBrowser(profile);
  defer(t, () => ctx.close());
  let page = ctx.pages()[0] ?? (await ctx.newPage());
  await page.goto(`${first.base}/demo`);
  await throttle(page, 3 * MiB);
  await page.setInputFiles('#files', file.path);
  await until(async () => (await records(page)).some((r) => r.offset >= 4 * MiB), {
    what: 'a resume record past 4 MiB',
  });

  await first.kill('SIGKILL'); // a crash, with a chunk in flight
  await page.goto('about:blank');
  await ctx.close(); // and the browser quits
  const again = await UplineNode.start(t, { dataDir, port: first.port });
  ctx = await persistentBrowser(profile);
  page = ctx.pages()[0] ?? (await ctx.newPage());
  await page.goto(`${again.base}/demo`);

  // The record survived the browser; the node's resume point is the truth.
  const [rec] = await records(page);
  assert.ok(rec && rec.context, 'the resume record outlives the browser');
  assert.match(await page.locator('#pending').innerText(), /restart\.bin/, 'the page offers to resume it');
  const committed = await again.resumePoint(file.name, rec.context);
  assert.ok(committed >= rec.offset && committed < file.size, `resume point ${committed}`);

  await page.setInputFiles('#files', file.path);
  const done = await finished(page, file.name);
  assert.match(done.text, /resumed from/);
  assert.deepEqual(await again.stored(file.name), file.bytes);
  assert.equal(await again.bytesReceived(), file.size - committed, 'only the bytes after the resume point');
  assert.deepEqual(await records(page), []);
});

test('without the MD5 library the page says so and uploads without a claim', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const node = await UplineNode.start(t, { dataDir: path.join(dir, 'data') });
  const page = await (await browser(t)).newPage();
  // As on a node where npm never ran: /md5.js is a 404.
  await page.route('**/md5.js', (r) => r.fulfill({ status: 404, body: 'not installed' }));
  const claims = [];
  page.on('request', (r) => r.method() === 'POST' && claims.push(r.headers()['content-md5']));
  await page.goto(`${node.base}/demo`);
  assert.match(await page.locator('#md5-status').innerText(), /MD5: off.*npm ci --prefix web/);
  const file = testFile(dir, 'plain.bin', 3 * MiB);
  await page.setInputFiles('#files', file.path);
  const done = await finished(page, file.name);
  assert.match(done.text, /no md5/);
  assert.deepEqual(await node.stored(file.name), file.bytes);
  assert.ok(claims.length > 0 && claims.every((c) => c === undefined));
});

test('screenshot of the demo page', { timeout: 120_000 }, async (t) => {
  const { dir, node, page } = await demo(t);
  const small = [testFile(dir, 'holiday-photo.jpg', 2 * MiB + 4321), testFile(dir, 'interview.m4a', 5 * MiB)];
  await page.setInputFiles('#files', small.map((f) => f.path));
  await Promise.all(small.map((f) => finished(page, f.name)));
  await throttle(page, 4 * MiB);
  const big = [testFile(dir, 'concert-2160p.mp4', 48 * MiB), testFile(dir, 'drone-flight.mov', 32 * MiB)];
  await page.setInputFiles('#files', big.map((f) => f.path));
  await whenLoaded(page, big[1].name, 10 * MiB, 'button.pause');
  await whenLoaded(page, big[0].name, 22 * MiB);
  const running = await page.locator('#uploads .file', { hasText: big[0].name }).locator('.stats').innerText();
  assert.match(running, /^\d+% · [\d.]+ MiB of 48\.0 MiB\s+[\d.]+ [KM]iB\/s\s+ETA \d+:\d\d/, 'progress, rate, ETA');
  const shot = path.join(dir, 'demo.png');
  await page.screenshot({ path: shot, fullPage: true });
  const png = readFileSync(shot);
  assert.equal(png.subarray(1, 4).toString(), 'PNG');
  assert.ok(png.length > 20_000, 'a page with something on it');
  // docs/demo.png is committed: rewritten only when asked.
  if (process.env.UPLINE_UPDATE_SCREENSHOT) copyFileSync(shot, path.join(docs, 'demo.png'));
  assert.ok(node.base);
});
