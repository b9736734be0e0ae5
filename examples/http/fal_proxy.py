#!/usr/bin/env python3
"""fal from Python with only the standard library, through the falguard sidecar.

The app sends plain HTTP to the sidecar on 127.0.0.1 with the real fal URL in
the x-fal-target-url header; the sidecar adds the key. FAL_PROXY_URL and
FAL_TOKEN_URL are set by the falguard webhook in pods annotated
falguard.dev/inject.

    python3 fal_proxy.py [app]        (default fal-ai/flux/dev)
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

PROXY_URL = os.environ.get("FAL_PROXY_URL")
TOKEN_URL = os.environ.get("FAL_TOKEN_URL")


class FalguardError(Exception):
    """An error answer: the sidecar's own ({"message", "code"}) or fal's."""

    def __init__(self, status, body):
        self.status = status
        self.body = body
        self.code = body.get("code") if isinstance(body, dict) else None
        message = body.get("message") or body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status} {self.code or ''}: {message}")


def _json(resp_or_err):
    raw = resp_or_err.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def fal_request(target_url, payload=None, method=None, timeout=60):
    """Call target_url (an https://fal.run/..., queue.fal.run/... URL) through the sidecar."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(PROXY_URL, data=data, method=method or ("POST" if data else "GET"))
    req.add_header("x-fal-target-url", target_url)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return _json(resp)
    except urllib.error.HTTPError as err:
        raise FalguardError(err.code, _json(err)) from None


def run(app, payload):
    """Synchronous run on fal.run."""
    return fal_request(f"https://fal.run/{app}", payload)


def subscribe(app, payload, poll=0.2, timeout=120):
    """Queue submit, poll until COMPLETED, fetch the result."""
    submitted = fal_request(f"https://queue.fal.run/{app}", payload)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = fal_request(submitted["status_url"])
        if status.get("status") == "COMPLETED":
            return fal_request(submitted["response_url"])
        time.sleep(poll)
    raise TimeoutError(f"request {submitted['request_id']} not completed after {timeout}s")


def realtime_token(app):
    """A short-lived JWT for one app: {"token", "expires_at", "app"}."""
    url = TOKEN_URL + "?" + urllib.parse.urlencode({"app": app})
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return _json(resp)
    except urllib.error.HTTPError as err:
        raise FalguardError(err.code, _json(err)) from None


def main():
    if not PROXY_URL or not TOKEN_URL:
        sys.exit("FAL_PROXY_URL and FAL_TOKEN_URL must be set: the falguard webhook sets them in pods annotated falguard.dev/inject")
    app = sys.argv[1] if len(sys.argv) > 1 else "fal-ai/flux/dev"

    out = run(app, {"prompt": "a lighthouse at dusk"})
    print(json.dumps({"event": "run", "request_id": out.get("request_id"), "prompt": out.get("prompt")}))

    out = subscribe(app, {"prompt": "a lighthouse at dusk"})
    print(json.dumps({"event": "queue", "request_id": out.get("request_id"), "prompt": out.get("prompt")}))

    tok = realtime_token(app)
    print(json.dumps({"event": "token", "app": tok["app"], "expires_at": tok["expires_at"], "has_token": bool(tok["token"])}))

    try:
        run("someone-else/model", {})
        sys.exit("the sidecar let a call to an app outside allowedApps through")
    except FalguardError as err:
        # The code is stable: switch on it, show the message to a person.
        print(json.dumps({"event": "refused", "status": err.status, "code": err.code}))


if __name__ == "__main__":
    main()
