// Browser end-to-end scenarios for authgate, driven by playwright-core in Debian's chromium.
//
//   SCENARIOS=spa,simple,cors,csrf,cookie node browser.mjs      (default: all five)
//
// Scenarios and the environment they read:
//   spa     SPA_URL, BACKEND_URL, LOGIN_USER, LOGIN_PASSWORD, EXPECT_EMAIL, EXPECT_GROUPS
//           (comma-separated)
//           Sign in through the example SPA (examples/spa) served from an allowed origin. The
//           signed-in page shows the user, the token's claims (#claims, compared with the token the
//           SPA sent to the backend) with the expiry counting down (#expires-in), and the demo
//           backend's answer (#backend: the user, the groups, both checks passed); #call-backend
//           and #refresh ask the backend again (#refresh with a new token that expires later).
//           After "Sign out everywhere" the backend refuses the old token (401, REVOKED).
//           Screenshots spa-1-signed-out.png … spa-5-signed-out.png.
//   simple  AUTHGATE_URL, LOGIN_USER, LOGIN_PASSWORD, EXPECT_EMAIL, EXPECT_POST_LOGIN_URL
//           authgate's own server-side login (/authorization-code/login) with an httpOnly cookie.
//   cors    BLOCKED_SPA_URL
//           The same SPA served from an origin NOT on authgate's CORS allow-list must show an
//           error instead of going to the provider.
//   csrf    AUTHGATE_URL, LOGIN_USER, LOGIN_PASSWORD, EXPECT_POST_LOGIN_URL, BLOCKED_SPA_URL
//           Signed in with the session cookie, a page of a sibling origin (same site: the blocked
//           SPA's 127.0.0.1 port) and of a foreign site (the same server reached as
//           http://evil.test, mapped to 127.0.0.1) post a logout form to authgate: both fail and
//           the session lives on; authgate's own sign-out button then works.
//   cookie  COOKIE_SPA_URL, AUTHGATE_URL, BLOCKED_SPA_URL, BACKEND_URL, LOGIN_USER, LOGIN_PASSWORD,
//           EXPECT_EMAIL, EXPECT_GROUPS
//           The SPA in cookie mode (authgate's HttpOnly refresh cookie), the provider on another
//           site (localhost vs 127.0.0.1): silent renewal answering login_required, sign-in (the
//           same page checks as spa: claims, countdown, backend, #refresh), a reload that keeps
//           the session, two tabs refreshing at once, a silent renewal that signs in without a
//           form, sign-out reaching the other tab and the backend refusing both tabs' tokens, and
//           pages of other origins that cannot use the refresh cookie. Screenshots cookie-*.png.
// Also: OUTPUT_DIR (screenshots; default ./output), CHROMIUM (default /usr/bin/chromium),
// TIMEOUT_MS (per wait; default 15000).
//
// Prints one line per step; on the first failure prints the reason, saves
// OUTPUT_DIR/<scenario>-failure.png and exits 1 (2 for a usage error).
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = process.env;
const OUTPUT_DIR = path.resolve(env.OUTPUT_DIR || 'output');
const TIMEOUT_MS = Number(env.TIMEOUT_MS || 15000);

class Failure extends Error {}
const fail = (message) => { throw new Failure(message); };

let currentScenario = '';
let stepNumber = 0;
function step(message) {
  stepNumber += 1;
  console.log(`[${currentScenario}] ${String(stepNumber).padStart(2)}. ${message}`);
}

// The environment each scenario needs (checked before the browser starts).
const NEEDS = {
  spa: ['SPA_URL', 'BACKEND_URL', 'LOGIN_USER', 'LOGIN_PASSWORD', 'EXPECT_EMAIL', 'EXPECT_GROUPS'],
  simple: ['AUTHGATE_URL', 'LOGIN_USER', 'LOGIN_PASSWORD', 'EXPECT_EMAIL', 'EXPECT_POST_LOGIN_URL'],
  cors: ['BLOCKED_SPA_URL'],
  csrf: ['AUTHGATE_URL', 'LOGIN_USER', 'LOGIN_PASSWORD', 'EXPECT_POST_LOGIN_URL', 'BLOCKED_SPA_URL'],
  cookie: ['COOKIE_SPA_URL', 'AUTHGATE_URL', 'BLOCKED_SPA_URL', 'BACKEND_URL', 'LOGIN_USER', 'LOGIN_PASSWORD',
    'EXPECT_EMAIL', 'EXPECT_GROUPS'],
};
const required = (...names) => names.map((name) => env[name]);

const origin = (url) => new URL(url).origin;
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** Polls `check` until it returns a truthy value; fails with `what` (and `detail()`) on timeout. */
async function waitUntil(what, check, detail = async () => '') {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    // Errors other than our own failures (e.g. "execution context was destroyed" while the page
    // navigates) just mean "not yet".
    const result = await check().catch((err) => { if (err instanceof Failure) throw err; });
    if (result) return result;
    if (Date.now() > deadline) fail(`timed out after ${TIMEOUT_MS} ms waiting for ${what}${await detail()}`);
    await sleep(100);
  }
}

