// The UI: three states (signed out, signing in, signed in) plus an error line. Signed in, the page
// shows the user's profile, the token's claims with its expiry counting down, and the answer of
// the app's backend to a call with the token. Plain DOM; the markup is in index.html and only text
// is ever inserted (textContent), never HTML.
import { Code, ConnectError } from "@connectrpc/connect";
import * as auth from "./auth";
import { callHello, type BackendAnswer, type Check } from "./backend";
import "./style.css";

interface Config {
  /** authgate's base URL, e.g. http://127.0.0.1:8080 */
  authgateUrl: string;
  /** Keep the session in authgate's HttpOnly refresh cookie (needs `refresh_cookie = true`). */
  cookieMode: boolean;
  /** The demo backend's base URL (GET {backendUrl}/api/hello), e.g. http://127.0.0.1:7070. Optional. */
  backendUrl?: string;
}

// Per tab: a silent renewal was tried (so a `login_required` answer never loops), and the user
// signed out here or in another tab (so no silent renewal brings the session back).
const silentTriedKey = "authgate.silentTried";
const signedOutKey = "authgate.signedOut";

function element<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`#${id} is missing from index.html`);
  return found as T;
}

const ui = {
  error: element("error"),
  status: element("status"),
  signedOut: element("signed-out"),
  signedIn: element("signed-in"),
  notice: element("notice"),
  signIn: element<HTMLButtonElement>("sign-in"),
  signOut: element<HTMLButtonElement>("sign-out"),
  refresh: element<HTMLButtonElement>("refresh"),
  email: element("email"),
  emailVerified: element("email-verified"),
  loginName: element("login-name"),
  subject: element("subject"),
  name: element("name"),
  groups: element<HTMLUListElement>("groups"),
  greeting: element("greeting"),
  userChip: element("user-chip"),
  avatar: element("avatar"),
  chipName: element("chip-name"),
  chipEmail: element("chip-email"),
  claims: element("claims"),
  expiresIn: element("expires-in"),
  expiresAt: element("expires-at"),
  expiryBar: element("expiry-bar"),
  backend: element("backend"),
  backendAbout: element("backend-about"),
  backendEndpoint: element("backend-endpoint"),
  callBackend: element<HTMLButtonElement>("call-backend"),
};

let authgateUrl = "";
let backendUrl: string | undefined;
/** Backend calls started (or cancelled by a sign-out): only the latest call's answer is shown. */
let backendCalls = 0;

/** A new element with a class and text (never HTML). */
function el<K extends keyof HTMLElementTagNameMap>(tag: K, className = "", text = ""): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

/** `<li>` chips, one per group (an empty list reads "none", from the CSS). */
function groupChips(list: HTMLUListElement, groups: readonly string[]): void {
  list.replaceChildren(...groups.map((group) => el("li", "chip", group)));
}

function showNotice(text: string): void {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
}

function showSignedOut(): void {
  ui.status.hidden = true;
  ui.signedIn.hidden = true;
  ui.userChip.hidden = true;
  ui.signedOut.hidden = false;
  ui.signIn.disabled = false;
}

function showStatus(text: string): void {
  ui.signedOut.hidden = true;
  ui.signedIn.hidden = true;
  ui.status.textContent = text;
  ui.status.hidden = false;
}

function showSignedIn(user: auth.UserProfile): void {
  const displayName = user.name || user.email || user.sub;
  ui.email.textContent = user.email;
  ui.emailVerified.hidden = !user.emailVerified;
  ui.loginName.textContent = user.preferredUsername || "—";
  ui.subject.textContent = user.sub;
  ui.name.textContent = user.name;
  groupChips(ui.groups, user.groups);
  ui.greeting.textContent = user.givenName || displayName;
  ui.chipName.textContent = displayName;
  ui.chipEmail.textContent = user.name ? user.email : "";
  ui.avatar.textContent = initials(displayName);
  ui.userChip.hidden = false;
  ui.status.hidden = true;
  ui.notice.hidden = true;
  ui.signedOut.hidden = true;
  ui.signedIn.hidden = false;
}

