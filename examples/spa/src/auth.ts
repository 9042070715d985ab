// Everything this app does with authgate: start a login, finish it on /callback, read the profile,
// keep the session fresh, sign out. The UI (main.ts) only calls these functions.
//
// The UI may read the current access token (currentToken(): the raw JWT for the app's own backend
// calls, its decoded claims for display, when it expires) and hear when it changes
// (whenTokenChanged); the token itself never leaves this module's memory for storage.
//
// Two modes. Memory mode (the default): the access token and the refresh handle live in this
// tab's memory only, so a reload signs the user out. Cookie mode (authgate's `refresh_cookie`,
// this app's `cookieMode`): authgate keeps the refresh handle in an HttpOnly, SameSite=Strict
// cookie no script can read; the app holds only the short-lived access token in memory and gets
// a new one from RefreshSession on load and before it expires, so a reload costs one round trip.
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService, type UserProfile } from "./gen/authgate/v1/auth_pb";

export type { UserProfile };

/** Where the provider sends the browser back; must be one of authgate's `redirect_uris`. */
export const callbackPath = "/callback";

// The login attempt in progress ({state, binding, redirectUri}). It has to survive the round trip
// to the provider, so it lives in this tab's sessionStorage; it is removed as soon as the callback
// reads it. `binding` ties the attempt to this tab: authgate refuses a code presented without it.
const pendingLoginKey = "authgate.pendingLogin";

interface PendingLogin {
  state: string;
  binding: string;
  redirectUri: string;
  /** A silent renewal (prompt=none): `login_required` is then an answer, not an error. */
  silent?: boolean;
}

/** A silent renewal came back with "the user must sign in" (`login_required` and kin). */
export class SignInRequired extends Error {}

/** Tabs of this app tell each other about a sign-out on this channel. */
const channel = typeof BroadcastChannel === "undefined" ? undefined : new BroadcastChannel("authgate");
let onSignedOutElsewhere: (why: string, byUser: boolean) => void = () => {};
channel?.addEventListener("message", (event: MessageEvent) => {
  if ((event.data as { type?: string })?.type !== "signed-out") return;
  forget();
  onSignedOutElsewhere("You signed out in another tab.", true);
});

/**
 * Called, with the reason, when this tab is signed out without its own sign-out: the user
 * signed out in another tab (`byUser`), or the session ended (a background refresh was
 * refused). The token is already forgotten.
 */
export function whenSignedOutElsewhere(callback: (why: string, byUser: boolean) => void): void {
  onSignedOutElsewhere = callback;
}

let cookieMode = false;
let refreshTimer: ReturnType<typeof setTimeout> | undefined;
/** The refresh handle in memory mode (cookie mode: in authgate's HttpOnly cookie instead). */
let refreshHandle: string | undefined;

let client: Client<typeof AuthService> | undefined;

// authgate's JWT. In memory only — never localStorage, sessionStorage or a cookie — so a reload
// signs the user out, and no other page or script can read it from storage.
let accessToken: string | undefined;
/** When `accessToken` expires, in ms on this browser's clock (from `expires_in`: no clock skew). */
let accessTokenExpiresAt = 0;

/**
 * The claims of authgate's access token, as decoded for display. Every field is optional: they
 * come from a payload this app does not verify (see decodeClaims).
 */
export interface TokenClaims {
  /** The provider's subject identifier for the user. */
  sub?: string;
  /** The authgate session; Logout revokes it, and with it every token of the session. */
  sid?: string;
  iss?: string;
  aud?: string | string[];
  /** Issued at, expiry, not before: seconds since the epoch. */
  iat?: number;
  exp?: number;
  nbf?: number;
  /** This token's unique id: a new one on every refresh. */
  jti?: string;
  email?: string;
  name?: string;
  groups?: string[];
  [claim: string]: unknown;
}

/** The access token as the UI may see it. */
export interface CurrentToken {
  /** The raw JWT, for `Authorization: Bearer` on calls to the app's own backend. Don't store it. */
  token: string;
  /** Its payload, decoded for display only — not verified (see decodeClaims). */
  claims: TokenClaims;
  /** When it expires, in ms since the epoch on this browser's clock. */
  expiresAt: number;
}

let onTokenChanged: (token: CurrentToken | undefined) => void = () => {};