const visible = (page, selector) => page.locator(selector).first().isVisible().catch(() => false);
const text = async (page, selector) => ((await visible(page, selector))
  ? (await page.locator(selector).first().textContent())?.trim() ?? '' : '');

/** Current URL and any visible #error, for failure messages. */
async function where(page) {
  const error = await text(page, '#error');
  return ` (at ${page.url()}${error ? `; #error shows: ${error}` : ''})`;
}

/** Fails at once if the SPA shows an error; otherwise returns `check()`. */
async function spaCheck(page, check) {
  const error = await text(page, '#error');
  if (error) fail(`the SPA shows an error: ${error}`);
  return check();
}

/**
 * Takes the browser through the provider until `isDone()`: fills the sign-in form (#username,
 * #password, #sign-in) and clicks #allow on the consent page when they appear. With a provider
 * session already in place neither may appear.
 */
async function passProvider(page, [user, password], what, isDone) {
  let signedIn = false;
  let consented = false;
  await waitUntil(what, async () => {
    if (await isDone()) return true;
    const error = await text(page, '#error');
    if (error) fail(`${origin(page.url())} shows an error: ${error} (at ${page.url()})`);
    if (!signedIn && await visible(page, '#username')) {
      step(`provider sign-in form: signing in as ${user}`);
      await page.fill('#username', user);
      await page.fill('#password', password);
      await page.click('#sign-in');
      signedIn = true;
    } else if (!consented && await visible(page, '#allow')) {
      step('provider consent page: clicking #allow');
      await page.click('#allow');
      consented = true;
    }
    return false;
  }, async () => ` (at ${page.url()})`);
}

/** Fails if any localStorage/sessionStorage entry or cookie of the page holds a JWT. */
async function assertNoStoredJwt(page, context) {
  const stored = await page.evaluate(() => ({
    localStorage: Object.entries(localStorage),
    sessionStorage: Object.entries(sessionStorage),
    'document.cookie': [['', document.cookie]],
  }));
  for (const [area, entries] of Object.entries(stored)) {
    for (const [key, value] of entries) {
      if (`${key}${value}`.includes('eyJ')) fail(`${area} holds a JWT (key "${key}")`);
    }
  }
  for (const cookie of await context.cookies(page.url())) {
    if (cookie.value.includes('eyJ')) fail(`cookie ${cookie.name} holds a JWT`);
  }
  const counts = Object.entries(stored).slice(0, 2).map(([area, entries]) => `${area}: ${entries.length} entries`);
  step(`no JWT in localStorage, sessionStorage or cookies (${counts.join(', ')})`);
}

function assertNoCodeInUrl(page) {
  const { searchParams } = new URL(page.url());
  if (searchParams.has('code') || searchParams.has('state') || /[?&](code|state)=/.test(page.url())) {
    fail(`the address bar still has code/state: ${page.url()}`);
  }
  step(`address bar has no code/state: ${page.url()}`);
}

async function screenshot(page, name) {
  const file = path.join(OUTPUT_DIR, name);
  await page.screenshot({ path: file, fullPage: true });
  step(`screenshot ${file}`);
}

// ------------------------------------------------- the SPA's signed-in page --

/** JWT payload, decoded (no verification: the test compares what the page shows with it). */
const jwtClaims = (token) => JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8'));

/**
 * Records the page's GET {BACKEND_URL}/api/hello requests. `tokens()` resolves their bearer
 * tokens (the page itself cannot give them: the SPA keeps the token in memory only).
 */
function trackHello(page, backendUrl) {
  const target = `${backendUrl.replace(/\/+$/, '')}/api/hello`;
  const requests = [];
  page.on('request', (req) => { if (req.method() === 'GET' && req.url() === target) requests.push(req); });
  return {
    get count() { return requests.length; },
    /** The bearer tokens of the requests from the `from`-th on. */
    async tokens(from = 0) {
      const headers = await Promise.all(requests.slice(from).map((req) => req.allHeaders()));
      return headers.map((h) => (h.authorization ?? '').replace(/^Bearer /i, ''));
    },
  };
}

/** The value shown for one claim in #claims ('' when absent). */
const claim = async (page, name) => ((await page.locator(`#claims dd[data-claim="${name}"] code`).first()
  .textContent({ timeout: 1000 }).catch(() => '')) ?? '').trim();

/** #expires-in ("expires in 14:32", "expires in 1:02:03") in seconds. */
async function expiresIn(page) {
  const shown = await text(page, '#expires-in');
  const match = /expires in (?:(\d+):)?(\d+):(\d\d)$/.exec(shown);
  if (!match) fail(`#expires-in shows "${shown}", expected "expires in MM:SS"`);
  return Number(match[1] ?? 0) * 3600 + Number(match[2]) * 60 + Number(match[3]);
}

/** Waits for the page's GET /api/hello with the token whose jti #claims shows; returns that token. */
async function helloWithShownToken(page, hello, from = 0) {
  const jti = await waitUntil('#claims to show the token\'s jti', () => spaCheck(page, () => claim(page, 'jti')),
    async () => where(page));
  const token = await waitUntil(`the SPA to call the backend (GET /api/hello) with the token ${jti}`,
    async () => (await hello.tokens(from)).find((t) => jwtClaims(t).jti === jti), async () => where(page));
  return token;
}

