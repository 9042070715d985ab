// Development OpenID Connect provider for authgate, built on oidc-provider 9.
// It mimics the URL layout of an Okta custom authorization server
// (https://<host>/oauth2/default/...). FOR DEVELOPMENT AND TESTS ONLY: demo
// passwords, in-memory storage, loopback http redirect URIs and unguarded
// back-channel logout delivery to loopback addresses.
//
// stdout carries exactly one line, {"issuer":"...","port":N}, once listening.
// Everything else (oidc-provider notices included) goes to stderr.
import crypto from 'node:crypto';
import http from 'node:http';
import Provider from 'oidc-provider';

console.log = console.info = console.error; // keep stdout for the JSON line

const env = process.env;
const HOST = env.HOST || '127.0.0.1';
const PORT = Number(env.PORT || 0);
const PREFIX = '/oauth2/default'; // Okta's "default" custom authorization server
const log = (...args) => console.error('[dev-provider]', ...args);

// ---------------------------------------------------------------- clients --
const clients = env.CLIENTS ? JSON.parse(env.CLIENTS) : [{
  client_id: 'authgate-demo',
  client_secret: 'authgate-demo-secret',
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: [
    'http://localhost:5173/callback',
    'http://127.0.0.1:5173/callback',
    'http://localhost:8080/authorization-code/callback',
    'http://127.0.0.1:8080/authorization-code/callback',
  ],
  post_logout_redirect_uris: ['http://localhost:5173/', 'http://127.0.0.1:5173/'],
  id_token_signed_response_alg: 'RS256',
}];

// ------------------------------------------------------------------ users --
// Each user: { sub, username? (defaults to email), password, ...claims }.
const users = env.USERS ? JSON.parse(env.USERS) : [
  {
    sub: '00u1alice', username: 'alice@example.com', password: 'alice-password',
    email: 'alice@example.com', email_verified: true, name: 'Alice Anderson',
    given_name: 'Alice', family_name: 'Anderson', preferred_username: 'alice@example.com',
    groups: ['Everyone', 'admins'],
  },
  {
    sub: '00u2bob', username: 'bob@example.com', password: 'bob-password',
    email: 'bob@example.com', email_verified: true, name: 'Bob Brown',
    given_name: 'Bob', family_name: 'Brown', preferred_username: 'bob@example.com',
    groups: ['Everyone'],
  },
];
const userBySub = new Map(users.map((u) => [u.sub, u]));
const userByLogin = (login) => users.find((u) => [u.username, u.email]
  .some((v) => typeof v === 'string' && v.toLowerCase() === login.trim().toLowerCase()));

// ---------------------------------------------------------- HTML helpers --
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem}
label,input,button{display:block;width:100%;margin:.3rem 0;font-size:1rem}
input,button{padding:.5rem;box-sizing:border-box}.error{color:#b00020}form{margin:1rem 0}</style>
</head><body><main><h1>${esc(title)}</h1>${body}</main></body></html>`;

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

// ------------------------------------------------------------ signing key --
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = privateKey.export({ format: 'jwk' });
// kid = RFC 7638 JWK thumbprint of the public key.
jwk.kid = crypto.createHash('sha256')
  .update(JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n })).digest('base64url');
jwk.alg = 'RS256';
jwk.use = 'sig';

const configuration = {
  clients,
  jwks: { keys: [jwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  // Okta-style routes (mounted under /oauth2/default by the server below).
  routes: {
    authorization: '/v1/authorize',
    token: '/v1/token',
    userinfo: '/v1/userinfo',
    jwks: '/v1/keys',
    revocation: '/v1/revoke',
    end_session: '/v1/logout',
    introspection: '/v1/introspect',
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    // groups rides on the profile scope (like an Okta groups claim on "any scope").
    profile: ['name', 'given_name', 'family_name', 'preferred_username', 'groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  conformIdTokenClaims: true, // "thin" ID tokens; profile claims come from userinfo
  pkce: { required: () => true }, // every client, S256 only (oidc-provider 9 default)
  // Refresh token only with the refresh_token grant AND offline_access granted.
  issueRefreshToken: async (ctx, client, source) => client.grantTypeAllowed('refresh_token')
    && source.scopes.has('offline_access'),
  rotateRefreshToken: () => true, // like Okta: every refresh returns a new RT
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 86400,
    Interaction: 3600,
    Session: 86400,
    Grant: 86400,
  },
  features: {
    devInteractions: { enabled: false }, // we serve our own pages below
    pushedAuthorizationRequests: { enabled: false }, // Okta's layout has no PAR route
    revocation: { enabled: true },
    introspection: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
  },
  // oidc-provider 9 blocks outgoing requests (e.g. back-channel logout POSTs)
  // to loopback/private addresses via an SSRF-guarding undici dispatcher.
  // DEVELOPMENT ONLY: drop that dispatcher so logout tokens reach 127.0.0.1.
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
  interactions: { url: (ctx, interaction) => `${PREFIX}/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const user = userBySub.get(sub);
    if (!user) return undefined;
    const { password, username, ...claims } = user;
    // oidc-provider filters these by granted scope/claims and token type.
    return { accountId: sub, claims: async () => claims };
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Something went wrong', Object.entries(out)
      .map(([k, v]) => `<p><strong>${esc(k)}</strong>: <span id="${esc(k)}">${esc(v)}</span></p>`).join(''));
  },
};