/**
 * Called with the new token whenever there is one (sign-in, every refresh, the background ones
 * too), and with `undefined` when it is forgotten (sign-out, here or in another tab, or an ended
 * session).
 */
export function whenTokenChanged(callback: (token: CurrentToken | undefined) => void): void {
  onTokenChanged = callback;
}

/** Tells the UI; a failing display never fails a sign-in, a refresh or a sign-out. */
function tokenChanged(): void {
  try {
    onTokenChanged(currentToken());
  } catch (err) {
    console.error(err);
  }
}

/** The current access token, its claims and expiry; undefined when signed out. */
export function currentToken(): CurrentToken | undefined {
  if (!accessToken) return undefined;
  return { token: accessToken, claims: decodeClaims(accessToken), expiresAt: accessTokenExpiresAt };
}

/**
 * Reads a JWT's payload (the base64url JSON between the two dots) FOR DISPLAY ONLY. This is not
 * verification: no signature, issuer, audience or expiry is checked, and nothing here may decide
 * what the user is allowed to do. authgate (ValidateToken, GetUserInfo) and the backend (against
 * authgate's JWKS) verify the token; the browser only shows what it carries.
 */
function decodeClaims(jwt: string): TokenClaims {
  const payload = jwt.split(".")[1] ?? "";
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "="));
    const json: unknown = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    return typeof json === "object" && json !== null && !Array.isArray(json) ? (json as TokenClaims) : {};
  } catch {
    return {};
  }
}

/** Keeps a new access token (in memory) and tells the UI. */
function setAccessToken(token: string, expiresIn: number): void {
  accessToken = token;
  accessTokenExpiresAt = Date.now() + expiresIn * 1000;
  tokenChanged();
}

/**
 * Connects to authgate over grpc-web (binary) at `authgateUrl`, e.g. http://127.0.0.1:8080. In
 * cookie mode every call carries the browser's cookies for authgate (`credentials: "include"`).
 */
export function connect(authgateUrl: string, useCookie = false): void {
  cookieMode = useCookie;
  const withCookies: typeof fetch = (input, init) => fetch(input, { ...init, credentials: "include" });
  client = createClient(AuthService, createGrpcWebTransport({
    baseUrl: authgateUrl,
    ...(cookieMode ? { fetch: withCookies } : {}),
  }));
}

function authgate(): Client<typeof AuthService> {
  if (!client) throw new Error("connect() must be called first");
  return client;
}

/**
 * Asks authgate for the provider's login URL and sends the browser there. `silent`: a silent
 * renewal — `prompt=none` in a top-level redirect (a hidden iframe would lose the provider's
 * cookie where third-party cookies are blocked): the provider sends the browser straight back,
 * signed in if its session lives, else with `login_required`.
 */
export async function startLogin(silent = false): Promise<void> {
  const redirectUri = location.origin + callbackPath;
  const { loginUrl, state, binding } = await authgate().getLoginUrl({
    redirectUri,
    prompt: silent ? "none" : "",
  });
  const pending: PendingLogin = { state, binding, redirectUri, silent };
  sessionStorage.setItem(pendingLoginKey, JSON.stringify(pending));
  location.assign(loginUrl);
}

/**
 * Finishes the login the provider redirected back with (the query of /callback): exchanges the
 * code for authgate's token and returns the user's profile. Throws on any failure.
 */
export async function finishLogin(callback: URLSearchParams): Promise<UserProfile> {
  const pending = takePendingLogin();

  const error = callback.get("error");
  // OpenID Connect Core 3.1.2.6: what prompt=none answers when the user has to act.
  const mustAct = ["login_required", "interaction_required", "consent_required", "account_selection_required"];
  if (error && pending?.silent && mustAct.includes(error)) {
    throw new SignInRequired(`Your session has ended (${error}); sign in again.`);
  }
  if (error) {
    const description = callback.get("error_description");
    throw new Error(`Sign-in failed at the identity provider: ${error}${description ? ` (${description})` : ""}`);
  }
  const code = callback.get("code");
  const state = callback.get("state");
  if (!code || !state) throw new Error("The sign-in callback has no code or state; sign in again.");
  if (!pending || pending.state !== state) {
    throw new Error("This sign-in was not started in this tab (state does not match); sign in again.");
  }

  const response = await authgate().exchangeCode({
    code,
    state,
    binding: pending.binding,
    redirectUri: pending.redirectUri,
    // RFC 9207: authgate checks it names the provider it sent the user to (mix-up defence).
    iss: callback.get("iss") ?? "",
    refreshCookie: cookieMode,
  });
  refreshHandle = response.refreshToken || undefined;
  setAccessToken(response.accessToken, Number(response.expiresIn));
  scheduleRefresh(Number(response.expiresIn));
  return getUserInfo();
}