/** Waits for #backend to show the backend's 200 answer; fails at once on a refusal. */
async function backendAccepted(page, email, groups) {
  const shown = await waitUntil('#backend to show the backend\'s answer', () => spaCheck(page, async () => {
    const state = await page.getAttribute('#backend', 'data-state');
    if (state === 'refused' || state === 'unreachable' || state === 'unconfigured') {
      fail(`#backend shows ${state}: ${await text(page, '#backend')}`);
    }
    return state === 'ok' && text(page, '#backend');
  }), async () => `${await where(page)}; #backend: "${await text(page, '#backend')}"`);
  const missing = [email, ...groups].filter((word) => !shown.includes(word));
  if (missing.length) fail(`#backend does not name ${missing.join(', ')}: "${shown}"`);
  const checks = await page.locator('#backend-checks li').evaluateAll((items) => items.map((li) => ({
    ok: li.dataset.ok, name: li.querySelector('.check-name')?.textContent ?? '',
  })));
  const names = checks.map((c) => c.name).join(', ');
  if (checks.length !== 2 || checks.some((c) => c.ok !== 'true')) {
    fail(`#backend-checks should list 2 passed checks, lists ${JSON.stringify(checks)}`);
  }
  return `${(await text(page, '.backend-message')) || 'answered'} (checks passed: ${names})`;
}

/**
 * The signed-in product page: #claims shows the token the SPA sent to the backend (sub, sid, jti,
 * email, groups), #expires-in counts down, #backend shows the backend's answer. Returns the token.
 */
async function checkSignedInPage(page, hello, email, groups, from = 0) {
  const token = await helloWithShownToken(page, hello, from);
  const sent = jwtClaims(token);
  for (const name of ['sub', 'sid', 'iss', 'jti', 'email', 'exp', 'iat']) {
    const shown = await claim(page, name);
    if (shown !== String(sent[name])) fail(`#claims ${name} shows "${shown}", the token has "${sent[name]}"`);
  }
  if (sent.email !== email) fail(`the token's email is ${sent.email}, expected ${email}`);
  const shownGroups = (await claim(page, 'groups')).split(',').map((g) => g.trim());
  const missing = groups.filter((g) => !shownGroups.includes(g));
  if (missing.length) fail(`#claims groups lacks ${missing.join(', ')} (shows: ${shownGroups.join(', ')})`);
  step(`#claims shows the token sent to the backend: sub ${sent.sub}, email ${sent.email}, groups ${shownGroups.join(', ')}, jti ${sent.jti}`);

  const first = await expiresIn(page);
  await sleep(1500);
  const second = await expiresIn(page);
  if (!(second < first)) fail(`#expires-in did not count down: ${first} s, 1.5 s later ${second} s`);
  step(`#expires-in counts down: ${await text(page, '#expires-in')} (${first} s, 1.5 s later ${second} s)`);

  step(`#backend: ${await backendAccepted(page, email, groups)}`);
  return token;
}

/** #call-backend asks the backend again (a new GET /api/hello) and the answer is shown. */
async function checkCallBackend(page, hello, email, groups) {
  const before = hello.count;
  await page.click('#call-backend'); // #backend is "loading" from the click until the answer
  await waitUntil('#call-backend to send GET /api/hello', async () => hello.count > before);
  step(`#call-backend: asked again; ${await backendAccepted(page, email, groups)}`);
}

/** #refresh: a new token (jti, later exp), #expires-in jumps back up, the backend is asked again. */
async function checkRefresh(page, hello, email, groups) {
  await sleep(1100); // so the new token's exp (in seconds) is later than the current one's
  const before = { jti: await claim(page, 'jti'), exp: Number(await claim(page, 'exp')), left: await expiresIn(page) };
  const calls = hello.count;
  await page.click('#refresh');
  await waitUntil('#claims to show a new token after #refresh', () => spaCheck(page, async () => {
    const jti = await claim(page, 'jti');
    return jti && jti !== before.jti;
  }), async () => where(page));
  const after = { jti: await claim(page, 'jti'), exp: Number(await claim(page, 'exp')), left: await expiresIn(page) };
  if (!(after.exp > before.exp)) fail(`exp did not move on: ${before.exp} → ${after.exp}`);
  if (!(after.left > before.left)) fail(`#expires-in did not jump back up: ${before.left} s → ${after.left} s`);
  step(`#refresh: new jti ${after.jti}, exp ${before.exp} → ${after.exp}, #expires-in ${before.left} s → ${after.left} s`);
  await helloWithShownToken(page, hello, calls);
  step(`the backend was asked again with the new token: ${await backendAccepted(page, email, groups)}`);
}

