// The UI: three states (signed out, signing in, signed in) plus an error line. Plain DOM; the
// markup is in index.html and only text is ever inserted (textContent), never HTML.
import { Code, ConnectError } from "@connectrpc/connect";
import * as auth from "./auth";
import "./style.css";

interface Config {
  /** authgate's base URL, e.g. http://127.0.0.1:8080 */
  authgateUrl: string;
  /** Keep the session in authgate's HttpOnly refresh cookie (needs `refresh_cookie = true`). */
  cookieMode: boolean;
}

// Per tab: a silent renewal was tried (so a `login_required` answer never loops), and the user
// signed out here or in another tab (so no silent renewal brings the session back).
const silentTriedKey = "authgate.silentTried";
const signedOutKey = "authgate.signedOut";

function element<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  return el as T;
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
  name: element("name"),
  groups: element<HTMLUListElement>("groups"),
};

let authgateUrl = "";

function showNotice(text: string): void {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
}

function showSignedOut(): void {
  ui.status.hidden = true;
  ui.signedIn.hidden = true;
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
  ui.email.textContent = user.email;
  ui.name.textContent = user.name;
  ui.groups.replaceChildren(
    ...user.groups.map((group) => {
      const li = document.createElement("li");
      li.textContent = group;
      return li;
    }),
  );
  ui.status.hidden = true;
  ui.notice.hidden = true;
  ui.signedOut.hidden = true;
  ui.signedIn.hidden = false;
}

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
  return { authgateUrl: config.authgateUrl, cookieMode: config.cookieMode === true };
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
