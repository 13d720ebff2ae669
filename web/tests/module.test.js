// upline.js on its own, in real headless Chromium against the real node:
// the paths a plain upload does not take (LBS failover, 5xx, a 400 offset
// mismatch, 403, a forgotten context), forced with Playwright's routing.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { UplineNode, browser, closedPort, tempDir, testFile } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A node, a page of its origin, and `file` picked into a test input. */
async function setup(t, size) {
  const dir = tempDir(t);
  const node = await UplineNode.start(t, { dataDir: path.join(dir, 'data') });
  const page = await (await browser(t)).newPage();
  await page.goto(`${node.base}/demo`);
  const file = testFile(dir, `m-${size}.bin`, size);
  await page.evaluate(() => {
    const input = document.createElement('input');
    input.type = 'file';
    input.id = 'under-test';
    document.body.append(input);
  });
  await page.setInputFiles('#under-test', file.path);
  return { node, page, file };
}

/**
 * Uploads the picked file with upline.js in the page; `options` are the
 * Uploader's (functions as source text). Resolves with the outcome and the
 * events seen.
 */
function upload(page, node, file, options = {}) {
  return page.evaluate(
    async ({ base, object, options }) => {
      const { Uploader } = await import('/upline.js');
      const events = [];
      const uploader = new Uploader({
        lbs: `${base}/lbs`,
        getToken: async (bucket, obj) => {
          const res = await fetch('/demo/token', {
            method: 'POST',
            headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ bucket, object: options.tokenFor ?? obj }),
          });
          return (await res.json()).token;
        },
        retry: { baseDelayMs: 20, maxDelayMs: 200 },
        ...options.uploader,
      });
      const handle = uploader.upload(document.getElementById('under-test').files[0], {
        bucket: 'uploads',
        object,
        onEvent: (e) => events.push(e),
      });
      try {
        return { ok: await handle.promise, events };
      } catch (e) {
        return { error: { code: e.code, status: e.status, message: e.message }, events };
      }
    },
    { base: node.base, object: file.name, options },
  );
}

test('LBS: failover in LBS order, then the remembered LBS address', async (t) => {
  const { node, page, file } = await setup(t, 700 * KiB);
  const dead = [`http://127.0.0.1:${await closedPort()}`, `http://127.0.0.1:${await closedPort()}`];
  const remembered = `http://localhost:${node.port}/lbs`;
  let first = true;
  await page.route('**/lbs?*', (route) => {
    // The first answer lists two dead nodes and names another LBS address.
    if (first && route.request().url().startsWith(`${node.base}/lbs`)) {
      first = false;
      return route.fulfill({ json: { lbs: remembered, upload: dead } });
    }
    return route.continue();
  });
  const asked = [];
  page.on('request', (r) => asked.push(r.url()));

  const out = await upload(page, node, file);
  assert.ok(out.ok, JSON.stringify(out.error));
  assert.deepEqual(await node.stored(file.name), file.bytes);
  const firstDead = asked.findIndex((u) => u.startsWith(dead[0]));
  const secondDead = asked.findIndex((u) => u.startsWith(dead[1]));
  const again = asked.findIndex((u) => u.startsWith(`${remembered}?`));
  assert.ok(firstDead >= 0 && firstDead < secondDead, 'nodes are tried in LBS order');
  assert.ok(secondDead < again, 'after every node failed, the LBS is asked again, at the address it gave');
  assert.equal(out.events.filter((e) => e.type === 'retry').length, 2);
});