/** After a sign-out the backend must refuse `token`: 401 with reason INVALID_REASON_REVOKED. */
async function checkRevoked(backendUrl, token, what) {
  const url = `${backendUrl.replace(/\/+$/, '')}/api/hello`;
  let last = '';
  await waitUntil(`the backend to refuse ${what} as revoked`, async () => {
    const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
    const body = await res.json().catch(() => ({}));
    last = `HTTP ${res.status} ${JSON.stringify(body)}`;
    if (res.status === 200 || res.status === 401) {
      if (res.status === 401 && body.reason === 'INVALID_REASON_REVOKED') return true;
      if (res.status === 401) fail(`the backend refused ${what}, but not as revoked: ${last}`);
    }
    return false;
  }, async () => ` (last answer: ${last})`);
  step(`GET /api/hello with ${what} (sent by the SPA before the sign-out): 401 ${last.replace(/^HTTP 401 /, '')}`);
}

// ------------------------------------------------------------------ scenarios --

async function scenarioSpa(context) {
  const [spaUrl, backendUrl, user, password, email, groupList] = required(...NEEDS.spa);
  const groups = groupList.split(',').map((g) => g.trim()).filter(Boolean);
  const spaOrigin = origin(spaUrl);
  const page = await context.newPage();
  const hello = trackHello(page, backendUrl);
  // URLs the tab navigated to, redirects included: with a provider session the provider answers
  // with a redirect straight back to /callback, and no provider page is ever shown.
  const navigations = [];
  page.on('request', (req) => {
    if (req.isNavigationRequest() && req.frame() === page.mainFrame()) navigations.push(req.url());
  });

  const signIn = async () => {
    const before = navigations.length;
    await page.click('#sign-in');
    const providerOrigin = await waitUntil('the SPA to go to the provider',
      () => spaCheck(page, async () => navigations.slice(before).map(origin).find((o) => o !== spaOrigin)),
      async () => where(page));
    step(`sent to the provider: ${providerOrigin}`);
    await passProvider(page, [user, password], `the provider to send the browser back to ${spaOrigin}/callback`,
      async () => origin(page.url()) === spaOrigin
        && navigations.slice(before).some((url) => url.startsWith(`${spaOrigin}/callback?`)));
    step(`back on ${spaOrigin}/callback`);
    await waitUntil(`#email to show ${email}`,
      () => spaCheck(page, async () => (await text(page, '#email')) === email),
      async () => `${await where(page)}; #email: "${await text(page, '#email')}"`);
  };

  step(`open ${spaUrl}`);
  await page.goto(spaUrl);
  await waitUntil('the signed-out view (#sign-in)', () => spaCheck(page, () => visible(page, '#sign-in')),
    async () => where(page));
  await screenshot(page, 'spa-1-signed-out.png');
  step('click #sign-in');
  await signIn();
  step(`signed in: #email = ${email}, #name = ${await text(page, '#name')}`);

  const shownGroups = await page.locator('#groups li').allTextContents();
  const missing = groups.filter((g) => !shownGroups.includes(g));
  if (missing.length) fail(`#groups lacks ${missing.join(', ')} (shows: ${shownGroups.join(', ')})`);
  step(`#groups shows ${shownGroups.join(', ')}`);

  assertNoCodeInUrl(page);
  await assertNoStoredJwt(page, context);
  await checkSignedInPage(page, hello, email, groups);
  await screenshot(page, 'spa-2-signed-in.png');
  await checkCallBackend(page, hello, email, groups);
  await screenshot(page, 'spa-3-backend.png');
  await checkRefresh(page, hello, email, groups);
  await screenshot(page, 'spa-4-refreshed.png');
  await assertNoStoredJwt(page, context);

  step('reload: the token was in memory only, so the app must be signed out');
  await page.reload();
  await waitUntil('the signed-out view after reload', () => spaCheck(page, async () => (
    await visible(page, '#sign-in')) && !(await visible(page, '#signed-in'))), async () => where(page));
  assertNoCodeInUrl(page);
  step('signed-out view shown after reload');

  step('sign in again (provider session exists)');
  const beforeSecond = hello.count;
  await signIn();
  // The token to try after the sign-out: the one the SPA sent to the backend (the page cannot
  // hand it out: it lives in the SPA's memory only).
  const token = await helloWithShownToken(page, hello, beforeSecond);
  step(`signed in again; the backend accepted the new token: ${await backendAccepted(page, email, groups)}`);
  step('click #sign-out ("Sign out everywhere")');
  const leftSpa = page.waitForURL((url) => url.origin !== spaOrigin, { timeout: TIMEOUT_MS });
  await page.click('#sign-out');
  await leftSpa.catch(() => fail(`sign-out did not go to the provider's end-session endpoint${''}`));
  step('left the SPA for the provider end-session endpoint');
  // Sign-out ends the authgate session and sends the browser through the provider's end-session
  // endpoint, which ends the provider session and returns to the SPA.
  await waitUntil('the SPA again, signed out, after the provider logout', () => spaCheck(page, async () => (
    page.url().startsWith(spaUrl) && await visible(page, '#sign-in') && !(await visible(page, '#email')))),
  async () => where(page));
  step(`back at ${page.url()}, signed out`);
  await screenshot(page, 'spa-5-signed-out.png');
  await checkRevoked(backendUrl, token, 'the token of the ended session');
  step('click #sign-in: the provider must ask for the password again (its session ended too)');
  await page.click('#sign-in');
  await waitUntil('the provider sign-in form', async () => visible(page, '#username'), async () => where(page));
  step('the provider asks for credentials again: sign-out ended both sessions');
}

