// The browser end-to-end tests (part of ../scripts/test): runs browser.mjs against a local stack —
// the dev provider (../dev-provider), an authgate binary, the demo backend (../examples/backend,
// Python: it verifies the token against authgate's JWKS and asks ValidateToken) and the example
// SPA (../examples/spa, already built) served three times: from an origin on authgate's CORS
// allow-list, from one that is not, and in cookie mode. The SPAs call the backend with the token.
//
//   AUTHGATE_BIN=target/debug/authgate node e2e/run.mjs
//
// Needs `npm ci` in ../dev-provider and ../e2e, `npm ci && npm run build` in ../examples/spa, and
// the backend's Python packages (grpcio, grpcio-tools, PyJWT, cryptography:
// ../examples/clients/python/requirements.txt); the backend's gRPC stubs are generated from
// ../proto into a temporary directory at start. PYTHON defaults to python3.
// AUTHGATE_BIN defaults to ../target/debug/authgate. SCENARIOS defaults to spa,simple,cors,csrf,cookie.
// OUTPUT_DIR defaults to ./output; screenshots and the logs of the provider, authgate, the backend
// and the SPA servers are written there. All processes are stopped at the end.
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const env = process.env;
const OUTPUT_DIR = path.resolve(env.OUTPUT_DIR || path.join(here, 'output'));
const AUTHGATE_BIN = path.resolve(env.AUTHGATE_BIN || path.join(here, '../target/debug/authgate'));
const PYTHON = env.PYTHON || 'python3';
const REPO = path.resolve(here, '..');
const CLIENT = { id: 'authgate-e2e', secret: 'authgate-e2e-secret' };
mkdirSync(OUTPUT_DIR, { recursive: true });

const children = [];
const log = (...args) => console.log('[e2e]', ...args);

/** Starts a process whose stdout's first line is JSON; resolves with it. stderr goes to a log. */
function start(name, command, args, extraEnv, { json = true } = {}) {
  const logFile = path.join(OUTPUT_DIR, `${name}.log`);
  const child = spawn(command, args, {
    env: { ...env, ...extraEnv, EXIT_ON_STDIN_CLOSE: '1' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  children.push(child);
  const out = createWriteStream(logFile);
  child.stderr.pipe(out);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => reject(new Error(`${name} exited early (${signal ?? code}); see ${logFile}`)));
    if (!json) {
      child.stdout.pipe(out);
      return resolve(child);
    }
    const lines = readline.createInterface({ input: child.stdout });
    lines.once('line', (line) => {
      lines.on('line', (more) => out.write(`${more}\n`));
      try {
        resolve(JSON.parse(line));
      } catch {
        reject(new Error(`${name} printed ${line} instead of a JSON line`));
      }
    });
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    }).on('error', reject);
  });
}

