#!/usr/bin/env python3
"""A consumer that reads its MotherDuck token only at start and on SIGHUP,
like many applications: the test helper of the zero-downtime proof.

Usage: consumer.py ENV_FILE RECORD API_URL ACK_URL|- STATE_DIR

It reads MOTHERDUCK_TOKEN from ENV_FILE, writes its pid to STATE_DIR/pid,
and every 50 ms asks the MotherDuck API (GET /v1/active_accounts) whether
its token works: 200 or 403 count as ok, anything else as a failure. On
SIGHUP it reads the env file again and, with an ACK_URL, acknowledges the
rotation whose record now holds its token (the `ack_secret` beside it).
Counts go to STATE_DIR/counts as JSON after every request; it stops when
STATE_DIR/stop exists.
"""

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

env_file, record, api, ack_url, state = sys.argv[1:6]
hup = False


def on_hup(_signum, _frame):
    global hup
    hup = True


def read_token():
    with open(env_file) as f:
        for line in f:
            if line.startswith("MOTHERDUCK_TOKEN="):
                return line.rstrip("\n").split("=", 1)[1]
    raise SystemExit("no MOTHERDUCK_TOKEN in the env file")


def status_of(req):
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def acknowledge(token):
    with open(record) as f:
        rec = json.load(f)
    if rec.get("token") != token or not rec.get("ack_secret"):
        return "skipped"
    req = urllib.request.Request(
        f"{ack_url}/v1/rotations/{rec['rotation_id']}/ack",
        method="POST",
        headers={"Authorization": f"Bearer {rec['ack_secret']}"},
    )
    return status_of(req)


def write_atomic(name, text):
    tmp = os.path.join(state, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(state, name))


signal.signal(signal.SIGHUP, on_hup)
token = read_token()
write_atomic("pid", f"{os.getpid()}\n")
counts = {"ok": 0, "failed": 0, "reloads": 0, "acks": 0}
while not os.path.exists(os.path.join(state, "stop")):
    if hup:
        hup = False
        token = read_token()
        counts["reloads"] += 1
        if ack_url != "-" and acknowledge(token) == 200:
            counts["acks"] += 1
    req = urllib.request.Request(
        f"{api}/v1/active_accounts", headers={"Authorization": f"Bearer {token}"}
    )
    if status_of(req) in (200, 403):
        counts["ok"] += 1
    else:
        counts["failed"] += 1
    write_atomic("counts", json.dumps(counts))
    time.sleep(0.05)
