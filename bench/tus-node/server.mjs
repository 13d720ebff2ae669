// @tus/server with @tus/file-store on PORT, storing in DIR: the peer that
// bench/run.py measures upline against.
import http from 'node:http';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';

const port = Number(process.env.PORT ?? 1080);
const dir = process.env.DIR ?? './files';
const tus = new Server({ path: '/files', datastore: new FileStore({ directory: dir }) });
http.createServer((req, res) => tus.handle(req, res)).listen(port, '127.0.0.1');