// RP-initiated logout confirmation. `form` is oidc-provider's form (hidden
// xsrf input, POST to /v1/logout/confirm); we put the buttons inside it.
// With a valid id_token_hint a browser auto-submits "Sign Out" (Okta skips the
// prompt then); non-browser clients post the form themselves.
async function logoutSource(ctx, form) {
  const autoSubmit = ctx.oidc.entities.IdTokenHint
    ? '<script>document.getElementById("sign-out").click()</script>' : '';
  ctx.body = page('Sign out', form.replace('</form>',
    '<button type="submit" name="logout" value="yes" id="sign-out">Sign Out</button>'
    + '<button type="submit" id="stay-signed-in">Stay signed in</button></form>' + autoSubmit));
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<p id="signed-out">You have been signed out.</p>');
}

// ------------------------------------------------------- interaction pages --
function loginPage(uid, client, username = '', error = '') {
  return page('Sign In', `<p>to continue to ${esc(client?.clientName || client?.clientId)}</p>
${error ? `<p class="error" role="alert" id="error">${esc(error)}</p>` : ''}
<form method="post" action="${PREFIX}/interaction/${esc(uid)}/login">
<label for="username">Username</label>
<input id="username" name="username" type="text" autocomplete="username" required value="${esc(username)}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" id="sign-in">Sign In</button>
</form>`);
}

function consentPage(uid, client, details) {
  const scopes = details.params.scope?.split(' ').filter(Boolean) ?? [];
  return page('Allow access?', `<p><strong id="client">${esc(client?.clientName || client?.clientId)}</strong>
 is requesting access to:</p>
<ul id="scopes">${scopes.map((s) => `<li>${esc(s)}</li>`).join('')}</ul>
<form method="post" action="${PREFIX}/interaction/${esc(uid)}/confirm">
<button type="submit" id="allow">Allow</button></form>
<form method="post" action="${PREFIX}/interaction/${esc(uid)}/abort">
<button type="submit" id="deny">Deny</button></form>`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 64 * 1024) throw new Error('form body too large');
  }
  return new URLSearchParams(body);
}

// GET  /oauth2/default/interaction/:uid          -> login or consent page
// POST /oauth2/default/interaction/:uid/login    -> username + password
// POST /oauth2/default/interaction/:uid/confirm  -> consent granted
// POST /oauth2/default/interaction/:uid/abort    -> access_denied
// (Sub-paths of the interaction URL, since the interaction cookie is scoped to it.)
async function handleInteraction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, page('Error', '<p>Interaction mismatch.</p>'));
  const client = await provider.Client.find(details.params.client_id);
  const prompt = details.prompt.name;

  if (req.method === 'GET' && !action) {
    return send(res, 200, prompt === 'login'
      ? loginPage(uid, client, details.params.login_hint)
      : consentPage(uid, client, details));
  }
  if (req.method !== 'POST') return send(res, 405, page('Error', '<p>Method not allowed.</p>'));

  if (action === 'login' && prompt === 'login') {
    const form = await readForm(req);
    const username = form.get('username') ?? '';
    const user = userByLogin(username);
    if (!user || user.password !== form.get('password')) {
      return send(res, 401, loginPage(uid, client, username, 'Invalid username or password.'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: user.sub } },
      { mergeWithLastSubmission: false });
  }

  if (action === 'confirm' && prompt === 'consent') {
    const { prompt: { details: missing }, params, session } = details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [resource, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(resource, scopes.join(' '));
    }
    const grantId = await grant.save();
    const consent = details.grantId ? {} : { grantId };
    return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
  }

  if (action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  return send(res, 400, page('Error', '<p>Unexpected request for this interaction.</p>'));
}