async function waitReady(url, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(url);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${url} was not ready within ${timeoutMs} ms`);
    await new Promise((resolve) => { setTimeout(resolve, 200); });
  }
}

/**
 * Generates the backend's Python gRPC stubs from proto/ into `dir` with grpcio-tools. Fails with
 * what to install when the backend's packages are missing.
 */
function generatePythonStubs(dir) {
  const probe = spawnSync(PYTHON, ['-c', 'import grpc, grpc_tools, jwt, cryptography'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    throw new Error(`the demo backend needs ${PYTHON} with grpcio, grpcio-tools, PyJWT and cryptography `
      + `(${probe.error?.message ?? probe.stderr.trim().split('\n').at(-1)}); install them with `
      + `${PYTHON} -m pip install -r examples/clients/python/requirements.txt`);
  }
  mkdirSync(dir, { recursive: true });
  const protoc = spawnSync(PYTHON, ['-m', 'grpc_tools.protoc', '-I', path.join(REPO, 'proto'),
    `--python_out=${dir}`, `--grpc_python_out=${dir}`, path.join(REPO, 'proto/authgate/v1/auth.proto')],
  { encoding: 'utf8' });
  if (protoc.error || protoc.status !== 0) {
    throw new Error(`${PYTHON} -m grpc_tools.protoc failed: ${protoc.error?.message ?? protoc.stderr.trim()}`);
  }
}

function stopAll() {
  for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
}
process.on('SIGINT', () => { stopAll(); process.exit(130); });

let exitCode = 1;
const tmp = path.join(os.tmpdir(), `authgate-e2e-${process.pid}`);
try {
  mkdirSync(tmp, { recursive: true });
  const stubs = path.join(tmp, 'python');
  generatePythonStubs(stubs); // first: a missing Python package stops the run before anything starts
  const authgatePort = await freePort();
  const authgateUrl = `http://127.0.0.1:${authgatePort}`;
  // The backend's port is chosen up front: the SPAs are told its URL, and it is told their origins.
  const backendUrl = `http://127.0.0.1:${await freePort()}`;
  const serve = path.join(here, '../examples/spa/serve.mjs');
  const spaEnv = { AUTHGATE_URL: authgateUrl, BACKEND_URL: backendUrl, PORT: '0' };
  const spa = await start('spa-allowed', 'node', [serve], spaEnv);
  const blocked = await start('spa-blocked', 'node', [serve], spaEnv);
  const cookieSpa = await start('spa-cookie', 'node', [serve], { ...spaEnv, COOKIE_MODE: '1' });
  log(`SPA (allowed origin) ${spa.url}; SPA (blocked origin) ${blocked.url}; SPA (cookie mode) ${cookieSpa.url}`);

  // The demo backend: allows the allowed and the cookie-mode SPA (CORS), checks tokens at authgate.
  const backend = await start('backend', PYTHON, [path.join(REPO, 'examples/backend/backend.py')], {
    PYTHONPATH: [stubs, env.PYTHONPATH].filter(Boolean).join(path.delimiter),
    AUTHGATE_ISSUER: authgateUrl,
    PORT: new URL(backendUrl).port,
    ALLOWED_ORIGINS: [spa.url, cookieSpa.url].join(','),
    PYTHONUNBUFFERED: '1',
  });
  if (backend.url !== backendUrl) throw new Error(`the backend listens on ${backend.url}, expected ${backendUrl}`);
  log(`demo backend ${backend.url}`);

  // The provider on another site than the SPAs (localhost, they are on 127.0.0.1), as in real
  // deployments: silent renewal must work as a top-level redirect, without third-party cookies.
  const providerPort = await freePort();
  const { issuer } = await start('provider', 'node', [path.join(here, '../dev-provider/provider.mjs')], {
    PORT: String(providerPort),
    PUBLIC_URL: `http://localhost:${providerPort}`,
    CLIENTS: JSON.stringify([{
      client_id: CLIENT.id,
      client_secret: CLIENT.secret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [`${spa.url}/callback`, `${blocked.url}/callback`, `${cookieSpa.url}/callback`,
        `${authgateUrl}/authorization-code/callback`],
      post_logout_redirect_uris: [`${spa.url}/`, `${cookieSpa.url}/`],
      id_token_signed_response_alg: 'RS256',
    }]),
  });
  log(`provider ${issuer}`);

  await start('authgate', AUTHGATE_BIN, [], {
    AUTHGATE_ISSUER_URL: issuer,
    AUTHGATE_CLIENT_ID: CLIENT.id,
    AUTHGATE_CLIENT_SECRET: CLIENT.secret,
    // The blocked SPA's callback is allowed as a redirect URI on purpose: only CORS stops it.
    AUTHGATE_REDIRECT_URIS: [`${spa.url}/callback`, `${blocked.url}/callback`, `${cookieSpa.url}/callback`,
      `${authgateUrl}/authorization-code/callback`].join(','),
    AUTHGATE_CORS_ALLOWED_ORIGINS: [spa.url, cookieSpa.url].join(','),
    AUTHGATE_POST_LOGOUT_REDIRECT_URIS: [`${spa.url}/`, `${cookieSpa.url}/`].join(','),
    AUTHGATE_REFRESH_COOKIE: 'true',
    AUTHGATE_LISTEN_ADDR: `127.0.0.1:${authgatePort}`,
    AUTHGATE_SQLITE_PATH: path.join(tmp, 'authgate.db'),
    RUST_LOG: env.RUST_LOG || 'info',
  }, { json: false });
  const started = Date.now();
  await waitReady(`${authgateUrl}/readyz/login`);
  log(`authgate ${authgateUrl} ready in ${Date.now() - started} ms (binary ${AUTHGATE_BIN})`);
  await waitReady(`${backendUrl}/healthz`);

  const browser = spawn('node', [path.join(here, 'browser.mjs')], {
    stdio: 'inherit',
    env: {
      ...env,
      SCENARIOS: env.SCENARIOS || 'spa,simple,cors,csrf,cookie',
      SPA_URL: spa.url,
      COOKIE_SPA_URL: cookieSpa.url,
      BLOCKED_SPA_URL: blocked.url,
      AUTHGATE_URL: authgateUrl,
      BACKEND_URL: backendUrl,
      LOGIN_USER: env.LOGIN_USER || 'alice@example.com',
      LOGIN_PASSWORD: env.LOGIN_PASSWORD || 'alice-password',
      EXPECT_EMAIL: env.EXPECT_EMAIL || 'alice@example.com',
      EXPECT_GROUPS: env.EXPECT_GROUPS || 'Everyone,admins',
      EXPECT_POST_LOGIN_URL: env.EXPECT_POST_LOGIN_URL || `${authgateUrl}/`,
      OUTPUT_DIR,
    },
  });
  exitCode = await new Promise((resolve) => { browser.on('exit', (code) => resolve(code ?? 1)); });
} catch (err) {
  console.error('[e2e]', err.message);
} finally {
  stopAll();
  rmSync(tmp, { recursive: true, force: true });
}
log(`logs in ${OUTPUT_DIR}; exit ${exitCode}`);
process.exit(exitCode);
