// An independent verifier for authgate's tokens, as another service in the fleet would do it:
// discover authgate's issuer metadata, fetch its JWKS over HTTP, and verify a token with `jose`.
//
//   node verify-jwt.mjs <issuer> <audience> <token>
//
// Prints the verified claims as JSON and exits 0, or prints the reason and exits 1.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [issuer, audience, token] = process.argv.slice(2);
if (!issuer || !audience || !token) {
  console.error('usage: node verify-jwt.mjs <issuer> <audience> <token>');
  process.exit(2);
}
try {
  const discovery = await fetch(`${issuer}/.well-known/openid-configuration`).then((r) => r.json());
  if (discovery.issuer !== issuer) throw new Error(`discovery names issuer ${discovery.issuer}`);
  const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri));
  const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer, audience });
  console.log(JSON.stringify({ header: protectedHeader, claims: payload }));
} catch (err) {
  console.error(`${err.code ?? 'ERROR'}: ${err.message}`);
  process.exit(1);
}