async function scenarioSimple(context) {
  const [authgateUrl, user, password, email, postLoginUrl] = required(...NEEDS.simple);
  const authgateOrigin = origin(authgateUrl);
  const loginUrl = new URL('/authorization-code/login', authgateUrl).href;
  const page = await context.newPage();

  step(`open ${loginUrl}`);
  const response = await page.goto(loginUrl);
  const providerOrigin = origin(page.url());
  if (providerOrigin === authgateOrigin) {
    fail(`${loginUrl} did not redirect to the provider (HTTP ${response?.status()}, at ${page.url()})`);
  }
  step(`redirected to the provider: ${providerOrigin}`);
  await passProvider(page, [user, password], `the post-login URL ${postLoginUrl}`,
    async () => page.url().startsWith(postLoginUrl));
  step(`landed on ${page.url()}`);
  assertNoCodeInUrl(page);

  const cookies = await context.cookies(authgateUrl);
  const session = cookies.find((c) => c.name.includes('authgate_session'));
  if (!session) fail(`no authgate_session cookie for ${authgateOrigin} (cookies: ${cookies.map((c) => c.name).join(', ') || 'none'})`);
  if (!session.httpOnly) fail(`cookie ${session.name} is not httpOnly`);
  step(`cookie ${session.name}: httpOnly, secure=${session.secure}, sameSite=${session.sameSite}, path=${session.path}`);

  const visibleCookies = await page.evaluate(() => document.cookie);
  if (visibleCookies.includes(session.name)) fail(`document.cookie exposes ${session.name}`);
  step('document.cookie on the landing page does not expose it');

  // fetch from a page on authgate's origin, with the cookie.
  const apiPage = origin(page.url()) === authgateOrigin ? page : await context.newPage();
  if (apiPage !== page) await apiPage.goto(new URL('/healthz', authgateUrl).href);
  const userinfoUrl = new URL('/api/userinfo', authgateUrl).href;
  const answer = await apiPage.evaluate(async (url) => {
    const res = await fetch(url, { credentials: 'include' });
    return { status: res.status, type: res.headers.get('content-type'), body: await res.text() };
  }, userinfoUrl);
  if (answer.status !== 200) fail(`GET ${userinfoUrl}: HTTP ${answer.status}: ${answer.body.slice(0, 300)}`);
  let json;
  try {
    json = JSON.parse(answer.body);
  } catch {
    fail(`GET ${userinfoUrl}: not JSON (${answer.type}): ${answer.body.slice(0, 300)}`);
  }
  const gotEmail = json.email ?? json.user?.email;
  if (gotEmail !== email) fail(`GET ${userinfoUrl}: email is ${JSON.stringify(gotEmail)}, expected ${email}`);
  step(`GET ${userinfoUrl} (credentials: include): 200, email ${gotEmail}`);
  await screenshot(page, 'simple-signed-in.png');
}

async function scenarioCors(context) {
  const [blockedUrl] = required(...NEEDS.cors);
  const blockedOrigin = origin(blockedUrl);
  const page = await context.newPage();
  const navigations = [];
  page.on('framenavigated', (frame) => { if (frame === page.mainFrame()) navigations.push(frame.url()); });
  const corsMessages = [];
  page.on('console', (msg) => { if (/CORS/i.test(msg.text())) corsMessages.push(msg.text()); });

  step(`open ${blockedUrl} (an origin authgate does not allow)`);
  await page.goto(blockedUrl);
  await waitUntil('the signed-out view (#sign-in)', () => visible(page, '#sign-in'), async () => where(page));
  step('click #sign-in');
  await page.click('#sign-in');
  const message = await waitUntil('#error to show a message',
    async () => {
      if (origin(page.url()) !== blockedOrigin) fail(`the page navigated to ${page.url()}`);
      return text(page, '#error');
    }, async () => where(page));
  step(`#error shows: ${message}`);
  await sleep(500); // give a (wrong) navigation a moment to start
  const away = navigations.filter((url) => origin(url) !== blockedOrigin);
  if (away.length || origin(page.url()) !== blockedOrigin) {
    fail(`the page navigated away: ${[...away, page.url()].join(', ')}`);
  }
  step(`stayed on ${blockedOrigin} (never went to the provider)`);
  if (corsMessages.length) step(`browser console: ${corsMessages[0].slice(0, 200)}`);
  await screenshot(page, 'cors-error.png');
}

