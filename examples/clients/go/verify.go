// A standard-library-only verifier of authgate tokens: discovers the keys from authgate's issuer
// metadata, checks the signature (ES256 or EdDSA, never what the header merely asks for), `iss`,
// `aud` and `exp`, and prints the claims. It cannot see a logout: ask ValidateToken for that.
// Usage (exit status 0: valid; 1: refused, or authgate unreachable):
//
//	go run verify.go http://127.0.0.1:8080 "$TOKEN"
package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log"
	"math/big"
	"net/http"
	"os"
	"strings"
	"time"
)

type jwk struct{ Kty, Crv, Kid, Alg, X, Y string }
type jwtHeader struct{ Alg, Kid string }

var b64 = base64.RawURLEncoding

func getJSON(url string, into any) error {
	res, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, res.Status)
	}
	return json.NewDecoder(res.Body).Decode(into)
}

// signedBy reports whether one of the keys (by kid and alg) made the signature.
func signedBy(keys []jwk, header jwtHeader, signed, sig []byte) bool {
	for _, k := range keys {
		x, _ := b64.DecodeString(k.X)
		y, _ := b64.DecodeString(k.Y)
		switch {
		case k.Kid != header.Kid || k.Alg != header.Alg:
		case k.Alg == "ES256" && k.Kty == "EC" && k.Crv == "P-256" && len(sig) == 64:
			pub := ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
			digest, r, s := sha256.Sum256(signed), new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
			return pub.Curve.IsOnCurve(pub.X, pub.Y) && ecdsa.Verify(&pub, digest[:], r, s)
		case k.Alg == "EdDSA" && k.Kty == "OKP" && k.Crv == "Ed25519" && len(x) == ed25519.PublicKeySize:
			return ed25519.Verify(ed25519.PublicKey(x), signed, sig)
		}
	}
	return false
}

func verify(issuer, token string, keys []jwk) (claims map[string]any, err error) {
	var header jwtHeader
	parts := append(strings.Split(token, "."), "", "")[:3]
	rawHeader, err1 := b64.DecodeString(parts[0])
	rawClaims, err2 := b64.DecodeString(parts[1])
	sig, err3 := b64.DecodeString(parts[2])
	if strings.Count(token, ".") != 2 || err1 != nil || err2 != nil || err3 != nil ||
		json.Unmarshal(rawHeader, &header) != nil || json.Unmarshal(rawClaims, &claims) != nil {
		return nil, fmt.Errorf("not a well-formed JWT")
	}
	if !signedBy(keys, header, []byte(parts[0]+"."+parts[1]), sig) {
		return nil, fmt.Errorf("signature does not verify with a published key (kid %q, alg %q)", header.Kid, header.Alg)
	}
	exp, _ := claims["exp"].(float64)
	if claims["iss"] != issuer || claims["aud"] != "authgate" || time.Now().Unix() > int64(exp)+30 {
		return nil, fmt.Errorf("wrong issuer, wrong audience or expired: iss %v, aud %v, exp %v", claims["iss"], claims["aud"], claims["exp"])
	}
	return claims, nil
}

func main() {
	if log.SetFlags(0); len(os.Args) != 3 {
		log.Fatalln("usage: go run verify.go ISSUER TOKEN")
	}
	issuer := strings.TrimSuffix(os.Args[1], "/")
	var meta struct{ Issuer, Jwks_uri string }
	var set struct{ Keys []jwk }
	if err := getJSON(issuer+"/.well-known/openid-configuration", &meta); err != nil || meta.Issuer != issuer {
		log.Fatalln("issuer metadata:", err, "issuer:", meta.Issuer)
	} else if err := getJSON(meta.Jwks_uri, &set); err != nil {
		log.Fatalln("JWKS:", err)
	}
	claims, err := verify(issuer, os.Args[2], set.Keys)
	if err != nil {
		log.Fatalln("refused:", err)
	}
	out, _ := json.MarshalIndent(claims, "", "  ")
	fmt.Printf("%s\n", out)
}