/**
 * Gets a fresh access token with RefreshSession: in cookie mode from authgate's HttpOnly cookie
 * (with the `x-csrf` header authgate asks for), else with the handle in memory. Returns the
 * user's profile. Throws SignInRequired when there is no session to go on with.
 */
export async function refresh(): Promise<UserProfile> {
  if (!cookieMode && !refreshHandle) throw new SignInRequired("Not signed in.");
  try {
    const response = await authgate().refreshSession(
      { refreshToken: cookieMode ? "" : refreshHandle },
      cookieMode ? { headers: { "x-csrf": "1" } } : {},
    );
    if (!cookieMode) refreshHandle = response.refreshToken;
    setAccessToken(response.accessToken, Number(response.expiresIn));
    scheduleRefresh(Number(response.expiresIn));
    if (!response.user) throw new Error("authgate returned no profile.");
    return response.user;
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.Unauthenticated) {
      forget();
      throw new SignInRequired(err.rawMessage);
    }
    throw err;
  }
}

/** Cookie mode: picks up the session the refresh cookie holds (on load; one round trip). */
export async function resume(): Promise<UserProfile> {
  if (!cookieMode) throw new SignInRequired("Not signed in.");
  return refresh();
}

/**
 * Refreshes a minute before the access token expires (or halfway, for short lifetimes). A
 * refusal (the session ended, here or in another tab) signs this tab out; a transient failure
 * (authgate unreachable or overloaded) is retried every 5 s while the token lasts.
 */
function scheduleRefresh(expiresIn: number): void {
  clearTimeout(refreshTimer);
  const lead = Math.min(60, expiresIn / 2);
  const expiresAt = Date.now() + expiresIn * 1000;
  const attempt = (): void => {
    refresh().catch((err: unknown) => {
      if (err instanceof SignInRequired || Date.now() + 5000 >= expiresAt) {
        forget();
        onSignedOutElsewhere("Your session has ended; sign in again.", false);
        return;
      }
      refreshTimer = setTimeout(attempt, 5000);
    });
  };
  refreshTimer = setTimeout(attempt, Math.max(1, expiresIn - lead) * 1000);
}

function forget(): void {
  const had = accessToken !== undefined;
  accessToken = undefined;
  accessTokenExpiresAt = 0;
  refreshHandle = undefined;
  clearTimeout(refreshTimer);
  if (had) tokenChanged();
}

/** The signed-in user's profile, read from authgate with the bearer token. */
export async function getUserInfo(): Promise<UserProfile> {
  if (!accessToken) throw new Error("Not signed in.");
  const { user } = await authgate().getUserInfo(
    {},
    { headers: { authorization: `Bearer ${accessToken}` } },
  );
  if (!user) throw new Error("authgate returned no profile.");
  return user;
}

/**
 * Signs out: authgate revokes the session (for every service at once) and returns the provider's
 * end-session URL; the browser goes there so the provider's own session ends too, and the
 * provider sends it back to this app. The token is forgotten either way.
 */
export async function signOut(): Promise<"navigating" | "done"> {
  const token = accessToken;
  forget();
  // Every other tab of this app signs out at once; their next refresh would fail anyway.
  channel?.postMessage({ type: "signed-out" });
  if (!token) return "done";
  const { endSessionUrl } = await authgate().logout(
    {},
    { headers: { authorization: `Bearer ${token}` } },
  );
  if (!endSessionUrl) return "done";
  location.assign(endSessionUrl);
  return "navigating";
}

function takePendingLogin(): PendingLogin | undefined {
  const stored = sessionStorage.getItem(pendingLoginKey);
  sessionStorage.removeItem(pendingLoginKey);
  if (!stored) return undefined;
  try {
    return JSON.parse(stored) as PendingLogin;
  } catch {
    return undefined;
  }
}