async function scenarioCookie(context) {
  const [spaUrl, authgateUrl, blockedUrl, backendUrl, user, password, email, groupList] = required(...NEEDS.cookie);
  const groups = groupList.split(',').map((g) => g.trim()).filter(Boolean);
  const spaOrigin = origin(spaUrl);
  const refreshCookie = async () => (await context.cookies(authgateUrl)).find((c) => c.name.endsWith('authgate_refresh'));
  /** Top-level navigations of a page (redirects included), to see whether it went to the provider. */
  const track = (page) => {
    const urls = [];
    page.on('request', (req) => {
      if (req.isNavigationRequest() && req.frame() === page.mainFrame()) urls.push(req.url());
    });
    return urls;
  };
  const signedIn = (page) => waitUntil(`#email to show ${email}`,
    () => spaCheck(page, async () => (await text(page, '#email')) === email), async () => where(page));
  const signedOut = (page) => waitUntil('the signed-out view',
    () => spaCheck(page, async () => (await visible(page, '#sign-in')) && !(await visible(page, '#signed-in'))),
    async () => where(page));

  const page = await context.newPage();
  const navigations = track(page);
  const hello = trackHello(page, backendUrl);
  step(`open ${spaUrl} (cookie mode) with no session anywhere`);
  await page.goto(spaUrl);
  await signedOut(page);
  const notice = await text(page, '#notice');
  if (!notice.includes('login_required')) fail(`#notice should report login_required, shows "${notice}"`);
  const providerOrigin = navigations.map(origin).find((o) => o !== spaOrigin);
  if (!providerOrigin) fail('the silent renewal never went to the provider');
  if (new URL(providerOrigin).hostname === new URL(spaUrl).hostname) {
    fail(`the provider ${providerOrigin} must be on another site than the SPA ${spaOrigin}`);
  }
  const silentUrl = navigations.find((url) => origin(url) === providerOrigin);
  if (new URL(silentUrl).searchParams.get('prompt') !== 'none') fail(`no prompt=none in ${silentUrl}`);
  step(`silent renewal: a top-level prompt=none redirect to ${providerOrigin} (another site) came back login_required; #notice: ${notice}`);
  await screenshot(page, 'cookie-1-login-required.png');

  step('click #sign-in');
  await page.click('#sign-in');
  await passProvider(page, [user, password], 'the SPA, signed in',
    async () => origin(page.url()) === spaOrigin && (await text(page, '#email')) === email);
  const cookie = await refreshCookie();
  if (!cookie) fail('no refresh cookie for authgate');
  if (!cookie.httpOnly || cookie.sameSite !== 'Strict') {
    fail(`refresh cookie ${cookie.name}: httpOnly=${cookie.httpOnly}, sameSite=${cookie.sameSite}`);
  }
  if ((await page.evaluate(() => document.cookie)).includes('authgate_refresh')) fail('document.cookie exposes the refresh cookie');
  step(`signed in; refresh cookie ${cookie.name}: httpOnly, sameSite=Strict, not in document.cookie`);
  await assertNoStoredJwt(page, context);
  await checkSignedInPage(page, hello, email, groups);
  await screenshot(page, 'cookie-2-signed-in.png');
  await checkRefresh(page, hello, email, groups);
  await screenshot(page, 'cookie-3-refreshed.png');

  step('reload: cookie mode keeps the session (one RefreshSession, no provider)');
  const beforeReload = navigations.length;
  const hellosBeforeReload = hello.count;
  await page.reload();
  await signedIn(page);
  const away = navigations.slice(beforeReload).filter((url) => origin(url) !== spaOrigin);
  if (away.length) fail(`the reload went to ${away.join(', ')}`);
  step('signed in after reload, without leaving the SPA');
  await helloWithShownToken(page, hello, hellosBeforeReload);
  step(`after the reload: ${await backendAccepted(page, email, groups)}`);
  await assertNoStoredJwt(page, context);
  await screenshot(page, 'cookie-4-after-reload.png');

  step('open a second tab: signed in too');
  const second = await context.newPage();
  track(second);
  const secondHello = trackHello(second, backendUrl);
  await second.goto(spaUrl);
  await signedIn(second);
  step('both tabs click #refresh at the same moment');
  // The refresh cookie each RefreshSession answer sets, per tab.
  const answers = [];
  const listen = (tab) => tab.on('response', async (res) => {
    if (!res.url().endsWith('/RefreshSession')) return;
    const set = (await res.headerValue('set-cookie').catch(() => null)) ?? '';
    answers.push(set.split(';')[0]);
  });
  listen(page);
  listen(second);
  const before = (await refreshCookie()).value;
  const at = Date.now() + 300;
  await Promise.all([page, second].map((tab) => tab.evaluate((when) => {
    setTimeout(() => document.getElementById('refresh').click(), when - Date.now());
  }, at)));
  await sleep(800);
  for (const [name, tab] of [['first', page], ['second', second]]) {
    // One of the two may have been asked to retry (the other held the session's refresh); the
    // grace hands it the successor on the retry.
    if (await text(tab, '#error')) {
      step(`${name} tab: ${await text(tab, '#error')}; retrying`);
      await sleep(1100);
      await tab.click('#refresh');
    }
    await signedIn(tab);
  }
  const after = (await refreshCookie()).value;
  if (after === before) fail('the refresh cookie was not rotated');
  const successors = [...new Set(answers.filter((a) => a.endsWith(after)))];
  if (answers.filter((a) => a.includes('=') && !a.endsWith('=')).length < 2 || successors.length !== 1) {
    fail(`the two refreshes should both set the one successor: ${answers.map((a) => a.slice(0, 24)).join(', ')}`);
  }
  step(`both tabs still signed in; both answers set the one successor (${answers.length} answers)`);
  await page.reload();
  await signedIn(page);
  step('and a reload afterwards still resumes the session');

  step('pages of other origins try the refresh cookie');
  const foreign = await context.newPage();
  for (const other of [blockedUrl, blockedUrl.replace('127.0.0.1', 'evil.test')]) {
    await foreign.goto(other);
    const outcome = await foreign.evaluate(async (url) => {
      const frame = new Uint8Array([0, 0, 0, 0, 0]);
      const results = [];
      try {
        const res = await fetch(url, {
          method: 'POST', credentials: 'include', body: frame,
          headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', 'x-csrf': '1' },
        });
        results.push(`cors fetch answered ${res.status}`);
      } catch (err) {
        results.push(`cors fetch blocked (${err.name})`);
      }
      // A "simple" request needs no preflight, but cannot carry x-csrf or the grpc-web type.
      await fetch(url, { method: 'POST', mode: 'no-cors', credentials: 'include', body: frame }).catch(() => {});
      return results.join('; ');
    }, `${authgateUrl}/authgate.v1.AuthService/RefreshSession`);
    if (!outcome.includes('blocked')) fail(`a page of ${origin(other)} used the refresh cookie: ${outcome}`);
    step(`${origin(other)}: ${outcome}`);
  }
  const untouched = await refreshCookie();
  await page.click('#refresh');
  await signedIn(page);
  if ((await refreshCookie()).value === untouched.value) fail('the refresh after the foreign attempts did not rotate');
  step('the session is untouched: the next refresh in the SPA works');
  await foreign.close();

  step('silent renewal: authgate\'s refresh cookie is gone, the provider session lives');
  await context.clearCookies({ name: cookie.name });
  const beforeSilent = navigations.length;
  await page.evaluate(() => sessionStorage.clear());
  await page.reload();
  await waitUntil('the SPA signed in again', async () => {
    if (await visible(page, '#username')) fail('the provider showed its sign-in form during a silent renewal');
    return origin(page.url()) === spaOrigin && (await text(page, '#email')) === email;
  }, async () => where(page));
  const trip = navigations.slice(beforeSilent).map(origin);
  if (!trip.includes(providerOrigin)) fail('the silent renewal did not go to the provider');
  step(`signed in again through a top-level prompt=none redirect to ${providerOrigin}, no form`);
  await screenshot(page, 'cookie-5-silent-renewal.png');

  step('sign out in the first tab; the second tab must follow');
  const secondFrom = secondHello.count;
  await second.reload();
  await signedIn(second);
  // Both tabs' tokens (one session), as they sent them to the backend, to try after the sign-out.
  const tokens = [await helloWithShownToken(page, hello), await helloWithShownToken(second, secondHello, secondFrom)];
  if (jwtClaims(tokens[0]).sid !== jwtClaims(tokens[1]).sid) fail('the two tabs do not share one session');
  await backendAccepted(second, email, groups);
  step(`both tabs' tokens belong to session ${jwtClaims(tokens[0]).sid}; the backend accepts them`);
  // The user is on the first tab when they click (Chromium throttles a background tab's frames,
  // which would slow Playwright's click itself by up to a second, and count against the 2 s).
  await page.bringToFront();
  const clicked = Date.now();
  await page.click('#sign-out');
  await signedOut(second);
  const took = Date.now() - clicked;
  const secondNotice = await text(second, '#notice');
  step(`second tab signed out ${took} ms after the click (#notice: ${secondNotice})`);
  if (took > 2000) fail(`the second tab took ${took} ms to sign out (stated: within 2 s)`);
  await screenshot(second, 'cookie-6-signed-out-elsewhere.png');
  await signedOut(page);
  await screenshot(page, 'cookie-7-signed-out.png');
  await checkRevoked(backendUrl, tokens[0], 'the first tab\'s token');
  await checkRevoked(backendUrl, tokens[1], 'the second tab\'s token');
  if (await refreshCookie()) fail('the refresh cookie survived the sign-out');
  await second.reload();
  await signedOut(second);
  step('after sign-out the refresh cookie is gone and a reload stays signed out (no silent renewal)');
}