test('5xx is retried; a 400 offset mismatch re-syncs from the query endpoint', async (t) => {
  const { node, page, file } = await setup(t, MiB + 1000);
  const chunk = 256 * KiB;
  let posts = 0;
  let jumped = 0;
  await page.route(/offset=/, async (route) => {
    posts += 1;
    const req = route.request();
    if (posts === 2) return route.fulfill({ status: 503, json: { errMsg: 'try later' } });
    if (posts === 4) {
      // Behind the page's back, the node gets this chunk and the next
      // 10 bytes: the page's request is now at a stale offset (400).
      const url = new URL(req.url());
      const at = Number(url.searchParams.get('offset'));
      const headers = { 'x-nos-token': req.headers()['x-nos-token'] };
      assert.equal((await fetch(url, { method: 'POST', headers, body: req.postDataBuffer() })).status, 200);
      url.searchParams.set('offset', String(at + chunk));
      assert.equal((await fetch(url, { method: 'POST', headers, body: file.bytes.subarray(at + chunk, at + chunk + 10) })).status, 200);
      jumped = at + chunk + 10;
    }
    return route.continue();
  });
  const statuses = [];
  const queries = [];
  page.on('response', (r) => r.url().includes('offset=') && statuses.push(r.status()));
  page.on('request', (r) => r.url().includes('uploadContext') && queries.push(r.url()));

  const out = await upload(page, node, file, { uploader: { chunkSize: chunk } });
  assert.ok(out.ok, JSON.stringify(out.error));
  assert.deepEqual(await node.stored(file.name), file.bytes);
  assert.equal(out.ok.md5, file.md5, 'the MD5 claim covers the bytes sent behind its back');
  assert.deepEqual(statuses.slice(0, 5), [200, 503, 200, 400, 200]);
  assert.equal(queries.length, 1, 'the 400 asked the query endpoint');
  assert.ok(out.events.some((e) => e.type === 'warning' && e.message.includes(`offset ${jumped}`)));
});

test('a chunk refused as busy (another node holds the session) is sent again', async (t) => {
  const { node, page, file } = await setup(t, 600 * KiB);
  let busy = 0;
  await page.route(/offset=/, async (route) => {
    // The answer a node gives while another node holds the session's lease.
    if (route.request().url().includes('context=') && busy < 2) {
      busy += 1;
      return route.fulfill({ status: 400, json: { errMsg: 'another node is writing this session; retry' } });
    }
    return route.continue();
  });
  const out = await upload(page, node, file, { uploader: { chunkSize: 256 * KiB } });
  assert.ok(out.ok, JSON.stringify(out.error));
  assert.equal(busy, 2);
  assert.deepEqual(await node.stored(file.name), file.bytes);
  assert.equal(out.events.filter((e) => e.type === 'retry' && /another node/.test(e.reason)).length, 2);
});

test('403 stops at once with a clear error', async (t) => {
  const { node, page, file } = await setup(t, 100 * KiB);
  let posts = 0;
  page.on('request', (r) => r.method() === 'POST' && r.url().includes('offset=') && posts++);
  const out = await upload(page, node, file, { tokenFor: 'another-object' });
  assert.equal(out.error.code, 'token');
  assert.equal(out.error.status, 403);
  assert.match(out.error.message, /refused the upload token \(403\): .*object/);
  assert.equal(posts, 1, 'no retry');
});

test('a resume record the node does not know is cleared and the upload starts over', async (t) => {
  const { node, page, file } = await setup(t, 300 * KiB);
  await page.evaluate((name) => {
    const f = document.getElementById('under-test').files[0];
    const key = `upline:v1:${JSON.stringify([f.name, f.size, f.lastModified, 'uploads', name])}`;
    localStorage.setItem(key, JSON.stringify({ context: 'AAAAAAAAAAAAAAAAAAAAAAAAAA', offset: 65536 }));
  }, file.name);
  const out = await upload(page, node, file);
  assert.ok(out.ok, JSON.stringify(out.error));
  assert.equal(out.ok.resumedFrom, 0);
  assert.ok(out.events.some((e) => e.type === 'warning' && /no longer knows/.test(e.message)));
  assert.deepEqual(await node.stored(file.name), file.bytes);
  assert.equal(await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('upline:')).length), 0);
  assert.equal(await node.bytesReceived(), file.size);
});
