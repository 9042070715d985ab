"""A service checking authgate tokens with ValidateToken (gRPC, grpcio).

ValidateToken checks the signature, issuer, audience and expiry, and whether the session was
revoked (a logout anywhere ends it for every service). An invalid token is an answer, not an
error: `valid` is false and `reason` says why.

    python3 -m grpc_tools.protoc -I proto --python_out=STUBS --grpc_python_out=STUBS \
        proto/authgate/v1/auth.proto
    PYTHONPATH=STUBS python3 check_token.py 127.0.0.1:8080 "$TOKEN"

Prints the verdict as JSON; exits 0 when the token is valid, 1 when it is not, 2 when authgate
could not answer.
"""

import json
import sys

import grpc
from authgate.v1 import auth_pb2, auth_pb2_grpc


class TokenChecker:
    """One channel for the life of the service (grpcio reconnects by itself)."""

    def __init__(self, target, credentials=None):
        # Plain HTTP/2 for loopback; pass grpc.ssl_channel_credentials(...) for TLS or mTLS.
        if credentials is None:
            self.channel = grpc.insecure_channel(target)
        else:
            self.channel = grpc.secure_channel(target, credentials)
        self.stub = auth_pb2_grpc.AuthServiceStub(self.channel)

    def check(self, token, timeout=2.0):
        """The verdict as a dict: {"valid": bool, "reason": str, "message": str, "claims": {...}}.

        Raises grpc.RpcError when authgate cannot answer (UNAVAILABLE, DEADLINE_EXCEEDED, ...):
        a caller must then refuse the request, never let it through.
        """
        answer = self.stub.ValidateToken(auth_pb2.ValidateTokenRequest(token=token), timeout=timeout)
        verdict = {
            "valid": answer.valid,
            "reason": auth_pb2.InvalidReason.Name(answer.reason),
            "message": answer.message,
        }
        if answer.valid:
            c = answer.claims
            verdict["claims"] = {
                "sub": c.sub,
                "sid": c.sid,
                "iss": c.iss,
                "aud": c.aud,
                "exp": c.exp,
                "email": c.email,
                "name": c.name,
                "groups": list(c.groups),
            }
        return verdict


def main(argv):
    if len(argv) != 3:
        print("usage: check_token.py HOST:PORT TOKEN", file=sys.stderr)
        return 2
    checker = TokenChecker(argv[1])
    try:
        verdict = checker.check(argv[2])
    except grpc.RpcError as err:
        print(f"authgate did not answer: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    print(json.dumps(verdict, indent=2))
    return 0 if verdict["valid"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
