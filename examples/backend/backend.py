"""The demo backend: a service of the fleet that the demo SPA calls with the user's token.

Every request to /api/hello must carry `Authorization: Bearer <authgate token>`. The backend
  1. verifies the token locally against authgate's JWKS, discovered from authgate's issuer
     metadata (PyJWT; ../clients/python/verify_jwt.py): signature, issuer, audience, expiry;
  2. asks authgate's ValidateToken whether the session still lives (gRPC;
     ../clients/python/check_token.py): a logout anywhere ends it for every service at once;
and answers with who called and which groups they are in, and how each check went. A token that
fails either check gets 401 with the reason; authgate unreachable gets 503 (never a pass).

Environment:
  AUTHGATE_ISSUER     authgate's public URL, the tokens' `iss` (default http://localhost:8080)
  AUTHGATE_URL        where this service reaches authgate, when not at the issuer URL (a cluster
                      or compose network): metadata and keys are fetched there (default: issuer)
  AUTHGATE_GRPC       host:port of authgate's gRPC (ValidateToken) (default: AUTHGATE_URL's)
  TOKEN_AUDIENCE      the tokens' `aud` (default authgate)
  ALLOWED_ORIGINS     comma-separated origins allowed to call it from a browser (CORS)
  HOST, PORT          where to listen (default 127.0.0.1:7070; PORT=0 picks a free port)
  PYTHONPATH          must hold the stubs generated from proto/authgate/v1/auth.proto
  EXIT_ON_STDIN_CLOSE=1  exit when stdin closes (test harnesses)
Once listening it prints one line on stdout, {"url": "http://HOST:PORT"}; the log goes to stderr
and never holds a token.
"""

import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))

import grpc  # noqa: E402
import jwt  # noqa: E402
from check_token import TokenChecker  # noqa: E402
from verify_jwt import Verifier  # noqa: E402

ISSUER = os.environ.get("AUTHGATE_ISSUER", "http://localhost:8080").rstrip("/")
REACH_AT = os.environ.get("AUTHGATE_URL", ISSUER).rstrip("/")
GRPC_TARGET = os.environ.get("AUTHGATE_GRPC") or urllib.parse.urlsplit(REACH_AT).netloc
AUDIENCE = os.environ.get("TOKEN_AUDIENCE", "authgate")
ALLOWED_ORIGINS = {o.strip() for o in os.environ.get("ALLOWED_ORIGINS", "").split(",") if o.strip()}

checker = TokenChecker(GRPC_TARGET)
verifier = None  # discovered on first use, so the backend starts before authgate is ready
verifier_lock = threading.Lock()


def local_verifier():
    global verifier
    with verifier_lock:
        if verifier is None:
            verifier = Verifier(ISSUER, AUDIENCE, REACH_AT)
        return verifier


def hello(token):
    """(status, body) for one call."""
    checks = []
    try:
        v = local_verifier()
        header = jwt.get_unverified_header(token)
        claims = v.verify(token)
        checks.append({"check": "signature", "ok": True,
                       "detail": f"{header.get('alg')} key {header.get('kid')} from {v.jwks_uri}"})
    except jwt.PyJWTError as err:
        checks.append({"check": "signature", "ok": False, "detail": f"{type(err).__name__}: {err}"})
        return 401, {"error": "the token does not verify", "checks": checks}
    except OSError as err:
        return 503, {"error": f"authgate's keys are unreachable: {err}", "checks": checks}
    try:
        verdict = checker.check(token)
    except grpc.RpcError as err:
        return 503, {"error": f"ValidateToken failed: {err.code().name}", "checks": checks}
    checks.append({"check": "ValidateToken", "ok": verdict["valid"],
                   "detail": verdict["message"] or "valid: the session lives"})
    if not verdict["valid"]:
        return 401, {"error": verdict["message"], "reason": verdict["reason"], "checks": checks}
    groups = claims.get("groups", [])
    name = claims.get("name") or claims.get("email") or claims["sub"]
    return 200, {
        "message": f"Hello, {name}. The backend accepted your token.",
        "subject": claims["sub"],
        "email": claims.get("email", ""),
        "groups": groups,
        "admin": "admins" in groups,
        "expires_in": max(0, int(claims["exp"] - time.time())),
        "checks": checks,
        "served_by": "demo backend (Python: PyJWT + grpcio)",
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "authgate-demo-backend"

    def cors(self):
        origin = self.headers.get("Origin")
        if origin in ALLOWED_ORIGINS:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.cors()
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_OPTIONS(self):  # CORS preflight for the Authorization header
        self.send_response(204)
        self.cors()
        self.send_header("Access-Control-Allow-Methods", "GET")
        self.send_header("Access-Control-Allow-Headers", "authorization")
        self.send_header("Access-Control-Max-Age", "600")
        self.end_headers()

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            return self.answer(200, {"status": "ok"})
        if path != "/api/hello":
            return self.answer(404, {"error": "not found; try GET /api/hello"})
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self.answer(401, {"error": "send Authorization: Bearer <authgate access token>"})
        self.answer(*hello(token.strip()))

    def log_message(self, fmt, *args):  # the request line only: no headers, so no token
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def main():
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "7070"))), Handler)
    host, port = server.server_address[:2]
    print(json.dumps({"url": f"http://{host}:{port}"}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if os.environ.get("EXIT_ON_STDIN_CLOSE") == "1":
        threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
