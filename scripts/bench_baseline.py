#!/usr/bin/env python3
"""The baseline `scripts/bench.py` compares `rotate --all` with: a plain
sequential script, as a team would write instead of running a rotator. Per
policy, one after another: create a token, check it works, revoke the
previous one. One kept-alive HTTP connection, no rate limit, no store.

Run alone: bench_baseline.py URL ADMIN_TOKEN N
"""

import http.client
import json
import sys
import time
import urllib.parse


class Api:
    def __init__(self, url, token):
        u = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        self.token = token

    def call(self, method, path, body=None, token=None, ok=(200,)):
        headers = {"Authorization": f"Bearer {token or self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        payload = r.read()
        if r.status not in ok:
            raise SystemExit(f"baseline: {method} {path}: {r.status} {payload[:200]!r}")
        return json.loads(payload or b"{}") if r.status == 200 else {}


def create(api, i):
    return api.call("POST", f"/v1/users/svc_{i}/tokens",
                    {"name": "baseline", "ttl": 2592000, "token_type": "read_write"})


def rotate_all(url, token, n):
    """Seconds the timed pass over n policies took."""
    api = Api(url, token)
    previous = [create(api, i)["id"] for i in range(n)]  # untimed set-up
    start = time.monotonic()
    for i in range(n):
        new = create(api, i)
        # A service account's token is not an admin's: 403 means it works,
        # 401 would mean it does not.
        api.call("GET", "/v1/active_accounts", token=new["token"], ok=(200, 403))
        api.call("DELETE", f"/v1/users/svc_{i}/tokens/{previous[i]}")
        previous[i] = new["id"]
    took = time.monotonic() - start
    for i in range(n):  # leave the accounts as they were
        api.call("DELETE", f"/v1/users/svc_{i}/tokens/{previous[i]}")
    return took


if __name__ == "__main__":
    print(f"{rotate_all(sys.argv[1], sys.argv[2], int(sys.argv[3])):.3f}")
