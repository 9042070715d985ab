#!/usr/bin/env bash
# The README's grpcurl lines as a script, one step of the login at a time (grpcurl finds the
# methods by server reflection; authgate serves v1 and v1alpha).
#
#   AUTHGATE=127.0.0.1:8080 ./authgate.sh start [REDIRECT_URI]
#       the services, the health check, and GetLoginUrl: send the browser to loginUrl, keep
#       state and binding for the callback
#   ./authgate.sh exchange CODE STATE BINDING ISS [REDIRECT_URI]
#       ExchangeCode after the provider redirected to REDIRECT_URI?code=CODE&state=STATE&iss=ISS
#   ./authgate.sh use ACCESS_TOKEN REFRESH_HANDLE
#       GetUserInfo, ValidateToken, GetJwks, RefreshSession, then Logout with the new token and
#       ValidateToken again (the session has ended for every service)
#
# Each answer is printed as JSON under a "== Method" line. Exits non-zero if a call fails.
set -euo pipefail
AUTHGATE=${AUTHGATE:-127.0.0.1:8080}
service=authgate.v1.AuthService

call() { # call METHOD [grpcurl options...]: prints "== METHOD" and the answer
  local method=$1
  shift
  echo "== $method"
  grpcurl -plaintext "$@" "$AUTHGATE" "$method"
}
field() { # field NAME: reads a top-level string field of a JSON answer on stdin
  python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
}

case "${1:-}" in
  start)
    echo "== list"
    grpcurl -plaintext "$AUTHGATE" list
    call grpc.health.v1.Health/Check
    redirect=${2:-}
    call "$service/GetLoginUrl" -d "{\"redirect_uri\": \"$redirect\", \"scopes\": [\"offline_access\"]}"
    ;;
  exchange)
    [ $# -ge 5 ] || { echo "usage: $0 exchange CODE STATE BINDING ISS [REDIRECT_URI]" >&2; exit 2; }
    call "$service/ExchangeCode" \
      -d "{\"code\": \"$2\", \"state\": \"$3\", \"binding\": \"$4\", \"iss\": \"$5\", \"redirect_uri\": \"${6:-}\"}"
    ;;
  use)
    [ $# -eq 3 ] || { echo "usage: $0 use ACCESS_TOKEN REFRESH_HANDLE" >&2; exit 2; }
    call "$service/GetUserInfo" -H "authorization: Bearer $2" -d '{"refresh": true}'
    call "$service/ValidateToken" -d "{\"token\": \"$2\"}"
    call "$service/GetJwks"
    refreshed=$(call "$service/RefreshSession" -d "{\"refresh_token\": \"$3\"}")
    echo "$refreshed"
    token=$(sed 1d <<<"$refreshed" | field accessToken)
    call "$service/Logout" -H "authorization: Bearer $token" -d '{}'
    call "$service/ValidateToken" -d "{\"token\": \"$token\"}"
    ;;
  *)
    echo "usage: $0 start [REDIRECT_URI] | exchange CODE STATE BINDING ISS [REDIRECT_URI] | use TOKEN REFRESH" >&2
    exit 2
    ;;
esac