function initials(name: string): string {
  const words = name.replace(/@.*/, "").split(/[\s._-]+/).filter(Boolean);
  return words.slice(0, 2).map((word) => word[0]?.toUpperCase() ?? "").join("") || "?";
}

// ------------------------------------------------------------ token and expiry --

/** The claims the page lists, in order, with what each one means. */
const shownClaims: ReadonlyArray<[name: string, meaning: string]> = [
  ["sub", "subject: you, at the identity provider"],
  ["sid", "authgate session (sign-out revokes it)"],
  ["iss", "issuer"],
  ["aud", "audience"],
  ["iat", "issued at"],
  ["exp", "expires at"],
  ["jti", "token id (new on every refresh)"],
  ["email", "email"],
  ["groups", "groups"],
];

const time = (seconds: number): string => new Date(seconds * 1000).toLocaleTimeString();

function renderClaims(claims: auth.TokenClaims): void {
  ui.claims.replaceChildren(...shownClaims.flatMap(([name, meaning]) => {
    const dt = el("dt");
    dt.append(el("code", "claim-name", name), el("span", "claim-meaning", meaning));
    const dd = el("dd");
    dd.dataset.claim = name;
    const value = claims[name];
    if (value === undefined) {
      dd.append(el("span", "muted", "—"));
    } else if (Array.isArray(value)) {
      dd.append(el("code", "", value.map(String).join(", ")));
    } else {
      dd.append(el("code", "", String(value)));
      if ((name === "iat" || name === "exp") && typeof value === "number") dd.append(el("span", "muted", ` · ${time(value)}`));
    }
    return [dt, dd];
  }));
}