/** GET /api/userinfo with the session cookie, from `page` on authgate's origin: the status. */
async function userinfoStatus(page, authgateUrl) {
  await page.goto(new URL('/healthz', authgateUrl).href);
  return page.evaluate(async (url) => (await fetch(url, { credentials: 'include' })).status,
    new URL('/api/userinfo', authgateUrl).href);
}

/** From an attacker's page on `pageOrigin` (served by the browser itself, with no CSP),
 * submits a POST form to authgate's logout; returns the status of authgate's answer and the
 * Origin / Sec-Fetch-Site / cookie Chromium sent with it. */
async function forgeLogout(page, pageOrigin, authgateUrl) {
  const attack = `${pageOrigin}/forged-logout.html`;
  await page.route(attack, (route) => route.fulfill({
    contentType: 'text/html',
    body: '<!doctype html><title>forged</title><form id="f" method="post"></form>',
  }));
  await page.goto(attack);
  const target = new URL('/authorization-code/logout', authgateUrl).href;
  const sent = page.waitForRequest((r) => r.url() === target && r.method() === 'POST');
  const answered = page.waitForResponse((r) => r.url() === target);
  const navigated = page.waitForNavigation({ waitUntil: 'load' });
  await page.evaluate((action) => {
    const form = document.getElementById('f');
    form.action = action;
    form.submit();
  }, target);
  const request = await sent;
  const headers = await request.allHeaders();
  const response = await answered;
  await navigated;
  const result = {
    status: response.status(),
    origin: headers.origin,
    site: headers['sec-fetch-site'],
    cookie: (headers.cookie || '').includes('authgate_session'),
  };
  return result;
}

