#!/usr/bin/env python3
"""Benchmarks motherduck-rotator against its own simulator and prints one table.

Every MotherDuck call the simulator answers takes --latency (default 50 ms).
The rows:

- one `rotate` (overlap 0, verified by the built-in MotherDuck check) against
  its floor: create + verify + revoke, three calls;
- `rotate --all` on 50 and 200 policies, with the default rate limit and with
  1,000 requests/s, against `baseline.py` (a plain sequential script making
  the same calls, one policy after another);
- `run` on N policies that are all due (their first tokens), for each N in
  --sizes: time to the first token created, time until all are rotated, the
  achieved request rate against the limit, time until `/readyz` answers 200, peak and idle memory, threads,
  idle CPU, the size of `/metrics`, series per policy, and scrape time;
- `validate` on the largest configuration.

Times are wall-clock on this machine; nothing here asserts a target. With
--smoke it runs tiny sizes, to check the harness itself.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_baseline  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"bench: {what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"bench: {what} did not listen on {port} within {timeout} s")


class Simulator:
    def __init__(self, binary, workdir, latency_ms):
        self.port = free_port()
        self.token_file = os.path.join(workdir, "admin.token")
        self.proc = subprocess.Popen(
            [binary, "simulator", "--listen", f"127.0.0.1:{self.port}",
             "--admin-token-file", self.token_file, "--latency", f"{latency_ms}ms"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "the simulator")
        for _ in range(200):
            if os.path.exists(self.token_file) and open(self.token_file).read().strip():
                break
            time.sleep(0.02)
        self.token = open(self.token_file).read().strip()
        self.url = f"http://127.0.0.1:{self.port}"
        self.accounts = 0

    def accounts_up_to(self, n):
        """Creates service accounts svc_0 .. svc_{n-1} (64 at a time)."""
        def create(i):
            req = urllib.request.Request(
                f"{self.url}/v1/users", method="POST",
                data=json.dumps({"username": f"svc_{i}"}).encode(),
                headers={"Authorization": f"Bearer {self.token}",
                         "Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=30).read()
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(create, range(self.accounts, n)))
        self.accounts = max(self.accounts, n)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def write_config(path, sim, n, *, rate=None, listen="127.0.0.1:1", verify=True,
                 store="store"):
    lines = ["[motherduck]", f'api_url = "{sim.url}"',
             f'admin_token = {{ file = "{sim.token_file}" }}']
    if rate is not None:
        lines.append(f"rate_limit_per_second = {rate}")
    lines += ["", "[daemon]", f'listen = "{listen}"', "",
              "[stores.local]", 'type = "file"', f'directory = "{store}"', ""]
    hook = 'verify = [{ type = "motherduck", interval = "10ms" }]\n' if verify else ""
    body = "\n".join(lines) + "\n"
    body += "".join(
        f'[[policy]]\nname = "p{i}"\nservice_account = "svc_{i}"\ntoken_ttl = "30d"\n'
        f'schedule = {{ interval = "1d" }}\noverlap = "0s"\n{hook}'
        f'destinations = [{{ store = "local", path = "p{i}.json" }}]\n\n'
        for i in range(n))
    with open(path, "w") as f:
        f.write(body)


def run(binary, config, *args, cwd):
    start = time.monotonic()
    out = subprocess.run([binary, "--config", config, *args], cwd=cwd,
                         capture_output=True, text=True)
    took = time.monotonic() - start
    if out.returncode != 0:
        sys.exit(f"bench: `{' '.join(args)}` failed ({out.returncode}):\n"
                 f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return took


def proc_status(pid):
    """(rss MiB, peak rss MiB, threads) from /proc."""
    try:
        text = open(f"/proc/{pid}/status").read()
    except OSError:
        return None
    field = lambda k: int(re.search(rf"^{k}:\s+(\d+)", text, re.M).group(1))
    return field("VmRSS") / 1024, field("VmHWM") / 1024, field("Threads")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url):
    start = time.monotonic()
    body = urllib.request.urlopen(url, timeout=60).read().decode()
    return body, time.monotonic() - start


def metric_sum(body, name, **labels):
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def daemon_run(binary, sim, n, rate, workdir, idle_seconds):
    """`run` on n policies whose first tokens are all due."""
    d = os.path.join(workdir, f"run{n}")
    os.makedirs(d)
    port = free_port()
    config = os.path.join(d, "config.toml")
    write_config(config, sim, n, rate=rate, listen=f"127.0.0.1:{port}", verify=False)
    store = os.path.join(d, "store")
    start = time.monotonic()
    proc = subprocess.Popen([binary, "--config", config, "run"], cwd=d,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    ready = None
    peak_threads = 0
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    done_at = None
    last_scrape = 0.0
    deadline = start + max(120, 3 * n / rate + 60)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: `run` on {n} policies exited with {proc.returncode}")
        st = proc_status(proc.pid)
        if st:
            peak_threads = max(peak_threads, st[2])
        if first is None and os.path.isdir(store):
            with os.scandir(store) as it:
                if any(e.name.endswith(".json") for e in it):
                    first = time.monotonic() - start
        if ready is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        ready = time.monotonic() - start
            except OSError:
                pass
        now = time.monotonic()
        if first is not None and ready is not None and now - last_scrape >= 0.5:
            last_scrape = now
            try:
                body, _ = scrape(metrics_url)
            except OSError:
                body = ""
            if metric_sum(body, "motherduck_rotator_rotations_total", outcome="success") >= n:
                done_at = time.monotonic() - start
                break
        time.sleep(0.02)
    if done_at is None:
        proc.kill()
        sys.exit(f"bench: `run` did not rotate {n} policies in time")
    body, _ = scrape(metrics_url)
    calls = metric_sum(body, "motherduck_rotator_api_requests_total")
    peak_rss = proc_status(proc.pid)[1]
    cpu0 = cpu_seconds(proc.pid)
    time.sleep(idle_seconds)
    cpu1 = cpu_seconds(proc.pid)
    rss, peak_rss2, threads = proc_status(proc.pid)
    times = []
    for _ in range(3):
        body, took = scrape(metrics_url)
        times.append(took)
    series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    per_policy = sum(1 for line in body.splitlines()
                     if line and not line.startswith("#") and 'policy="p0"' in line)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    return {
        "first": first, "ready": ready, "all": done_at, "calls": calls,
        "rate": calls / done_at / rate,
        "peak_rss": max(peak_rss, peak_rss2), "idle_rss": rss,
        "threads": max(peak_threads, threads),
        "idle_cpu": 100 * (cpu1 - cpu0) / idle_seconds,
        "metrics_mb": len(body.encode()) / 1e6, "series": series,
        "per_policy": per_policy, "scrape": statistics.median(times),
        "floor_all": calls / rate,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/motherduck-rotator")
    ap.add_argument("--latency", type=int, default=50, help="ms per simulated call")
    ap.add_argument("--rate", type=int, default=100, help="rate limit for `run` rows")
    ap.add_argument("--sizes", default="1000,5000,10000")
    ap.add_argument("--all-sizes", default="50,200", help="policies for `rotate --all`")
    ap.add_argument("--idle", type=float, default=10, help="seconds to measure idle CPU")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; checks the harness")
    a = ap.parse_args()
    if a.smoke:
        a.sizes, a.all_sizes, a.idle, a.latency = "20", "5", 0.5, 5
    sizes = [int(s) for s in a.sizes.split(",") if s]
    all_sizes = [int(s) for s in a.all_sizes.split(",") if s]
    binary = os.path.abspath(a.bin)
    workdir = tempfile.mkdtemp(prefix="mdr-bench-")
    rows = []
    sim = Simulator(binary, workdir, a.latency)
    try:
        lat = a.latency / 1000
        sim.accounts_up_to(max(sizes + all_sizes + [1]))

        # One rotation against its floor.
        d = os.path.join(workdir, "one")
        os.makedirs(d)
        cfg = os.path.join(d, "config.toml")
        write_config(cfg, sim, 1)
        run(binary, cfg, "rotate", "p0", cwd=d)  # the first token
        times = [run(binary, cfg, "rotate", "p0", cwd=d) for _ in range(5)]
        one = statistics.median(times)
        floor = 3 * lat
        rows.append(("one rotation (`rotate`, overlap 0)", f"{one * 1000:.0f} ms",
                     f"{one / floor:.2f}x floor ({floor * 1000:.0f} ms)"))

        # rotate --all against the sequential script.
        for n in all_sizes:
            for rate, label, extra in ((None, "defaults", []),
                                       (1000, "1,000 req/s", []),
                                       (1000, "1,000 req/s, --concurrency 64",
                                        ["--concurrency", "64"])):
                d = os.path.join(workdir, f"all{n}-{rate}-{len(extra)}")
                os.makedirs(d)
                cfg = os.path.join(d, "config.toml")
                write_config(cfg, sim, n, rate=rate)
                run(binary, cfg, "rotate", "--all", *extra, cwd=d)  # first tokens
                took = run(binary, cfg, "rotate", "--all", *extra, cwd=d)
                base = bench_baseline.rotate_all(sim.url, sim.token, n)
                rows.append((f"`rotate --all`, {n} policies, {label}", f"{took:.2f} s",
                             f"{base / took:.1f}x the script ({base:.2f} s)"))

        for n in sizes:
            r = daemon_run(binary, sim, n, a.rate, workdir, a.idle)
            sim.accounts_up_to(n)
            rows += [
                (f"{n}: start to first token created", f"{r['first']:.2f} s", ""),
                (f"{n}: start to /readyz 200", f"{r['ready']:.2f} s", ""),
                (f"{n}: all rotated", f"{r['all']:.1f} s",
                 f"{r['all'] / r['floor_all']:.2f}x calls/limit ({r['calls']:.0f} calls)"),
                (f"{n}: achieved rate / limit", f"{r['rate']:.2f}", f"limit {a.rate}/s"),
                (f"{n}: memory peak / idle", f"{r['peak_rss']:.0f} / {r['idle_rss']:.0f} MiB", ""),
                (f"{n}: threads (max)", f"{r['threads']}", ""),
                (f"{n}: idle CPU", f"{r['idle_cpu']:.2f} % of a core", f"over {a.idle:g} s"),
                (f"{n}: /metrics", f"{r['metrics_mb']:.2f} MB, {r['series']} series",
                 f"{r['per_policy']} per policy, scrape {r['scrape'] * 1000:.0f} ms"),
            ]

        # validate on the largest configuration.
        n = max(sizes)
        d = os.path.join(workdir, "validate")
        os.makedirs(d)
        cfg = os.path.join(d, "config.toml")
        write_config(cfg, sim, n)
        took = run(binary, cfg, "validate", cwd=d)
        rows.append((f"`validate`, {n} policies", f"{took:.2f} s", ""))
    finally:
        sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"latency {a.latency} ms per call, {os.cpu_count()} CPUs, binary {a.bin}")
    print(f"| {'what'.ljust(width)} | {'measured'.ljust(vwidth)} | against |")
    print(f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|---------|")
    for what, value, against in rows:
        print(f"| {what.ljust(width)} | {value.ljust(vwidth)} | {against} |")


if __name__ == "__main__":
    main()
