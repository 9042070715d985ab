// A tiny static server for the built SPA (dist/), with no dependencies.
//
//   AUTHGATE_URL  authgate's URL, served to the app as /config.json (default http://127.0.0.1:8080)
//   COOKIE_MODE=1 the app keeps its session in authgate's refresh cookie (config.json cookieMode)
//   BACKEND_URL   the demo backend's URL (examples/backend), served as config.json backendUrl; the
//                 app calls GET {BACKEND_URL}/api/hello with the user's token (default: none)
//   HOST, PORT    where to listen (default 127.0.0.1, 0 = any free port)
//   EXIT_ON_STDIN_CLOSE=1  exit when stdin closes (for test harnesses)
//
// Once listening it prints exactly one line on stdout, {"url":"http://HOST:PORT"}; the request
// log goes to stderr. Paths without an extension (/callback, ...) get index.html. SIGTERM and
// SIGINT exit with status 0.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const env = process.env;
const HOST = env.HOST || '127.0.0.1';
const PORT = Number(env.PORT || 0);
const AUTHGATE_URL = env.AUTHGATE_URL || 'http://127.0.0.1:8080';
// Cookie mode: authgate keeps the refresh handle in an HttpOnly cookie (its `refresh_cookie`).
const COOKIE_MODE = env.COOKIE_MODE === '1';
// The app's own backend (optional): the page calls it with the token and shows its answer.
const BACKEND_URL = env.BACKEND_URL || '';
if (BACKEND_URL && !URL.canParse(BACKEND_URL)) {
  console.error(`serve.mjs: BACKEND_URL is not a URL: ${BACKEND_URL}`);
  process.exit(2);
}
const DIST = path.join(path.dirname(fileURLToPath(import.meta.url)), 'dist');
const INDEX = path.join(DIST, 'index.html');

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.woff2': 'font/woff2',
};

const headers = {
  'x-content-type-options': 'nosniff',
  // Keep the callback URL (?code=&state=) out of Referer headers.
  'referrer-policy': 'no-referrer',
};

// The page may run only its own scripts and talk only to itself, authgate and its backend.
const connectTo = [...new Set([AUTHGATE_URL, BACKEND_URL].filter(Boolean).map((url) => new URL(url).origin))];
const csp = [
  "default-src 'self'",
  `connect-src 'self' ${connectTo.join(' ')}`,
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "object-src 'none'",
].join('; ');

async function fileAt(pathname) {
  const file = path.join(DIST, pathname);
  if (file !== DIST && !file.startsWith(DIST + path.sep)) return undefined; // no ../ escapes
  try {
    const info = await stat(file);
    if (info.isFile()) return file;
    if (info.isDirectory()) return await fileAt(path.join(pathname, 'index.html'));
  } catch {
    // not found
  }
  return undefined;
}

async function handle(req, res) {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { ...headers, allow: 'GET, HEAD' });
    return res.end();
  }
  let pathname;
  try {
    pathname = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
  } catch {
    res.writeHead(400, headers);
    return res.end();
  }

  if (pathname === '/config.json') {
    const body = JSON.stringify({
      authgateUrl: AUTHGATE_URL,
      cookieMode: COOKIE_MODE,
      ...(BACKEND_URL ? { backendUrl: BACKEND_URL } : {}),
    });
    res.writeHead(200, { ...headers, 'content-type': 'application/json', 'cache-control': 'no-store' });
    return res.end(req.method === 'HEAD' ? undefined : body);
  }

  let file = pathname.includes('\0') ? undefined : await fileAt(pathname);
  if (!file && path.extname(pathname) === '') file = INDEX; // client-side routes, e.g. /callback
  if (!file) {
    res.writeHead(404, { ...headers, 'content-type': 'text/plain; charset=utf-8' });
    return res.end('not found\n');
  }

  const isIndex = file === INDEX;
  res.writeHead(200, {
    ...headers,
    'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
    // Vite's assets/ have content hashes in their names; everything else is revalidated.
    'cache-control': isIndex ? 'no-store'
      : pathname.startsWith('/assets/') ? 'public, max-age=31536000, immutable' : 'no-cache',
    ...(isIndex ? { 'content-security-policy': csp } : {}),
  });
  if (req.method === 'HEAD') return res.end();
  createReadStream(file).on('error', () => res.destroy()).pipe(res);
}

const server = http.createServer((req, res) => {
  handle(req, res)
    .catch((err) => {
      console.error('serve.mjs:', err);
      if (!res.headersSent) res.writeHead(500, headers);
      res.end();
    })
    // Log the path only: the query of /callback carries the authorization code.
    .finally(() => console.error(`${req.method} ${req.url.split('?')[0]} ${res.statusCode}`));
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  const host = HOST.includes(':') ? `[${HOST}]` : HOST;
  process.stdout.write(`${JSON.stringify({ url: `http://${host}:${port}` })}\n`);
});

function shutdown() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

if (env.EXIT_ON_STDIN_CLOSE === '1') {
  process.stdin.on('end', shutdown);
  process.stdin.on('close', shutdown);
  process.stdin.resume();
}