async function scenarioCsrf(context) {
  const [authgateUrl, user, password, postLoginUrl, blockedUrl] = required(...NEEDS.csrf);
  const page = await context.newPage();
  step('sign in through /authorization-code/login (the session cookie)');
  await page.goto(new URL('/authorization-code/login', authgateUrl).href);
  await passProvider(page, [user, password], `the post-login URL ${postLoginUrl}`,
    async () => page.url().startsWith(postLoginUrl));
  if (await userinfoStatus(page, authgateUrl) !== 200) fail('not signed in after the login');
  step('signed in: GET /api/userinfo with the cookie answers 200');

  const sibling = origin(blockedUrl);
  const foreign = sibling.replace('127.0.0.1', 'evil.test');
  for (const [what, pageOrigin, expectCookie] of [
    ['a sibling origin (same site)', sibling, true],
    ['a foreign site', foreign, false],
  ]) {
    const r = await forgeLogout(page, pageOrigin, authgateUrl);
    step(`logout form posted from ${what} ${pageOrigin}: Origin ${r.origin}, Sec-Fetch-Site ${r.site}, cookie ${r.cookie ? 'sent' : 'not sent'}, HTTP ${r.status}`);
    if (r.cookie !== expectCookie) fail(`the cookie was ${r.cookie ? '' : 'not '}sent from ${what}; expected the opposite (SameSite=Lax)`);
    // Refused either way: even without the cookie, an accepted logout would clear it.
    if (r.status !== 403) fail(`authgate answered HTTP ${r.status} to a forged logout; expected 403`);
    if (await userinfoStatus(page, authgateUrl) !== 200) fail(`the forged logout from ${what} ended the session`);
    step('the session lives on');
  }

  step('authgate\'s own page: click #sign-out');
  await page.goto(new URL('/', authgateUrl).href);
  await page.click('#sign-out');
  await waitUntil('the session to end', async () => (await userinfoStatus(page, authgateUrl)) === 401);
  step('signed out by the same-origin form: GET /api/userinfo answers 401');
}

// ----------------------------------------------------------------------- main --

const scenarios = {
  spa: scenarioSpa, simple: scenarioSimple, cors: scenarioCors, csrf: scenarioCsrf, cookie: scenarioCookie,
};
const selected = (env.SCENARIOS || Object.keys(scenarios).join(',')).split(',').map((s) => s.trim()).filter(Boolean);
const unknown = selected.filter((s) => !(s in scenarios));
if (unknown.length) {
  console.error(`unknown scenario(s) ${unknown.join(', ')}; choose from ${Object.keys(scenarios).join(', ')}`);
  process.exit(2);
}
const missing = [...new Set(selected.flatMap((s) => NEEDS[s]).filter((name) => !env[name]))];
if (missing.length) {
  console.error(`missing environment for scenarios ${selected.join(', ')}: ${missing.join(', ')}`);
  process.exit(2);
}
mkdirSync(OUTPUT_DIR, { recursive: true });

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--disable-quic', '--no-first-run',
    // A foreign site for the CSRF scenario, served from this machine.
    '--host-resolver-rules=MAP evil.test 127.0.0.1'],
});
console.log(`chromium ${browser.version()}; scenarios: ${selected.join(', ')}; output: ${OUTPUT_DIR}`);

let exitCode = 0;
for (const name of selected) {
  currentScenario = name;
  stepNumber = 0;
  const started = Date.now();
  const context = await browser.newContext(); // fresh cookies and storage per scenario
  context.setDefaultTimeout(TIMEOUT_MS);
  const consoleErrors = [];
  context.on('console', (msg) => { if (msg.type() === 'error') consoleErrors.push(msg.text()); });
  try {
    await scenarios[name](context);
    console.log(`[${name}] PASS (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (err) {
    console.log(`[${name}] FAIL: ${err instanceof Failure ? err.message : err?.stack ?? err}`);
    const page = context.pages().at(-1);
    if (page) {
      console.log(`[${name}] page URL: ${page.url()}`);
      const file = path.join(OUTPUT_DIR, `${name}-failure.png`);
      if (await page.screenshot({ path: file, fullPage: true }).then(() => true, () => false)) {
        console.log(`[${name}] screenshot: ${file}`);
      }
    }
    for (const line of consoleErrors.slice(-5)) console.log(`[${name}] browser console error: ${line}`);
    exitCode = 1;
  } finally {
    await context.close();
  }
  if (exitCode) break;
}
await browser.close();
process.exit(exitCode);
