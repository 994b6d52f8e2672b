#!/usr/bin/env python3
"""The asynchronous-jobs benchmark (part of `make bench`): submit latency at a fixed rate, time
from submit to pickup, and end-to-end jobs/s with one and with two invocation-worker processes.

It starts its own stack on 127.0.0.1 (mock LLM answering instantly, gateway-api, billing-worker,
invocation-workers) with its own database and queue prefix, stops exactly what it started (by
PID), and appends a section to docs/BENCHMARKS.md. Standard library only; needs the release
binaries (`make bench` builds them).
"""
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_used, proc_ticks  # noqa: E402  (the main benchmark's CPU accounting)
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
DB = "ai_gateway_bench_jobs"
PREFIX = "benchjobs_"
GATEWAY, MOCK, OPS1, OPS2, BILLING_OPS = 18280, 19390, 19111, 19112, 19113
RATE = int(os.environ.get("BENCH_JOBS_RATE", "500"))
SECONDS = int(os.environ.get("BENCH_JOBS_SECONDS", "10"))
BURST = int(os.environ.get("BENCH_JOBS_BURST", "3000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "docs", "BENCHMARKS.md"))
API = f"http://127.0.0.1:{GATEWAY}"
ENV = dict(os.environ)
ENV.update({
    "RUST_LOG": "warn",
    "APP__DATABASE__URL": f"postgres://postgres@127.0.0.1:5432/{DB}",
    "APP__BROKER__QUEUE_PREFIX": PREFIX,
    "APP__AUTH__JWT_SECRET": base64.b64encode(os.urandom(48)).decode(),
    "APP__SECURITY__MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    "APP__AUTH__BCRYPT_COST": "4",
    "ADMIN_EMAIL": "bench-jobs@example.com",
    "ADMIN_PASSWORD": "bench-jobs-password",
})
PROCS = {}


def start(name, *args, **env):
    log = open(f"/tmp/bench-jobs-{name}.log", "w")
    PROCS[name] = subprocess.Popen(list(args), env={**ENV, **env}, stdout=log, stderr=log)


def stop(name):
    proc = PROCS.pop(name, None)
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def psql(sql, db=DB):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def api(method, path, token=None, body=None):
    request = urllib.request.Request(API + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
        return json.loads(text) if text else None


def wait_http(url, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"jobs bench: {url} never became ready")


def seed():
    admin = api("POST", "/v1/auth/login", body={"email": ENV["ADMIN_EMAIL"], "password": ENV["ADMIN_PASSWORD"]})["access_token"]
    provider = api("POST", "/v1/admin/providers", admin,
                   {"name": "mock", "kind": "openai", "base_url": f"http://127.0.0.1:{MOCK}/v1"})
    api("POST", f"/v1/admin/providers/{provider['id']}/keys", admin, {"api_key": "sk-mock", "weight": 1})
    api("POST", "/v1/admin/models", admin, {"name": "bench-image", "provider_id": provider["id"], "kind": "image",
                                            "pricing": {"per_image": "0.0001"}})
    keys = []
    for i in range(16):
        user = api("POST", "/v1/admin/users", admin, {"email": f"jobs{i}@bench.local", "password": "bench-password"})
        api("POST", f"/v1/admin/users/{user['id']}/balance-adjustments", admin, {"amount": "100000", "reason": "bench"})
        token = api("POST", "/v1/auth/login", body={"email": f"jobs{i}@bench.local", "password": "bench-password"})["access_token"]
        keys.append(api("POST", "/v1/me/access-keys", token, {"name": "bench"})["key"])
    return keys


async def read_status(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


def submit_request(key, i):
    body = json.dumps({"model": "bench-image", "prompt": f"bench {i}"}).encode()
    return (f"POST /v1/jobs/image-generation HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def fixed_rate(keys, rate, seconds, connections=64):
    """Submits on a fixed schedule over keep-alive connections; latency per submit in ms."""
    free = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(await asyncio.open_connection("127.0.0.1", GATEWAY))
    latencies, failures = [], 0

    async def one(i):
        nonlocal failures
        reader, writer = await free.get()
        started = time.perf_counter()
        writer.write(submit_request(keys[i % len(keys)], i))
        status = await read_status(reader)
        latencies.append((time.perf_counter() - started) * 1000)
        failures += status != 202
        free.put_nowait((reader, writer))

    tasks, begin = [], time.perf_counter()
    for i in range(rate * seconds):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - begin
    while not free.empty():
        free.get_nowait()[1].close()
    return sorted(latencies), failures, len(latencies) / elapsed


async def burst(keys, n, connections=32):
    free = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(await asyncio.open_connection("127.0.0.1", GATEWAY))

    async def one(i):
        reader, writer = await free.get()
        writer.write(submit_request(keys[i % len(keys)], i))
        status = await read_status(reader)
        free.put_nowait((reader, writer))
        return status

    statuses = await asyncio.gather(*(one(i) for i in range(n)))
    assert all(s == 202 for s in statuses), "some submits failed"


def pct(values, p):
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def pickup_p50(port):
    """The median of job_pickup_seconds from a worker's /metrics (linear within its bucket)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith("job_pickup_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total, previous_le, previous_count = buckets[-1][1], 0.0, 0.0
    for le, count in buckets:
        if count >= total / 2:
            if le == float("inf"):
                return previous_le * 1000
            share = (total / 2 - previous_count) / max(count - previous_count, 1)
            return (previous_le + (le - previous_le) * share) * 1000
        previous_le, previous_count = le, count
    return float("nan")


def pickup_from_db(after_id):
    """Exact submit → pickup percentiles (p50, p99, in ms) of the jobs with id > after_id: from
    `created_at` (the start of the submitting transaction) to `published_at`, which the first
    claim sets (a submission leaves it empty; only the stranded-job sweeper, idle for 30 s, also
    sets it). Both are Postgres clock readings, so no clock skew enters."""
    row = psql("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) || ' ' || "
               "percentile_cont(0.99) WITHIN GROUP (ORDER BY d) FROM ("
               "SELECT extract(epoch FROM published_at - created_at) * 1000 AS d FROM async_jobs "
               f"WHERE id > {int(after_id)} AND published_at IS NOT NULL) s")
    p50, p99 = (float(v) for v in row.split())
    return p50, p99


def billing_lag_from_db(after_id):
    """Percentiles (p50, p99, in ms) of completion → settlement of the COMPLETED jobs with
    id > after_id: from the job's last update (the transaction that marked it COMPLETED and
    parked its charge) to its usage log's `created_at` (the settling transaction)."""
    row = psql("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) || ' ' || "
               "percentile_cont(0.99) WITHIN GROUP (ORDER BY d) FROM ("
               "SELECT extract(epoch FROM u.created_at - j.updated_at) * 1000 AS d "
               "FROM async_jobs j JOIN usage_logs u ON u.request_id = j.job_id "
               f"WHERE j.id > {int(after_id)} AND j.status = 'COMPLETED') s")
    p50, p99 = (float(v) for v in row.split())
    return p50, p99


# Processes whose CPU is accounted per job (kernel names, at most 15 characters), and labels.
CPU_ACCOUNTED = (("postgres", "PostgreSQL"), ("beam.smp", "RabbitMQ"), ("gateway-api", "gateway-api"),
                 ("invocation-work", "invocation-worker"), ("billing-worker", "billing-worker"),
                 ("mock-llm", "mock"))


def terminal():
    return int(psql("SELECT count(*) FROM async_jobs WHERE status IN ('COMPLETED','FAILED')"))


def start_workers(count):
    for n, port in zip(range(count), (OPS1, OPS2)):
        start(f"invocation{n}", f"{BIN}/invocation-worker", APP__OPS__PORT=str(port), APP__BROKER__PREFETCH="64")
        wait_http(f"http://127.0.0.1:{port}/readyz")


def stop_workers():
    for n in range(2):
        stop(f"invocation{n}")


def main():
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    start("mock", f"{BIN}/mock-llm", "--host", "127.0.0.1", "--port", str(MOCK), "--latency-ms", "0")
    start("gateway", f"{BIN}/gateway-api", APP__SERVER__PORT=str(GATEWAY))
    wait_http(f"{API}/readyz")
    start("billing", f"{BIN}/billing-worker", APP__OPS__PORT=str(BILLING_OPS), APP__BROKER__PREFETCH="256")
    keys = seed()
    start_workers(1)

    submit_runs, pickups, cpu_runs, lags = [], [], [], []
    for _ in range(REPEATS):
        last_id = int(psql("SELECT coalesce(max(id), 0) FROM async_jobs"))
        before = proc_ticks()
        latencies, failures, achieved = asyncio.run(fixed_rate(keys, RATE, SECONDS))
        submit_runs.append((pct(latencies, 50), pct(latencies, 99), achieved, failures))
        deadline = time.time() + 120
        while terminal() < int(psql("SELECT count(*) FROM async_jobs")) and time.time() < deadline:
            time.sleep(0.5)
        # Every job of the run has ended; its charges are settled a moment later.
        time.sleep(1)
        cpu_runs.append({name: used / max(len(latencies), 1) * 1e6
                         for name, used in cpu_used(before, proc_ticks(), [n for n, _ in CPU_ACCOUNTED]).items()})
        pickups.append(pickup_from_db(last_id))
        lags.append(billing_lag_from_db(last_id))
    histogram_pickup = pickup_p50(OPS1)

    throughput = {}
    for workers in (1, 2):
        runs = []
        for _ in range(REPEATS):
            stop_workers()
            before = terminal()
            asyncio.run(burst(keys, BURST))
            started = time.perf_counter()
            start_workers(workers)
            deadline = time.time() + 300
            while terminal() < before + BURST and time.time() < deadline:
                time.sleep(0.05)
            runs.append((terminal() - before) / (time.perf_counter() - started))
        throughput[workers] = statistics.median(runs)
    stop_workers()
    for name in list(PROCS):
        stop(name)

    p50 = statistics.median(r[0] for r in submit_runs)
    p99 = statistics.median(r[1] for r in submit_runs)
    achieved = statistics.median(r[2] for r in submit_runs)
    failures = sum(r[3] for r in submit_runs)
    pickup = statistics.median(p[0] for p in pickups)
    pickup_p99 = statistics.median(p[1] for p in pickups)
    lag_p50 = statistics.median(lag[0] for lag in lags)
    lag_p99 = statistics.median(lag[1] for lag in lags)
    cpu = {name: statistics.median(run[name] for run in cpu_runs) for name, _ in CPU_ACCOUNTED}
    cpu_total = statistics.median(sum(run.values()) for run in cpu_runs)
    cpu_line = ", ".join(f"{label} {cpu[name]:,.0f}" for name, label in CPU_ACCOUNTED)
    verdict = lambda ok: "PASS" if ok else "MISS"
    section = f"""
## Asynchronous jobs

Measured by `tests/bench/jobs.py` (its own stack: release binaries, database `{DB}`, queue prefix
`{PREFIX}`, mock LLM answering instantly); medians of {REPEATS} runs.

| measure | result | target | |
|---|---|---|---|
| submit latency at {RATE} submits/s, p50 / p99 (achieved {achieved:.0f}/s, {failures} non-202) | {p50:.2f} / {p99:.2f} ms | p99 <= 10 ms | {verdict(p99 <= 10)} |
| submit → pickup by the worker, p50 (p99 {pickup_p99:.1f} ms; each run's p50: {", ".join(f"{p[0]:.1f}" for p in pickups)}) | {pickup:.1f} ms | p50 <= 5 ms | {verdict(pickup <= 5)} |
| end to end, {BURST} queued jobs, 1 invocation-worker | {throughput[1]:.0f} jobs/s | >= 1000 jobs/s | {verdict(throughput[1] >= 1000)} |
| end to end, {BURST} queued jobs, 2 invocation-workers | {throughput[2]:.0f} jobs/s | >= 1000 jobs/s | {verdict(throughput[2] >= 1000)} |

Submit → pickup is exact, per job, from Postgres: from the job's `created_at` (the start of the
transaction that inserted it) to its `published_at`, which the worker's first claim sets; both are
Postgres clock readings. (The worker's `job_pickup_seconds` histogram, interpolated linearly
within its bucket, bucket bounds 1, 2.5, 5, 10, 25 ms, gave a median of {histogram_pickup:.1f} ms
over the same runs.)

Billing lag at {RATE} submits/s (not a target): a COMPLETED job's charge was settled (usage
log written, balance debited, hold closed) p50 {lag_p50:.1f} ms / p99 {lag_p99:.1f} ms after the
transaction that completed the job; it includes `APP__JOBS__BILLING_LINGER_MS`, the time a
charge waits for others to share its message to `billing_log_queue`. Until then the job's hold
keeps covering the amount.

CPU per job at {RATE} submits/s (µs of CPU per submitted job, from the start of a run until
its jobs had ended and been billed, median of the runs; the load generator not counted):

{cpu_line}; **{cpu_total:,.0f} in all**.

On 2 cores (2,000,000 µs of CPU per second) these processes alone would allow at most
{2e6 / cpu_total if cpu_total else float("nan"):,.0f} jobs/s at this rate, where each statement and message carries only a few jobs (the burst runs below
batch far more per statement).

End to end means: the jobs were submitted with no worker running, then the workers were started
and the clock ran until every job was COMPLETED or FAILED in Postgres (claim, provider call,
result and charge written, billing published).
"""
    with open(OUT, "a") as out:
        out.write(section)
    print(section)


if __name__ == "__main__":
    try:
        main()
    finally:
        for name in list(PROCS):
            stop(name)
