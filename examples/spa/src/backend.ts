// The app's own backend (examples/backend/backend.py): one call, GET /api/hello with the user's
// authgate token as `Authorization: Bearer`. The backend verifies the token (authgate's JWKS) and
// asks authgate whether the session still lives (ValidateToken), then says who called.

/** One of the backend's checks of the token. */
export interface Check {
  check: string;
  ok: boolean;
  detail: string;
}

/** 200: the backend accepted the token. */
export interface Hello {
  message: string;
  subject: string;
  email: string;
  groups: string[];
  admin: boolean;
  /** Seconds the token has left, as the backend saw it. */
  expires_in: number;
  checks: Check[];
  served_by: string;
}

export type BackendAnswer =
  | { kind: "ok"; status: number; hello: Hello }
  /** 401 (the token does not verify, or its session ended: `reason`), 503 (authgate unreachable) … */
  | { kind: "refused"; status: number; error: string; reason?: string; checks: Check[] }
  /** No HTTP answer: the backend is down, or the browser blocked the call (CORS, CSP). */
  | { kind: "unreachable"; error: string };

/** GET {backendUrl}/api/hello with the token. Never throws: every outcome is an answer. */
export async function callHello(backendUrl: string, token: string): Promise<BackendAnswer> {
  const url = `${backendUrl.replace(/\/+$/, "")}/api/hello`;
  let response: Response;
  try {
    response = await fetch(url, { headers: { authorization: `Bearer ${token}` }, cache: "no-store" });
  } catch (err) {
    return {
      kind: "unreachable",
      error: `Could not reach the backend at ${url} (${err instanceof Error ? err.message : String(err)}). `
        + `Is it running, and is ${location.origin} in its ALLOWED_ORIGINS?`,
    };
  }
  let body: Record<string, unknown> = {};
  try {
    const json: unknown = await response.json();
    if (typeof json === "object" && json !== null && !Array.isArray(json)) body = json as Record<string, unknown>;
  } catch {
    // not JSON: reported below by status
  }
  const checks = Array.isArray(body.checks) ? (body.checks as Check[]) : [];
  if (response.ok && typeof body.message === "string") {
    return {
      kind: "ok",
      status: response.status,
      hello: {
        message: body.message,
        subject: String(body.subject ?? ""),
        email: String(body.email ?? ""),
        groups: Array.isArray(body.groups) ? body.groups.map(String) : [],
        admin: body.admin === true,
        expires_in: Number(body.expires_in ?? 0),
        checks,
        served_by: String(body.served_by ?? ""),
      },
    };
  }
  return {
    kind: "refused",
    status: response.status,
    error: typeof body.error === "string" ? body.error : `HTTP ${response.status} ${response.statusText}`.trim(),
    ...(typeof body.reason === "string" && body.reason ? { reason: body.reason } : {}),
    checks,
  };
}
