// Everything this app does with authgate: start a login, finish it on /callback, read the profile,
// sign out. The UI (main.ts) only calls these functions.
import { createClient, type Client } from "@connectrpc/connect";
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
}

let client: Client<typeof AuthService> | undefined;

// authgate's JWT. In memory only — never localStorage, sessionStorage or a cookie — so a reload
// signs the user out, and no other page or script can read it from storage.
let accessToken: string | undefined;

/** Connects to authgate over grpc-web (binary) at `authgateUrl`, e.g. http://127.0.0.1:8080. */
export function connect(authgateUrl: string): void {
  client = createClient(AuthService, createGrpcWebTransport({ baseUrl: authgateUrl }));
}

function authgate(): Client<typeof AuthService> {
  if (!client) throw new Error("connect() must be called first");
  return client;
}

/** Asks authgate for the provider's login URL and sends the browser there. */
export async function startLogin(): Promise<void> {
  const redirectUri = location.origin + callbackPath;
  const { loginUrl, state, binding } = await authgate().getLoginUrl({ redirectUri });
  const pending: PendingLogin = { state, binding, redirectUri };
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
  });
  accessToken = response.accessToken;
  return getUserInfo();
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
  accessToken = undefined;
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