/** 14:32, or 1:02:03 past an hour. */
function clock(seconds: number): string {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = String(seconds % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

let countdown: ReturnType<typeof setInterval> | undefined;

/** Counts the token's expiry down in #expires-in, every second, until the next token. */
function startCountdown(token: auth.CurrentToken): void {
  clearInterval(countdown);
  const { iat, exp } = token.claims;
  const lifetime = typeof iat === "number" && typeof exp === "number" && exp > iat
    ? exp - iat : Math.max(1, (token.expiresAt - Date.now()) / 1000);
  ui.expiresAt.textContent = `Valid until ${new Date(token.expiresAt).toLocaleTimeString()}; `
    + "this app refreshes it a minute before.";
  const tick = (): void => {
    const left = Math.max(0, Math.floor((token.expiresAt - Date.now()) / 1000));
    ui.expiresIn.textContent = left > 0 ? `expires in ${clock(left)}` : "expired";
    ui.expiryBar.style.width = `${Math.min(100, (left / lifetime) * 100)}%`;
    ui.expiryBar.classList.toggle("meter-low", left < 60);
  };
  tick();
  countdown = setInterval(tick, 1000);
}

function stopCountdown(): void {
  clearInterval(countdown);
  ui.expiresIn.textContent = "";
  ui.expiresAt.textContent = "";
  ui.expiryBar.style.width = "0";
}

// A new token (sign-in, every refresh, the background ones too): show it and ask the backend again.
auth.whenTokenChanged((token) => {
  if (!token) {
    stopCountdown();
    ui.claims.replaceChildren();
    backendCalls += 1; // an answer still on its way is for a token that is gone
    ui.backend.replaceChildren();
    delete ui.backend.dataset.state;
    ui.backend.removeAttribute("aria-busy");
    ui.callBackend.disabled = !backendUrl;
    return;
  }
  renderClaims(token.claims);
  startCountdown(token);
  void callBackend();
});

// --------------------------------------------------------------------- backend --

/** Calls GET {backendUrl}/api/hello with the current token and shows the answer in #backend. */
async function callBackend(): Promise<void> {
  if (!backendUrl) return showBackendNotConfigured();
  const token = auth.currentToken();
  if (!token) return;
  const call = (backendCalls += 1);
  ui.backend.dataset.state = "loading";
  ui.backend.setAttribute("aria-busy", "true");
  ui.callBackend.disabled = true;
  const answer = await callHello(backendUrl, token.token);
  if (call !== backendCalls) return; // a newer call (or a sign-out) came after this one
  ui.callBackend.disabled = false;
  ui.backend.removeAttribute("aria-busy");
  showBackendAnswer(answer);
}

function showBackendNotConfigured(): void {
  ui.backend.dataset.state = "unconfigured";
  ui.backendAbout.hidden = true;
  ui.callBackend.disabled = true;
  const empty = el("div", "empty");
  empty.append(
    el("p", "empty-title", "The backend is not configured."),
    el("p", "muted small", "/config.json has no backendUrl. Start the demo backend (examples/backend) and "
      + "serve this app with BACKEND_URL set to see what a service of the fleet makes of your token."),
  );
  ui.backend.replaceChildren(empty);
}

function checkList(checks: readonly Check[]): HTMLUListElement {
  const list = el("ul", "checks");
  list.id = "backend-checks";
  list.replaceChildren(...checks.map((check) => {
    const item = el("li", check.ok ? "check check-pass" : "check check-fail");
    item.dataset.ok = String(check.ok);
    item.append(
      el("span", "check-mark", check.ok ? "✓" : "✗"),
      el("span", "check-name", check.check),
      el("span", "check-detail", check.detail),
    );
    return item;
  }));
  return list;
}

function showBackendAnswer(answer: BackendAnswer): void {
  const at = el("p", "backend-time muted small", `Answered at ${new Date().toLocaleTimeString()}`);
  if (answer.kind === "unreachable") {
    ui.backend.dataset.state = "unreachable";
    ui.backend.replaceChildren(el("p", "refusal", answer.error), at);
    return;
  }
  if (answer.kind === "refused") {
    ui.backend.dataset.state = "refused";
    const refusal = el("div", "refusal");
    refusal.append(el("p", "refusal-title", `Refused — HTTP ${answer.status}`), el("p", "refusal-error", answer.error));
    if (answer.reason) {
      const reason = el("p", "refusal-reason", "Reason: ");
      reason.append(el("code", "", answer.reason));
      refusal.append(reason);
    }
    ui.backend.replaceChildren(refusal, ...(answer.checks.length ? [checkList(answer.checks)] : []), at);
    return;
  }
  const { hello } = answer;
  ui.backend.dataset.state = "ok";
  const fields = el("dl", "fields fields-inline");
  const groups = el("ul", "chips");
  groupChips(groups, hello.groups);
  const admin = el("span", hello.admin ? "badge badge-admin" : "badge", hello.admin ? "admin" : "not an admin");
  const rows: Array<[string, Node]> = [
    ["Subject", el("code", "", hello.subject)],
    ["Email", document.createTextNode(hello.email || "—")],
    ["Groups", groups],
    ["Role", admin],
    ["Token left", document.createTextNode(`${clock(hello.expires_in)} (as the backend saw it)`)],
    ["Served by", document.createTextNode(hello.served_by)],
  ];
  for (const [label, value] of rows) {
    const dd = el("dd");
    dd.append(value);
    fields.append(el("dt", "", label), dd);
  }
  ui.backend.replaceChildren(
    el("p", "backend-message", hello.message),
    fields,
    el("h3", "checks-title", "Checks"),
    checkList(hello.checks),
    at,
  );
}

ui.callBackend.addEventListener("click", () => { void callBackend(); });

function showError(err: unknown): void {
  console.error(err);
  ui.error.textContent = describeError(err);
  ui.error.hidden = false;
}

function clearError(): void {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

/** A readable message: `CODE_NAME: message` for RPC errors (the codes README's "Errors" lists). */
function describeError(err: unknown): string {
  if (err instanceof ConnectError) {
    // fetch() itself failed: authgate is down, or the browser blocked the call because this
    // origin is not on authgate's CORS allow-list (the browser does not say which).
    if (err.code === Code.Unknown && err.cause instanceof TypeError) {
      return `UNKNOWN: ${err.rawMessage} — could not reach authgate at ${authgateUrl}. Is it running, `
        + `and is ${location.origin} in its cors_allowed_origins?`;
    }
    const codeName = Code[err.code].replace(/(?<=[a-z])(?=[A-Z])/g, "_").toUpperCase();
    return `${codeName}: ${err.rawMessage}`;
  }
  return err instanceof Error ? err.message : String(err);
}

async function loadConfig(): Promise<Config> {
  const response = await fetch("/config.json", { cache: "no-store" });
  if (!response.ok) throw new Error(`GET /config.json: HTTP ${response.status}`);
  const config = (await response.json()) as Partial<Config>;
  if (typeof config.authgateUrl !== "string" || !URL.canParse(config.authgateUrl)) {
    throw new Error("/config.json must look like {\"authgateUrl\": \"http://127.0.0.1:8080\"}");
  }
  if (config.backendUrl !== undefined && config.backendUrl !== ""
    && (typeof config.backendUrl !== "string" || !URL.canParse(config.backendUrl))) {
    throw new Error("/config.json: backendUrl must be a URL, e.g. \"http://127.0.0.1:7070\"");
  }
  return {
    authgateUrl: config.authgateUrl,
    cookieMode: config.cookieMode === true,
    ...(config.backendUrl ? { backendUrl: config.backendUrl } : {}),
  };
}

ui.signIn.addEventListener("click", async () => {
  clearError();
  ui.signIn.disabled = true;
  try {
    await auth.startLogin(); // navigates away on success
  } catch (err) {
    showError(err);
    ui.signIn.disabled = false;
  }
});

ui.refresh.addEventListener("click", async () => {
  clearError();
  try {
    showSignedIn(await auth.refresh());
  } catch (err) {
    if (!(err instanceof auth.SignInRequired)) return showError(err);
    showNotice(err.message);
    showSignedOut();
  }
});

auth.whenSignedOutElsewhere((why, byUser) => {
  // A sign-out by the user is never undone by a silent renewal; an ended session may be.
  if (byUser) sessionStorage.setItem(signedOutKey, "1");
  showNotice(why);
  showSignedOut();
});

ui.signOut.addEventListener("click", async () => {
  clearError();
  sessionStorage.setItem(signedOutKey, "1");
  try {
    if ((await auth.signOut()) === "navigating") return showStatus("Signing out…");
  } catch (err) {
    showError(err);
  }
  showSignedOut();
});

async function main(): Promise<void> {
  // Take code and state out of the address bar (and so out of history and bookmarks) right away.
  const onCallback = location.pathname === auth.callbackPath;
  const callbackParams = new URLSearchParams(location.search);
  if (onCallback) history.replaceState(null, "", "/");

  try {
    const config = await loadConfig();
    authgateUrl = config.authgateUrl;
    backendUrl = config.backendUrl;
    if (backendUrl) ui.backendEndpoint.textContent = `GET ${backendUrl.replace(/\/+$/, "")}/api/hello`;
    else showBackendNotConfigured();
    auth.connect(authgateUrl, config.cookieMode);
    if (!onCallback) return await resumeOrRenew(config.cookieMode);
    showStatus("Signing in…");
    showSignedIn(await auth.finishLogin(callbackParams));
    sessionStorage.removeItem(silentTriedKey);
    sessionStorage.removeItem(signedOutKey);
  } catch (err) {
    if (err instanceof auth.SignInRequired) showNotice(err.message);
    else showError(err);
    showSignedOut();
  }
}

/**
 * On load. Cookie mode: the refresh cookie's session, if there is one (one round trip); if not,
 * once per tab and never after a sign-out, a silent renewal at the provider. Memory mode: a
 * reload has forgotten the session.
 */
async function resumeOrRenew(cookieMode: boolean): Promise<void> {
  if (!cookieMode) return showSignedOut();
  showStatus("Resuming your session…");
  try {
    return showSignedIn(await auth.resume());
  } catch (err) {
    if (!(err instanceof auth.SignInRequired)) throw err;
  }
  if (sessionStorage.getItem(silentTriedKey) || sessionStorage.getItem(signedOutKey)) {
    return showSignedOut();
  }
  sessionStorage.setItem(silentTriedKey, "1");
  showStatus("Checking your sign-in with the identity provider…");
  await auth.startLogin(true); // navigates away
}

void main();
