// The demo page's script: several files at once, each with a progress bar,
// its rate and ETA, pause/resume, and download links once finished. Tokens
// come from the node's dev-only endpoint, which exists only while the demo
// is on; a real page gets them from its own backend.

import { Uploader, pendingUploads } from '/upline.js';

const bucket = document.querySelector('meta[name="upline-bucket"]').content;
const $ = (id) => document.getElementById(id);

/** Signed download links, by object, from the token endpoint. */
const downloads = new Map();

const uploader = new Uploader({
  lbs: '/lbs',
  getToken: async (bucket, object) => {
    const res = await fetch('/demo/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ bucket, object }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.errMsg || `token endpoint answered ${res.status}`);
    downloads.set(object, body.download);
    return body.token;
  },
});

const md5 = $('md5-status');
if (uploader.createMD5) {
  md5.textContent = 'Whole-file MD5: on (hash-wasm) — sent as Content-MD5 with the last chunk, checked by the node before it publishes.';
} else {
  md5.classList.add('off');
  md5.textContent =
    'Whole-file MD5: off — the MD5 library is not installed on this node (run npm ci --prefix web); files upload without a Content-MD5 claim.';
}

const input = $('files');
input.addEventListener('change', () => {
  start([...input.files]);
  input.value = ''; // so picking the same file again fires "change" again
});
const drop = $('drop');
drop.addEventListener('dragover', (e) => {
  e.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  start([...e.dataTransfer.files]);
});

showPending();

function start(files) {
  for (const file of files) {
    const rows = [...document.querySelectorAll('#uploads .file')].filter((r) => r.dataset.name === file.name);
    // One upload per object at a time: a second would race the first.
    if (rows.some((r) => r.dataset.state === 'running' || r.dataset.state === 'paused')) continue;
    rows.forEach((r) => r.remove()); // a failed or cancelled try, picked again
    const row = fileRow(file);
    const handle = uploader.upload(file, {
      bucket,
      object: file.name,
      onProgress: (p) => showProgress(row, p),
      onEvent: (e) => {
        if (e.type === 'retry') row.querySelector('.note').textContent = `retrying (${e.reason})`;
        if (e.type === 'resuming') row.dataset.resumedFrom = e.offset;
      },
    });
    const button = row.querySelector('.pause');
    button.addEventListener('click', () => {
      if (handle.state === 'paused') handle.resume();
      else handle.pause();
      row.dataset.state = handle.state;
      button.textContent = handle.state === 'paused' ? 'Resume' : 'Pause';
      if (handle.state === 'paused') row.querySelector('.rate').textContent = 'paused';
      row.querySelector('.eta').textContent = '';
    });
    row.querySelector('.cancel').addEventListener('click', () => handle.abort());
    handle.promise.then(
      (done) => {
        row.remove();
        emptyNote('uploads');
        finished(file, done);
        showPending();
      },
      (e) => {
        row.dataset.state = handle.state;
        row.querySelector('.actions').remove();
        row.querySelector('.error').textContent = e.code === 'aborted' ? 'Cancelled.' : e.message;
        showPending();
      },
    );
  }
  showPending();
}

function fileRow(file) {
  const list = $('uploads');
  list.querySelector('.empty')?.remove();
  const row = document.createElement('li');
  row.className = 'file';
  row.dataset.name = file.name;
  row.dataset.state = 'running';
  row.innerHTML = `
    <div class="top"><span class="name"></span><span class="size"></span>
      <span class="actions"><button class="pause">Pause</button> <button class="cancel">Cancel</button></span></div>
    <div class="bar"><div></div></div>
    <div class="stats"><span class="pct">0%</span><span class="rate"></span><span class="eta"></span><span class="note"></span></div>
    <div class="error"></div>`;
  row.querySelector('.name').textContent = file.name;
  row.querySelector('.size').textContent = bytes(file.size);
  list.append(row);
  return row;
}

function showProgress(row, p) {
  const pct = p.total ? (100 * p.loaded) / p.total : 100;
  row.dataset.loaded = p.loaded;
  row.querySelector('.bar > div').style.width = `${pct}%`;
  row.querySelector('.pct').textContent = `${pct.toFixed(0)}% · ${bytes(p.loaded)} of ${bytes(p.total)}`;
  row.querySelector('.rate').textContent = p.rate > 0 ? `${bytes(p.rate)}/s` : '';
  row.querySelector('.eta').textContent = Number.isFinite(p.eta) && p.rate > 0 ? `ETA ${duration(p.eta)}` : '';
  row.querySelector('.note').textContent = p.resumedFrom > 0 ? `resumed from ${bytes(p.resumedFrom)}` : '';
}

function finished(file, done) {
  const list = $('done');
  list.querySelector('.empty')?.remove();
  const li = document.createElement('li');
  li.dataset.name = file.name;
  const a = document.createElement('a');
  a.href = downloads.get(done.object) ?? '#';
  a.textContent = file.name;
  a.download = file.name;
  const meta = document.createElement('span');
  meta.className = 'meta';
  meta.textContent = [bytes(done.size), done.md5 ? `md5 ${done.md5}` : 'no md5', done.resumedFrom ? `resumed from ${bytes(done.resumedFrom)}` : '']
    .filter(Boolean)
    .join(' · ');
  li.append(a, meta);
  list.prepend(li);
}

function showPending() {
  const running = new Set([...document.querySelectorAll('#uploads .file')].map((r) => r.dataset.name));
  const pending = pendingUploads().filter((p) => p.bucket === bucket && !running.has(p.name));
  const list = $('pending');
  list.replaceChildren(
    ...pending.map((p) => {
      const li = document.createElement('li');
      li.dataset.name = p.name;
      li.textContent = `${p.name}: ${bytes(p.offset)} of ${bytes(p.size)} — pick it again to continue`;
      return li;
    }),
  );
  $('pending-section').hidden = pending.length === 0;
}

function emptyNote(id) {
  const list = $(id);
  if (!list.children.length) list.innerHTML = '<li class="empty">Nothing yet.</li>';
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function duration(s) {
  s = Math.max(0, Math.round(s));
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}h ${m % 60}m` : `${m}:${String(s % 60).padStart(2, '0')}`;
}
