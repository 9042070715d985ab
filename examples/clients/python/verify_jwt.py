"""Verifies authgate tokens locally with PyJWT against authgate's published keys (JWKS).

No call to authgate per request: the keys are discovered once from the issuer metadata
(`<issuer>/.well-known/openid-configuration` -> `jwks_uri`) and cached; a token signed by a new
key (authgate rotates them) makes PyJWKClient fetch the set again. Local verification cannot see
a revocation (a logout): ask ValidateToken (check_token.py) where that matters.

    python3 verify_jwt.py http://127.0.0.1:8080 "$TOKEN"

Prints the claims as JSON and exits 0, or prints why the token is refused and exits 1.
"""

import json
import sys
import urllib.request

import jwt

# authgate signs with ES256 (default) or EdDSA; never accept what the token's header asks for.
ALGORITHMS = ["ES256", "EdDSA"]


class Verifier:
    def __init__(self, issuer, audience="authgate", reach_at=None):
        """`reach_at`: where this service reaches authgate when not at the issuer URL (inside a
        cluster or a compose network); the keys are fetched there, `iss` is still the issuer."""
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        base = (reach_at or self.issuer).rstrip("/")
        url = f"{base}/.well-known/openid-configuration"
        with urllib.request.urlopen(url, timeout=5) as answer:
            metadata = json.load(answer)
        if metadata.get("issuer") != self.issuer:
            raise ValueError(f"{url} names issuer {metadata.get('issuer')!r}, not {self.issuer!r}")
        self.jwks_uri = metadata["jwks_uri"].replace(self.issuer, base, 1)
        # Keys are cached for 5 minutes (the JWKS's own max-age); an unknown kid refetches.
        self.keys = jwt.PyJWKClient(self.jwks_uri, cache_keys=True, lifespan=300, timeout=5)

    def verify(self, token):
        """The claims of a valid token; raises jwt.PyJWTError (with the reason) otherwise."""
        key = self.keys.get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            key,
            algorithms=ALGORITHMS,
            audience=self.audience,
            issuer=self.issuer,
            leeway=30,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "sid"]},
        )


def main(argv):
    if len(argv) != 3:
        print("usage: verify_jwt.py ISSUER TOKEN", file=sys.stderr)
        return 2
    verifier = Verifier(argv[1])
    try:
        claims = verifier.verify(argv[2])
    except jwt.PyJWTError as err:
        print(f"refused: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(claims, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
