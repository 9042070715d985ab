// The UI: three states (signed out, signing in, signed in) plus an error line. Plain DOM; the
// markup is in index.html and only text is ever inserted (textContent), never HTML.
import { Code, ConnectError } from "@connectrpc/connect";
import * as auth from "./auth";
import "./style.css";

interface Config {
  /** authgate's base URL, e.g. http://127.0.0.1:8080 */
  authgateUrl: string;
}

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
  signIn: element<HTMLButtonElement>("sign-in"),
  signOut: element<HTMLButtonElement>("sign-out"),
  email: element("email"),
  name: element("name"),
  groups: element<HTMLUListElement>("groups"),
};

let authgateUrl = "";

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
  return { authgateUrl: config.authgateUrl };
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

ui.signOut.addEventListener("click", async () => {
  clearError();
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
    ({ authgateUrl } = await loadConfig());
    auth.connect(authgateUrl);
    if (!onCallback) return showSignedOut();
    showStatus("Signing in…");
    showSignedIn(await auth.finishLogin(callbackParams));
  } catch (err) {
    showError(err);
    showSignedOut();
  }
}

void main();