// oidc-provider (per OIDC Core section 11) silently drops offline_access from
// an authorization request unless prompt includes "consent"; Okta does not
// require that. So add prompt=consent to such requests (not to prompt=none):
// the consent page is then shown every time offline_access is requested, and
// the grant then carries offline_access, so a refresh token is issued.
function promptConsentForOffline(url) {
  const u = new URL(url, 'http://localhost');
  const scopes = u.searchParams.get('scope')?.split(' ') ?? [];
  const prompts = u.searchParams.get('prompt')?.split(' ').filter(Boolean) ?? [];
  if (!scopes.includes('offline_access') || u.searchParams.getAll('prompt').length > 1
    || prompts.includes('consent') || prompts.includes('none')) return url;
  u.searchParams.set('prompt', [...prompts, 'consent'].join(' '));
  return `${u.pathname}${u.search}`;
}

// ------------------------------------------------------------------ server --
let provider;
let callback;
const interactionPath = new RegExp(`^${PREFIX}/interaction/([\\w-]+)(?:/(login|confirm|abort))?$`);

const server = http.createServer(async (req, res) => {
  try {
    if (!provider) return send(res, 503, page('Starting', '<p>Starting up.</p>'));
    const { pathname } = new URL(req.url, 'http://localhost');
    const m = interactionPath.exec(pathname);
    if (m) return await handleInteraction(provider, req, res, m[1], m[2]);
    if (pathname === PREFIX || pathname.startsWith(`${PREFIX}/`)) {
      const rest = req.url.slice(PREFIX.length);
      req.url = rest.startsWith('/') ? rest : `/${rest}`;
      if (req.method === 'GET' && pathname === `${PREFIX}/v1/authorize`) req.url = promptConsentForOffline(req.url);
      // oidc-provider derives its mount path from originalUrl minus url, so
      // originalUrl must be exactly PREFIX + url.
      req.originalUrl = `${PREFIX}${req.url}`;
      return callback(req, res);
    }
    return send(res, 404, page('Not found', `<p>Try ${PREFIX}/.well-known/openid-configuration</p>`));
  } catch (err) {
    log('request failed:', err.expose ? `${err.error}: ${err.error_description}` : err);
    if (!res.headersSent) {
      const status = err.statusCode || 500;
      send(res, status, page('Error', `<p id="error">${esc(err.error_description || err.message)}</p>`));
    } else res.end();
  }
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  const urlHost = HOST.includes(':') ? `[${HOST}]` : HOST;
  const base = env.PUBLIC_URL
    ? env.PUBLIC_URL.replace(/\/+$/, '')
    : `http://${['0.0.0.0', '[::]'].includes(urlHost) ? 'localhost' : urlHost}:${port}`;
  const issuer = `${base}${PREFIX}`;

  provider = new Provider(issuer, configuration);
  for (const event of ['server_error', 'backchannel.error', 'grant.error', 'authorization.error']) {
    provider.on(event, (ctx, err) => log(event, err?.message ?? err));
  }
  provider.on('backchannel.success', (ctx, client, accountId, sid) => log('backchannel logout delivered to', client.clientId, accountId, sid));
  callback = provider.callback();

  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});

// ---------------------------------------------------------------- shutdown --
function shutdown(signal) {
  log(`received ${signal}, shutting down`);
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

if (env.EXIT_ON_STDIN_CLOSE === '1') {
  process.stdin.on('end', () => shutdown('stdin close'));
  process.stdin.on('close', () => shutdown('stdin close'));
  process.stdin.resume();
}
