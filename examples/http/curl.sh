#!/usr/bin/env bash
# fal from any language: plain HTTP to the falguard sidecar on 127.0.0.1 with
# the real fal URL in x-fal-target-url. No key in the app: the sidecar adds it.
# FAL_PROXY_URL and FAL_TOKEN_URL are set by the falguard webhook.
#
#   ./curl.sh [app]        (default fal-ai/flux/dev)
set -euo pipefail
: "${FAL_PROXY_URL:?set by the falguard webhook in pods annotated falguard.dev/inject}"
: "${FAL_TOKEN_URL:?set by the falguard webhook in pods annotated falguard.dev/inject}"
app="${1:-fal-ai/flux/dev}"

# 1. A synchronous run on fal.run: POST the input, get the result.
echo "== run https://fal.run/$app"
curl -sS --fail-with-body --max-time 60 \
  -H "x-fal-target-url: https://fal.run/$app" \
  -H "content-type: application/json" \
  -d '{"prompt":"a lighthouse at dusk"}' \
  "$FAL_PROXY_URL"
echo

# 2. The queue: submit, then poll the status URL fal returns (also through
#    the sidecar), then fetch the result.
echo "== queue https://queue.fal.run/$app"
submit=$(curl -sS --fail-with-body --max-time 60 \
  -H "x-fal-target-url: https://queue.fal.run/$app" \
  -H "content-type: application/json" \
  -d '{"prompt":"a lighthouse at dusk"}' \
  "$FAL_PROXY_URL")
status_url=$(printf '%s' "$submit" | sed -n 's/.*"status_url": *"\([^"]*\)".*/\1/p')
response_url=$(printf '%s' "$submit" | sed -n 's/.*"response_url": *"\([^"]*\)".*/\1/p')
for _ in $(seq 1 50); do
  status=$(curl -sS --fail-with-body --max-time 30 -H "x-fal-target-url: $status_url" "$FAL_PROXY_URL")
  echo "status: $status"
  case "$status" in *'"COMPLETED"'*) break ;; esac
  sleep 0.2
done
curl -sS --fail-with-body --max-time 60 -H "x-fal-target-url: $response_url" "$FAL_PROXY_URL"
echo

# 3. A short-lived realtime token for one app (fal's tokenProvider shape:
#    {"token","expires_at","app"}), e.g. to hand to a browser.
echo "== token for $app"
curl -sS --fail-with-body --max-time 30 -G --data-urlencode "app=$app" "$FAL_TOKEN_URL" |
  sed 's/"token":"[^"]*"/"token":"<redacted>"/'
echo

# 4. What a refusal looks like: an app the FalCredential does not allow.
echo "== refused: https://fal.run/someone-else/model"
curl -sS --max-time 30 -o /dev/stdout -w '\nHTTP %{http_code}\n' \
  -H "x-fal-target-url: https://fal.run/someone-else/model" \
  -H "content-type: application/json" -d '{}' "$FAL_PROXY_URL"
