#!/usr/bin/env python3
"""Helpers of `make bench` (tests/bench/run.sh). Standard library only.

Subcommands:
  seed        register the mock providers, models and bench users (balance, one access key each)
  wrk-json    read wrk's output (our Lua `done` line) and print one JSON result
  hey-json    read hey's CSV output and print one JSON result (percentiles of every request)
  publish     publish N valid billing messages straight to the bench billing queue (AMQP 0-9-1)
  settle-wait wait until usage_logs holds N rows, print the settlement rate
  streams     hold N streaming chat calls open through the gateway and sample its RSS
  report      turn the results (JSON lines) into docs/BENCHMARKS.md
"""
import argparse
import asyncio
import csv
import datetime
import io
import json
import os
import random
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

CHAT_BODY = {"model": "demo-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}


# ------------------------------------------------------------------ other load on the machine

# Processes of the benchmark itself and of the services it uses; anything else (a compiler, another
# test suite) competes for the same 2 cores and is reported as "other CPU".
OURS = {"wrk", "hey", "mock-llm", "gateway-api", "billing-worker", "nginx", "postgres", "beam.smp",
        "erl_child_setup", "epmd", "inet_gethost", "pgbench", "psql", "python3", "bash", "curl",
        "rabbitmqctl", "sleep", "timeout", "sed", "awk", "cat", "tee", "grep", "head", "tail", "date",
        "seq", "make", "erl", "sh", "dropdb", "createdb", "process_api"}


def serves_bench_database(pid):
    """Whether a postgres process counts for the benchmark: the server's own processes (WAL
    writer, checkpointer, ...) and the backends of the benchmark's database (BENCH_PG_DB), but
    not backends of other databases (another test suite on the shared instance)."""
    database = os.environ.get("BENCH_PG_DB")
    if not database:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode(errors="replace").split()
    except OSError:
        return True
    # A backend's title is "postgres: [CLUSTER:] USER DATABASE ADDRESS(PORT) STATE"; the
    # server's own processes (checkpointer, walwriter, ...) have no address in theirs.
    if title[:1] != ["postgres:"]:
        return True
    title = title[1:]
    if title and title[0].endswith(":"):
        title = title[1:]
    if len(title) >= 3 and ("(" in title[2] or title[2] == "[local]"):
        return title[1] == database
    return True


def proc_ticks():
    ticks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ppid = int(fields[1])
        if pid == "2" or ppid == 2:  # kernel threads
            continue
        if name == "postgres" and not serves_bench_database(pid):
            name = "postgres-other"
        ticks[pid] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def foreign_share(before, after, seconds):
    """CPU of processes that are not ours between two snapshots, in % of one core, and the top name."""
    per_name = {}
    for pid, (name, t) in after.items():
        if name in OURS or name.startswith("python"):
            continue
        delta = t - before[pid][1] if pid in before else t
        if delta > 0:
            per_name[name] = per_name.get(name, 0) + delta
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(per_name.values()) / hz / seconds * 100
    top = max(per_name, key=per_name.get) if per_name else ""
    return total, top


def cmd_cpu_watch(a):
    """Samples every 0.5 s: epoch, % of one core used by other processes, the biggest of them."""
    before, t0 = proc_ticks(), time.monotonic()
    with open(a.out, "a") as out:
        while True:
            time.sleep(0.5)
            after, t1 = proc_ticks(), time.monotonic()
            share, top = foreign_share(before, after, t1 - t0)
            out.write(f"{time.time():.2f} {share:.1f} {top or '-'}\n")
            out.flush()
            before, t0 = after, t1


def cmd_quiet(a):
    """Waits (at most --max-wait s) until other processes use less than --threshold % of one core."""
    deadline = time.monotonic() + a.max_wait
    while True:
        before, t0 = proc_ticks(), time.monotonic()
        time.sleep(3)
        share, top = foreign_share(before, proc_ticks(), time.monotonic() - t0)
        if share < a.threshold:
            print(f"other processes use {share:.0f}% of a core")
            return
        if time.monotonic() > deadline:
            print(f"still busy after {a.max_wait:.0f}s: other processes use {share:.0f}% of a core "
                  f"(mostly {top}); measuring anyway")
            return
        print(f"waiting for a quieter machine: other processes use {share:.0f}% of a core (mostly {top})",
              file=sys.stderr)


# The processes whose CPU the throughput runs account per request, by the name the kernel gives
# them (/proc/PID/stat, at most 15 characters), and the label they get in the report.
CPU_ACCOUNTED = (("mock-llm", "mock"), ("nginx", "nginx"), ("gateway-api", "gateway-api"),
                 ("postgres", "PostgreSQL"), ("beam.smp", "RabbitMQ"), ("billing-worker", "billing-worker"))


def cmd_cpu_snap(a):
    """Writes the CPU ticks of every process now (by PID), for `wrk-json --cpu-before`."""
    with open(a.out, "w") as out:
        json.dump({"ticks": proc_ticks()}, out)


def cpu_used(before, after, names):
    """CPU seconds of the processes named `names` between two `proc_ticks` snapshots (a process
    that started in between counts in full; one that ended is lost, which the long-lived
    services never do)."""
    used = {name: 0 for name in names}
    for pid, (name, t) in after.items():
        if name in used:
            used[name] += t - before[pid][1] if pid in before and before[pid][0] == name else t
    hz = os.sysconf("SC_CLK_TCK")
    return {name: ticks / hz for name, ticks in used.items()}


def cpu_since(path):
    """CPU seconds used since the `cpu-snap` snapshot in `path`, by accounted process name."""
    with open(path) as f:
        snap = json.load(f)
    return cpu_used(snap["ticks"], proc_ticks(), [name for name, _ in CPU_ACCOUNTED])


def load_cpu_log(path):
    samples = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    samples.append((float(parts[0]), float(parts[1]), parts[2]))
    return samples


def window_foreign(samples, t0, t1):
    inside = [(share, top) for (t, share, top) in samples if t0 < t <= t1 + 0.5]
    if not inside:
        return float("nan"), ""
    tops = {}
    for share, top in inside:
        tops[top] = tops.get(top, 0) + share
    return sum(s for s, _ in inside) / len(inside), max(tops, key=tops.get)


# ---------------------------------------------------------------------------------------- seed


def api(base, method, path, token=None, body=None, expect=(200, 201)):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    if status not in expect:
        raise SystemExit(f"seed: {method} {path} answered {status}: {text[:300]!r}")
    return json.loads(text) if text else None


def login(base, email, password):
    return api(base, "POST", "/v1/auth/login", body={"email": email, "password": password})["access_token"]


def cmd_seed(a):
    admin = login(a.api, os.environ["ADMIN_EMAIL"], os.environ["ADMIN_PASSWORD"])
    for name, kind, url, model in (("mock-llm", "openai", a.mock_url, "demo-chat"),
                                   ("mock-stream", "openai", a.stream_mock_url, "bench-stream"),
                                   ("mock-anthropic", "anthropic", a.mock_url, "bench-claude")):
        provider = api(a.api, "POST", "/v1/admin/providers", admin,
                       {"name": name, "kind": kind, "base_url": url})
        api(a.api, "POST", f"/v1/admin/providers/{provider['id']}/keys", admin,
            {"api_key": "sk-mock-bench", "name": "bench", "weight": 1})
        api(a.api, "POST", "/v1/admin/models", admin, {
            "name": model, "provider_id": provider["id"], "upstream_model": "mock-gpt",
            "kind": "chat", "max_output_tokens": 1024,
            "pricing": {"input_per_million": "0.15", "output_per_million": "0.60"}})
    keys, users = [], []
    for i in range(a.users):
        email, password = f"bench-{i}@example.com", "bench-password"
        user = api(a.api, "POST", "/v1/admin/users", admin, {"email": email, "password": password})
        api(a.api, "POST", f"/v1/admin/users/{user['id']}/balance-adjustments", admin,
            {"amount": a.balance, "reason": "benchmark credit"})
        token = login(a.api, email, password)
        key = api(a.api, "POST", "/v1/me/access-keys", token, {"name": "bench"})
        keys.append(key["key"])
        users.append({"user_id": user["id"], "access_key_id": key["id"]})
    with open(a.keys_out, "w") as f:
        f.write("\n".join(keys) + "\n")
    with open(a.users_out, "w") as f:
        json.dump(users, f)
    # The gateway reloads its routes every catalog_refresh_ms: wait until both models answer.
    deadline = time.monotonic() + 15
    while True:
        listed = api(a.api, "GET", "/v1/models", keys[0])
        names = {m["id"] for m in listed["data"]}
        if {"demo-chat", "bench-stream", "bench-claude"} <= names:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"seed: the gateway does not route the bench models yet: {names}")
        time.sleep(0.2)
    status = chat_once(a.api, keys[0])
    if status != 200:
        raise SystemExit(f"seed: a first chat call through the gateway answered {status}")
    print(f"seeded {a.users} users with access keys; models demo-chat, bench-stream and bench-claude routed")


def chat_once(base, key):
    request = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(CHAT_BODY).encode(),
                                     method="POST")
    request.add_header("content-type", "application/json")
    request.add_header("authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# ----------------------------------------------------------------------------- load results


def cmd_wrk_json(a):
    text = sys.stdin.read()
    match = re.search(r"^BENCH_JSON (\{.*\})$", text, re.M)
    if not match:
        raise SystemExit("wrk-json: no summary line in wrk's output:\n" + text[-2000:])
    s = json.loads(match.group(1))
    seconds = s["duration_us"] / 1e6
    errors = s["connect_errors"] + s["read_errors"] + s["write_errors"] + s["status_errors"] + s["timeouts"]
    result = {
        "kind": "throughput", "target": a.target, "repeat": a.repeat,
        "rps": s["requests"] / seconds, "requests": s["requests"], "seconds": seconds,
        "errors": errors, "status_errors": s["status_errors"],
        "p50_ms": s["p50_us"] / 1000, "p99_ms": s["p99_us"] / 1000,
        "t0": a.window[0], "t1": a.window[1],
    }
    if a.cpu_before:
        result["cpu_s"] = cpu_since(a.cpu_before)
    print(json.dumps(result))


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def cmd_hey_json(a):
    rows = list(csv.reader(io.StringIO(sys.stdin.read())))
    header, rows = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    latencies, offsets, bad = [], [], 0
    for row in rows:
        if len(row) != len(header):
            continue
        if row[col["status-code"]] != "200":
            bad += 1
            continue
        latencies.append(float(row[col["response-time"]]) * 1000)
        offsets.append(float(row[col["offset"]]))
    # hey's own errors (refused connections, timeouts) have no CSV row: count them from its summary
    latencies.sort()
    span = (max(offsets) - min(offsets)) if len(offsets) > 1 else float("nan")
    achieved = len(offsets) / a.seconds
    result = {
        "kind": "latency", "target": a.target, "rate": a.rate, "repeat": a.repeat,
        "achieved_rps": achieved, "ok": len(latencies), "non_200": bad, "span_s": span,
        "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99), "max_ms": latencies[-1] if latencies else float("nan"),
        "t0": a.window[0], "t1": a.window[1],
    }
    print(json.dumps(result))


# ---------------------------------------------------------------- open-loop fixed-rate load


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = None, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def open_loop(a, keys):
    """Sends requests on a fixed schedule (rate/s, whatever the answers do) over a pool of keep-alive
    connections, rotating the access keys; latency is from the moment a request is written to the
    moment its whole answer is read."""
    loop = asyncio.get_running_loop()
    body = json.dumps(CHAT_BODY, separators=(",", ":")).encode()
    requests = [(f"POST {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\nAuthorization: Bearer {key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
                for key in keys]
    free = asyncio.Queue()
    for _ in range(a.connections):
        free.put_nowait(await asyncio.open_connection(a.host, a.port))
    latencies, statuses, lags, waits = [], {}, [], []
    total = int(a.rate * a.seconds)
    window = {"closed": False}

    async def one(i, scheduled):
        got = loop.time()
        reader, writer = await free.get()
        if window["closed"]:  # the window ended while this request waited for a connection
            free.put_nowait((reader, writer))
            return
        waits.append(loop.time() - got)
        sent = loop.time()
        lags.append(sent - scheduled)
        writer.write(requests[i % len(requests)])
        try:
            status = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            statuses["error"] = statuses.get("error", 0) + 1
            writer.close()
            free.put_nowait(await asyncio.open_connection(a.host, a.port))
            return
        latencies.append((loop.time() - sent) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        free.put_nowait((reader, writer))

    tasks = []
    start = loop.time() + 0.1
    deadline = start + a.seconds
    for i in range(total):
        scheduled = start + i / a.rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(i, scheduled)))
    sending_done = loop.time()
    # The window ends on schedule: requests still waiting for a free connection then were never
    # sent (the target could not keep up); those in flight get a few seconds to finish.
    await asyncio.sleep(max(0.0, deadline - loop.time()))
    window["closed"] = True
    pending = [t for t in tasks if not t.done()]
    done_in_window = len(latencies)
    if pending:
        await asyncio.wait(pending, timeout=5)
    unanswered = sum(1 for t in tasks if not t.done())
    for t in tasks:
        if not t.done():
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    not_sent = total - len(lags)
    finished = loop.time()
    while not free.empty():
        _, writer = free.get_nowait()
        writer.close()
    ok = statuses.get(200, 0)
    latencies.sort()
    lags.sort()
    return {
        "kind": "latency", "tool": "open-loop", "target": a.target, "rate": a.rate, "repeat": a.repeat,
        "achieved_rps": done_in_window / a.seconds, "sent_rps": len(lags) / a.seconds,
        "scheduled": total, "not_sent": not_sent, "ok": ok, "non_200": len(lags) - ok - unanswered,
        "unanswered_after_5s": unanswered,
        "tail_s": finished - deadline, "statuses": {str(k): v for k, v in statuses.items()},
        "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99), "max_ms": latencies[-1] if latencies else float("nan"),
        "send_lag_p99_ms": percentile(lags, 99) * 1000, "conn_wait_max_ms": max(waits or [0]) * 1000,
    }


def cmd_add_cpu(a):
    """Adds to a result (JSON on stdin) the CPU used since a `cpu-snap`, per accounted process."""
    result = json.load(sys.stdin)
    result["cpu_s"] = cpu_since(a.cpu_before)
    print(json.dumps(result))


def cmd_openloop(a):
    with open(a.keys) as f:
        keys = [k.strip() for k in f if k.strip()]
    t0 = time.time()
    result = asyncio.run(open_loop(a, keys))
    result["t0"], result["t1"] = t0, time.time()
    print(json.dumps(result))


# ------------------------------------------------------------------- AMQP 0-9-1 publishing


class Amqp:
    """Just enough of AMQP 0-9-1 to publish persistent messages with publisher confirms."""

    def __init__(self, host, port, user, password, vhost="/"):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.expect_method(0, 10, 10)  # connection.start
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        self.method(0, 10, 11, struct.pack(">I", 0) + shortstr("PLAIN") + longstr(response) + shortstr("en_US"))
        args = self.expect_method(0, 10, 30)  # connection.tune
        channel_max, frame_max, _heartbeat = struct.unpack(">HIH", args[:8])
        self.frame_max = frame_max or 131072
        self.method(0, 10, 31, struct.pack(">HIH", channel_max, self.frame_max, 0))
        self.method(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00")  # connection.open
        self.expect_method(0, 10, 41)
        self.method(1, 20, 10, shortstr(""))  # channel.open
        self.expect_method(1, 20, 11)
        self.method(1, 85, 10, b"\x00")  # confirm.select
        self.expect_method(1, 85, 11)
        self.published = 0
        self.confirmed = 0

    def frame(self, kind, channel, payload):
        return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"

    def method(self, channel, class_id, method_id, args):
        self.sock.sendall(self.frame(1, channel, struct.pack(">HH", class_id, method_id) + args))

    def read_frame(self):
        while True:
            if len(self.buf) >= 7:
                kind, channel, size = struct.unpack(">BHI", self.buf[:7])
                if len(self.buf) >= 8 + size:
                    payload = self.buf[7:7 + size]
                    self.buf = self.buf[8 + size:]
                    return kind, channel, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("publish: RabbitMQ closed the connection")
            self.buf += chunk

    def expect_method(self, channel, class_id, method_id):
        while True:
            kind, ch, payload = self.read_frame()
            if kind != 1:
                continue
            c, m = struct.unpack(">HH", payload[:4])
            if (c, m) == (class_id, method_id) and ch == channel:
                return payload[4:]
            if (c, m) in ((10, 50), (20, 40)):
                code, = struct.unpack(">H", payload[4:6])
                text = payload[7:7 + payload[6]].decode(errors="replace")
                raise SystemExit(f"publish: RabbitMQ closed the channel: {code} {text}")
            self.on_method(c, m, payload[4:])

    def on_method(self, c, m, args):
        if (c, m) == (60, 80):  # basic.ack
            tag, multiple = struct.unpack(">QB", args[:9])
            self.confirmed = max(self.confirmed, tag) if multiple & 1 else max(self.confirmed, tag)
        elif (c, m) == (60, 120):  # basic.nack
            raise SystemExit("publish: RabbitMQ refused (nacked) a message")
        elif (c, m) == (60, 50):  # basic.return
            raise SystemExit("publish: a message was returned unroutable (is the bench queue declared?)")

    def publish_many(self, routing_key, bodies, message_ids):
        out = bytearray()
        for body, message_id in zip(bodies, message_ids):
            publish = struct.pack(">HHH", 60, 40, 0) + shortstr("") + shortstr(routing_key) + b"\x01"
            # properties: content-type (bit 15), delivery-mode (bit 12), message-id (bit 7)
            flags = (1 << 15) | (1 << 12) | (1 << 7)
            props = shortstr("application/json") + b"\x02" + shortstr(message_id)
            header = struct.pack(">HHQH", 60, 0, len(body), flags) + props
            out += self.frame(1, 1, publish) + self.frame(2, 1, header) + self.frame(3, 1, body)
        self.sock.sendall(out)
        self.published += len(bodies)

    def wait_confirms(self):
        while self.confirmed < self.published:
            kind, _, payload = self.read_frame()
            if kind == 1:
                c, m = struct.unpack(">HH", payload[:4])
                self.on_method(c, m, payload[4:])

    def close(self):
        self.method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0))
        try:
            self.expect_method(0, 10, 51)
        except SystemExit:
            pass
        self.sock.close()


def shortstr(text):
    data = text.encode()
    return struct.pack(">B", len(data)) + data


def longstr(data):
    return struct.pack(">I", len(data)) + data


def cmd_publish(a):
    with open(a.users) as f:
        users = json.load(f)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    bodies, ids = [], []
    for i in range(a.n):
        user = users[i % len(users)]
        request_id = str(uuid.uuid4())
        message = {
            "schema_version": 1, "request_id": request_id, "user_id": user["user_id"],
            "access_key_id": user["access_key_id"], "model_id": a.model_id, "model_name": "demo-chat",
            "usage": {"prompt_tokens": 1, "completion_tokens": 16, "cached_prompt_tokens": 0, "images": 0},
            "cost": "0.00000975", "hold_id": None, "occurred_at": now,
        }
        bodies.append(json.dumps(message, separators=(",", ":")).encode())
        ids.append(request_id)
    client = Amqp(a.host, a.port, a.user, a.password)
    started = time.monotonic()
    for start in range(0, a.n, 1000):
        client.publish_many(a.queue, bodies[start:start + 1000], ids[start:start + 1000])
        client.wait_confirms()
    client.close()
    elapsed = time.monotonic() - started
    print(f"published {a.n} billing messages to {a.queue} in {elapsed:.2f}s", file=sys.stderr)


def cmd_pgbench_json(a):
    text = sys.stdin.read()
    match = re.search(r"^tps = ([0-9.]+)", text, re.M)
    if not match:
        raise SystemExit("pgbench-json: no tps line in pgbench's output:\n" + text[-2000:])
    latency = re.search(r"^latency average = ([0-9.]+) ms", text, re.M)
    print(json.dumps({"kind": "pgbench", "repeat": a.repeat, "tps": float(match.group(1)),
                      "latency_ms": float(latency.group(1)) if latency else float("nan"),
                      "t0": a.window[0], "t1": a.window[1]}))


# ------------------------------------------------------------------------------- settlement


def psql(db, sql):
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-XAtq", "-c", sql],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


def cmd_settle_wait(a):
    """Waits until usage_logs has `n` rows; the rate is measured from the first settled row's
    transaction time to the poll that saw the last one (50 ms polls)."""
    deadline = time.monotonic() + a.timeout
    count = 0
    while time.monotonic() < deadline:
        count, elapsed = psql(a.db, "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - "
                                     "min(created_at)), 0) FROM usage_logs").split("|")
        count, elapsed = int(count), float(elapsed)
        if count >= a.n:
            break
        time.sleep(0.05)
    else:
        print(json.dumps({"kind": "settlement", "mode": a.mode, "repeat": a.repeat, "n": a.n,
                          "settled": count, "timed_out": True, "rate": count / a.timeout,
                          "t0": time.time() - a.timeout, "t1": time.time()}))
        return
    # Between the first and the last commit, without the poll's granularity where it matters.
    span = float(psql(a.db, "SELECT extract(epoch FROM max(created_at) - min(created_at)) FROM usage_logs"))
    print(json.dumps({"kind": "settlement", "mode": a.mode, "repeat": a.repeat, "n": a.n, "settled": count,
                      "timed_out": False, "seconds": elapsed, "rate": count / elapsed,
                      "first_to_last_commit_s": span, "t0": time.time() - elapsed, "t1": time.time()}))


# --------------------------------------------------------------------------------- memory


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


async def open_stream(host, port, key, body, opened, failures):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
                      f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                      f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        status = head.split(b" ", 2)[1]
        if status != b"200":
            failures.append(status.decode())
            writer.close()
            return None
        first = await asyncio.wait_for(reader.read(4096), 20)  # the first SSE event
        if not first:
            failures.append("closed")
            writer.close()
            return None
        opened.append(1)
        return reader, writer
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
        failures.append(type(error).__name__)
        return None


async def hold_streams(a, keys):
    body = json.dumps({"model": "bench-stream", "stream": True, "max_tokens": 64,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    opened, failures, streams = [], [], []
    started = time.monotonic()
    for wave in range(0, a.n, 100):
        tasks = [open_stream(a.host, a.port, keys[i % len(keys)], body, opened, failures)
                 for i in range(wave, min(a.n, wave + 100))]
        streams += [s for s in await asyncio.gather(*tasks) if s]
    open_seconds = time.monotonic() - started
    samples = []
    for _ in range(6):
        await asyncio.sleep(0.5)
        samples.append(rss_kib(a.pid))
    # Still open? Each stream should have had more events meanwhile (one a second).
    alive = 0
    for reader, _ in streams:
        try:
            if await asyncio.wait_for(reader.read(4096), 2):
                alive += 1
        except asyncio.TimeoutError:
            pass
    for _, writer in streams:
        writer.close()
    return {"kind": "memory", "state": "streams", "streams_requested": a.n, "streams_open": len(opened),
            "streams_alive_at_end": alive, "failures": sorted(set(failures))[:5], "failed": len(failures),
            "seconds_to_open": open_seconds, "rss_kib": max(samples), "rss_samples_kib": samples}


def cmd_streams(a):
    with open(a.keys) as f:
        keys = [k.strip() for k in f if k.strip()]
    print(json.dumps(asyncio.run(hold_streams(a, keys))))


def cmd_rss(a):
    samples = []
    for _ in range(a.samples):
        samples.append(rss_kib(a.pid))
        time.sleep(0.2)
    print(json.dumps({"kind": "memory", "state": a.state, "rss_kib": statistics.median(samples)}))


# ----------------------------------------------------------------------------------- meta


def first_line(cmd):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0].strip() if text else "n/a"


def flush_rate(directory, seconds=1.0):
    """8 kB writes each followed by fdatasync, as a WAL commit does, for about `seconds`."""
    path = os.path.join(directory, f".bench-fsync-{os.getpid()}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return "n/a"
    try:
        block, n, started = b"\0" * 8192, 0, time.monotonic()
        while time.monotonic() - started < seconds:
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            n += 1
        elapsed = time.monotonic() - started
    finally:
        os.close(fd)
        os.unlink(path)
    return f"{n / elapsed:,.0f} flushes/s ({elapsed / n * 1000:.2f} ms each), on PostgreSQL's disk"


def cmd_flush(a):
    data_dir = first_line(["psql", "-h", "127.0.0.1", "-U", "postgres", "-XAtqc", "SHOW data_directory"])
    print(flush_rate(os.path.dirname(data_dir) if data_dir.startswith("/") else "/tmp"))


def cmd_meta(a):
    env = os.environ
    cpu = "n/a"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    os_name = "n/a"
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    commit = env.get("BENCH_COMMIT") or first_line(["git", "rev-parse", "--short", "HEAD"])
    dirty = not env.get("BENCH_COMMIT") and bool(subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
    notes = []
    if env.get("BENCH_NOTES") and os.path.exists(env["BENCH_NOTES"]):
        with open(env["BENCH_NOTES"]) as f:
            notes = [line.strip() for line in f if line.strip()]
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "commit": commit, "dirty": dirty,
        "cpu": cpu, "cores": os.cpu_count(), "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": os.uname().release, "os": os_name,
        "postgres": first_line(["psql", "-h", "127.0.0.1", "-U", "postgres", "-XAtqc", "SHOW server_version"]),
        "autovacuum": first_line(["psql", "-h", "127.0.0.1", "-U", "postgres", "-XAtqc", "SHOW autovacuum"]),
        "rabbitmq": first_line(["rabbitmqctl", "-q", "version"]),
        "nginx": first_line(["nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": first_line(["wrk", "-v"]).split(" [")[0],
        "hey": "hey " + first_line(["dpkg-query", "-W", "-f", "${Version}", "hey"]),
        "rustc": first_line(["rustc", "--version"]),
        "fsync": env.get("BENCH_FLUSH", "n/a"),
        "runtime": env.get("BENCH_RUNTIME", "n/a"), "settle_n_single": int(env["BENCH_SETTLE_N_SINGLE"]),
        "mock_workers": os.cpu_count(), "rust_log": env.get("RUST_LOG", "unset"),
        "users": int(env["BENCH_USERS"]), "duration": int(env["BENCH_DURATION"]),
        "repeats": int(env["BENCH_REPEATS"]), "warmup": int(env["BENCH_WARMUP"]),
        "wrk_threads": int(env["BENCH_WRK_THREADS"]), "wrk_connections": int(env["BENCH_WRK_CONNECTIONS"]),
        "settle_n": int(env["BENCH_SETTLE_N"]), "prefetch": int(env["BENCH_PREFETCH"]),
        "pgbench_seconds": int(env["BENCH_PGBENCH_SECONDS"]), "streams": int(env["BENCH_STREAMS"]),
        "latency_tool": env.get("BENCH_LATENCY_TOOL", "openloop"), "db": env["BENCH_DB"], "prefix": env["BENCH_PREFIX"], "ports": env["BENCH_PORTS"], "notes": notes,
    }
    print(json.dumps(meta, indent=1))


# --------------------------------------------------------------------------------- report


def median(values):
    values = [v for v in values if v is not None and v == v]  # no NaN
    return statistics.median(values) if values else float("nan")


def fmt(value, digits=0):
    if value is None or value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def cmd_report(a):
    results = []
    with open(a.results) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                results.append(json.loads(line))
    with open(a.meta) as f:
        meta = json.load(f)
    cpu_log = load_cpu_log(a.cpu_log)
    for r in results:
        if r.get("t1"):
            r["other_cpu"], r["other_top"] = window_foreign(cpu_log, r["t0"], r["t1"])
        else:
            r["other_cpu"], r["other_top"] = float("nan"), ""

    def by(**kw):
        return [r for r in results if all(r.get(k) == v for k, v in kw.items())]

    def other(rs):
        return fmt(max([r["other_cpu"] for r in rs if r["other_cpu"] == r["other_cpu"]] or [float("nan")]))

    out = []
    w = out.append
    w("# Benchmarks")
    w("")
    w(f"Written by `make bench` (tests/bench/run.sh) on {meta['date']} at commit `{meta['commit']}`"
      f"{' plus uncommitted changes' if meta.get('dirty') else ''}; the run took {meta.get('runtime', 'n/a')}. "
      "Every number below was measured in that run; nothing is typed in by hand. Run `make bench` to "
      "refresh this file.")
    w("")

    # --- targets first
    thr = {t: median([r["rps"] for r in by(kind="throughput", target=t)]) for t in ("direct", "nginx", "gateway")}
    lat, skipped = {}, {}
    for r in by(kind="latency"):
        if "skipped_after" in r:
            skipped.setdefault((r["target"], r["rate"]), []).append(r)
        else:
            lat.setdefault((r["target"], r["rate"]), []).append(r)

    def lat_med(target, rate, field):
        return median([r[field] for r in lat.get((target, rate), [])])

    def rate_reached(target, rate):
        return lat_med(target, rate, "achieved_rps") >= 0.95 * rate

    settle = {m: median([r["rate"] for r in by(kind="settlement", mode=m) if not r.get("timed_out")])
              for m in ("batched", "single")}
    pgb = median([r["tps"] for r in by(kind="pgbench")])
    ratio = thr["gateway"] / thr["nginx"] if thr["nginx"] == thr["nginx"] and thr["nginx"] else float("nan")
    add50 = lat_med("gateway", 1000, "p50_ms") - lat_med("direct", 1000, "p50_ms")
    add99 = lat_med("gateway", 1000, "p99_ms") - lat_med("direct", 1000, "p99_ms")

    def verdict(ok, value):
        if value != value:
            return "not measured"
        return "**PASS**" if ok else "**MISS**"

    # Issue 14's targets: CPU per call (PostgreSQL; and our stack: gateway-api, PostgreSQL,
    # RabbitMQ, billing-worker, without the mock provider), throughput against the 6,300 calls/s
    # measured before and against nginx in this run, one busy key against many, added latency.
    gw_cpu = [r for r in by(kind="throughput", target="gateway") if r.get("cpu_s")]
    pg_per_call = median([r["cpu_s"].get("postgres", 0) / r["requests"] * 1e6 for r in gw_cpu])
    stack_per_call = median([sum(v for k, v in r["cpu_s"].items() if k != "mock-llm") / r["requests"] * 1e6
                             for r in gw_cpu])
    one_key = median([r["rps"] for r in by(kind="throughput", target="gateway-1key")])
    one_key_ratio = one_key / thr["gateway"] if thr["gateway"] == thr["gateway"] and thr["gateway"] else float("nan")
    before = 6300.0

    w("## Targets")
    w("")
    w("| target | measured (median of the repeats) | result |")
    w("|---|---|---|")
    w(f"| PostgreSQL CPU per call <= 40 us | {fmt(pg_per_call)} us | {verdict(pg_per_call <= 40, pg_per_call)} |")
    w(f"| all our processes per call (gateway-api, PostgreSQL, RabbitMQ, billing-worker) <= 150 us | "
      f"{fmt(stack_per_call)} us | {verdict(stack_per_call <= 150, stack_per_call)} |")
    w(f"| throughput >= 2x the 6,300 calls/s before credit leases | {fmt(thr['gateway'])} calls/s = "
      f"{fmt(thr['gateway'] / before, 2)}x | {verdict(thr['gateway'] >= 2 * before, thr['gateway'])} |")
    w(f"| throughput >= 20% of nginx's in the same run | {fmt(thr['gateway'])} vs {fmt(thr['nginx'])} req/s = "
      f"{fmt(ratio * 100, 1)}% | {verdict(ratio >= 0.2, ratio)} |")
    w(f"| one access key carrying all the load >= 80% of the many-keys rate | {fmt(one_key)} vs "
      f"{fmt(thr['gateway'])} calls/s = {fmt(one_key_ratio * 100, 1)}% | "
      f"{verdict(one_key_ratio >= 0.8, one_key_ratio)} |")
    reached = rate_reached("gateway", 1000)
    if add50 != add50 and skipped.get(("gateway", 1000)):
        held = skipped[("gateway", 1000)][0]["skipped_after"]
        for label in ("p50 at 1000 req/s <= 0.5 ms", "p99 at 1000 req/s <= 2 ms"):
            w(f"| gateway's added {label} | not run: the gateway could not hold {held} req/s | **MISS** |")
    else:
        note = "" if reached or add50 != add50 else \
            f" (the gateway reached only {fmt(lat_med('gateway', 1000, 'achieved_rps'))} req/s)"
        w(f"| gateway's added p50 at 1000 req/s <= 0.5 ms | {fmt(add50, 2)} ms{note} | "
          f"{verdict(add50 <= 0.5 and reached, add50)} |")
        w(f"| gateway's added p99 at 1000 req/s <= 2 ms | {fmt(add99, 2)} ms{note} | "
          f"{verdict(add99 <= 2 and reached, add99)} |")
    w(f"| billing-worker settles >= 5000/s (batched) | {fmt(settle['batched'])} settlements/s | "
      f"{verdict(settle['batched'] >= 5000, settle['batched'])} |")
    w("")

    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for label, key in (("CPU", "cpu"), ("cores", "cores"), ("memory", "memory"), ("kernel", "kernel"),
                       ("OS", "os"), ("PostgreSQL", "postgres"), ("RabbitMQ", "rabbitmq"), ("nginx", "nginx"),
                       ("wrk", "wrk"), ("hey", "hey"), ("rustc", "rustc")):
        w(f"| {label} | {meta.get(key, 'n/a')} |")
    w(f"| disk flush at the start (8 kB write + fdatasync, like a WAL commit) | {meta.get('fsync', 'n/a')} |")
    w("")
    w("Everything runs on this one machine: the load generator, the mock provider, nginx, gateway-api, "
      "billing-worker, PostgreSQL and RabbitMQ share its 2 cores, so these are numbers of the whole "
      "system on 2 cores, not of the gateway alone on a dedicated host. PostgreSQL and RabbitMQ are the "
      "machine's shared instances with their settings as found (durable commits; autovacuum "
      f"`{meta.get('autovacuum', 'n/a')}`, while billing-worker vacuums the users table every sweep, 5 s); "
      "the run starts with a `CHECKPOINT`, so that pages other work left dirty are not written during "
      "it and counted as PostgreSQL's CPU per call. The column *other CPU* "
      "is the highest share of one core that processes outside the benchmark (a compiler, another test "
      "suite) used during a measurement's repeats, sampled every 0.5 s; a high value means that "
      "measurement was disturbed.")
    w("")
    w("## What was measured, and how")
    w("")
    w(f"- **Request**: `POST /v1/chat/completions` with `{json.dumps(CHAT_BODY, separators=(',', ':'))}` "
      "and `Authorization: Bearer <access key>`, non-streaming, HTTP/1.1 keep-alive on 127.0.0.1.")
    w(f"- **Upstream**: `target/release/mock-llm --latency-ms 0` (answers at once, {meta['mock_workers']} "
      "workers).")
    w("- **Targets**: *direct* = the mock itself; *nginx* = nginx (2 workers) as a plain reverse proxy to "
      "the mock (keepalive upstream, access log off); *gateway* = gateway-api (release build, "
      f"`RUST_LOG={meta['rust_log']}`, default workers and pool sizes) doing the whole path: access-key "
      "lookup (then cached for `calls.key_cache_ttl_ms`, 1 s, and re-checked in the background after "
      "half of it), admission (this process's credit lease of the user, in memory, else a hold on the balance), forward to the "
      "mock, price the usage, make the charge durable before answering (above "
      "`calls.outbox_first_below`, 1,500 calls/s per process, by publisher confirms: the charges that "
      "finish while a publish awaits its confirm share the next message; below it, by one group-committed "
      "insert into the Postgres outbox, forwarded to the broker afterwards), with billing-worker "
      "running and settling every charge into PostgreSQL. So the saturation runs measure the broker "
      "path and the 500 and 1000 req/s latency runs the outbox path; the CPU per call at 1000 req/s is "
      "reported below for that path.")
    w(f"- **Callers**: {meta['users']} bench users with one access key each (balance 1,000,000); the "
      "load rotates over the keys request by request, except *gateway, one key*, where every request "
      "carries the same access key (one busy customer)" +
      ("; hey sends one fixed header, so each hey run uses one key." if meta["latency_tool"] == "hey" else "."))
    w(f"- **Throughput**: `wrk -t{meta['wrk_threads']} -c{meta['wrk_connections']} -d{meta['duration']}s` "
      f"with a Lua script for body and headers, after a {meta['warmup']} s warm-up per target; "
      f"{meta['repeats']} rounds with the targets interleaved; medians.")
    if meta["latency_tool"] == "hey":
        w(f"- **Latency at fixed rates**: `hey -z {meta['duration']}s -c <rate/50> -q 50` (hey's `-q` is per "
          "worker: 50 req/s each), latency of every request from hey's CSV output (0.1 ms resolution), "
          f"nearest-rank percentiles, medians over {meta['repeats']} repeats. hey is closed-loop per worker: "
          "a slow answer delays that worker's next request, so a rate the system cannot hold shows up as a "
          "lower achieved rate, reported beside the latencies.")
    else:
        w(f"- **Latency at fixed rates**: `tests/bench/bench.py openloop`, an open-loop generator (Python "
          f"asyncio): for {meta['duration']} s it starts requests on a fixed schedule (rate per second, "
          "whatever the answers do) over a pool of 64 keep-alive connections, rotating the keys; a "
          "request's latency runs from writing it to reading its whole answer (microsecond clock). "
          f"Nearest-rank percentiles, medians over {meta['repeats']} repeats. When the target cannot keep "
          "up, requests wait for a free connection and the *achieved* rate falls below the asked one; "
          "that is flagged. (hey was tried first: its `-q` sends one fixed key per run, which measures "
          "one customer's row lock rather than the gateway, and its CSV has 0.1 ms resolution; "
          "`BENCH_LATENCY_TOOL=hey make bench` still uses it.)")
    w("- **Backlog**: before each measurement the run waits until billing-worker has settled every call "
      "made so far (no open hold left), so one measurement's settlement work does not spill into the next.")
    w(f"- **Settlement**: billing-worker stopped, then N valid `BillingMessage` bodies (schema_version 1, "
      f"spread over the {meta['users']} users, no hold) published to the bench queue with publisher "
      "confirms; then billing-worker starts and the clock runs from the first settled row's commit to "
      "the poll (every 50 ms) that sees all N rows in `usage_logs`. Batched = "
      f"the shipped defaults (`batch_max` 512, `batch_linger_ms` 30, `batch_idle_ms` 3), single = `APP__BILLING__BATCH_MAX=1`, both with "
      f"`APP__BROKER__PREFETCH={meta['prefetch']}`; N = {meta['settle_n']:,} batched and "
      f"{meta['settle_n_single']:,} single (to keep the run short).")
    w(f"- **pgbench**: `pgbench -i -s 10` into a scratch database, then a custom script `UPDATE "
      "pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid` (random aid) with `-c 8 -j 2 -T "
      f"{meta['pgbench_seconds']}`: single-row update transactions on this PostgreSQL.")
    w(f"- **Memory**: gateway-api's VmRSS from /proc/PID/status: idle after start, idle after the load "
      f"phases, and with {meta['streams']:,} streaming calls held open at once (a second mock with "
      "`--stream-chunk-delay-ms 1000 --completion-tokens 60`, so a stream lasts a minute; the highest of "
      "6 samples over 3 s while all are open).")
    w(f"- **Isolation**: database `{meta['db']}` (dropped and recreated each run), RabbitMQ queue prefix "
      f"`{meta['prefix']}` (queues deleted at the end), ports {meta['ports']}; the run starts and stops "
      "only its own processes.")
    w("")

    w("## Throughput at saturation")
    w("")
    w(f"wrk `-t{meta['wrk_threads']} -c{meta['wrk_connections']} -d{meta['duration']}s`.")
    w("")
    w("| target | req/s (median) | each round | p50 / p99 ms (median) | errors | other CPU |")
    w("|---|---|---|---|---|---|")
    for t in ("direct", "nginx", "gateway", "gateway-1key", "gateway-noworker", "gateway-anthropic",
              "gateway-gzip"):
        rs = by(kind="throughput", target=t)
        if not rs:
            continue
        thr_t = median([r["rps"] for r in rs])
        label = {"gateway-1key": "gateway, one access key for all requests (diagnostic, 1 run)",
                 "gateway-noworker": "gateway, billing-worker stopped (diagnostic, 1 run)",
                 "gateway-anthropic": "gateway, model on an Anthropic provider: request, answer and usage "
                                      "translated, the mock's `/v1/messages` (diagnostic, 1 run)",
                 "gateway-gzip": "gateway, every request with `Accept-Encoding: gzip, deflate`, as the "
                                 "OpenAI and Anthropic SDKs send it (model-call answers are not "
                                 "compressed; diagnostic, 1 run)"}.get(t, t)
        w(f"| {label} | **{fmt(thr_t)}** | {', '.join(fmt(r['rps']) for r in rs)} | "
          f"{fmt(median([r['p50_ms'] for r in rs]), 2)} / {fmt(median([r['p99_ms'] for r in rs]), 2)} | "
          f"{sum(r['errors'] for r in rs)} | {other(rs)}% |")
    w("")
    if thr["gateway"] == thr["gateway"]:
        w(f"Gateway / nginx = **{fmt(ratio * 100, 1)}%**; gateway / direct = "
          f"{fmt(thr['gateway'] / thr['direct'] * 100 if thr['direct'] else float('nan'), 1)}%.")
        w("")

    cpu_rows = [(t, rs) for t in ("direct", "nginx", "gateway", "gateway-anthropic", "gateway-gzip")
                for rs in [[r for r in by(kind="throughput", target=t) if r.get("cpu_s")]] if rs]
    if cpu_rows:
        w("## CPU per request at saturation")
        w("")
        w("Microseconds of CPU per answered request, by process, in the throughput runs above (medians "
          "of the rounds): each process's CPU time from the start of the run until, for the gateway, "
          "billing-worker had settled every call of the run, divided by the requests answered. wrk, "
          "the load generator, is not counted. *Ceiling* is what the counted processes alone would "
          "allow on this machine: 2 cores = 2,000,000 µs of CPU per second, divided by the total.")
        w("")
        names = [(n, label) for n, label in CPU_ACCOUNTED
                 if any(r["cpu_s"].get(n, 0) > 0 for _, rs in cpu_rows for r in rs)]
        w("| target | " + " | ".join(label for _, label in names) + " | total | ceiling req/s |")
        w("|---|" + "---|" * (len(names) + 2))
        for t, rs in cpu_rows:
            per = {n: median([r["cpu_s"].get(n, 0) / r["requests"] * 1e6 for r in rs]) for n, _ in names}
            total = median([sum(r["cpu_s"].values()) / r["requests"] * 1e6 for r in rs])
            w(f"| {t} | " + " | ".join(fmt(per[n]) for n, _ in names) +
              f" | **{fmt(total)}** | {fmt(2e6 / total if total else float('nan'))} |")
        w("")

    if lat:
        w("## Latency at fixed rates")
        w("")
        w(("hey" if meta["latency_tool"] == "hey" else "Open-loop generator") +
          "; medians of the repeats; *gateway added* = gateway minus direct at the same rate.")
        w("")
        w("| rate (req/s) | target | achieved req/s | p50 ms | p90 ms | p99 ms | non-200 | other CPU |")
        w("|---|---|---|---|---|---|---|---|")
        for rate in sorted({r for (_, r) in list(lat) + list(skipped)}):
            for t in ("direct", "nginx", "gateway"):
                rs = lat.get((t, rate), [])
                skips = skipped.get((t, rate), [])
                if skips and not rs:
                    w(f"| {rate} | {t} | not run: it could not hold {skips[0]['skipped_after']} req/s "
                      "(see throughput at saturation) | | | | | |")
                    continue
                if not rs:
                    continue
                mark = "" if rate_reached(t, rate) else " (**not reached**)"
                if skips:
                    mark += f" ({len(rs)} of {len(rs) + len(skips)} repeats run)"
                w(f"| {rate} | {t} | {fmt(lat_med(t, rate, 'achieved_rps'))}{mark} | "
                  f"{fmt(lat_med(t, rate, 'p50_ms'), 1)} | {fmt(lat_med(t, rate, 'p90_ms'), 1)} | "
                  f"{fmt(lat_med(t, rate, 'p99_ms'), 1)} | {sum(r['non_200'] for r in rs)} | {other(rs)}% |")
            if lat.get(("gateway", rate)) and lat.get(("direct", rate)):
                w(f"| {rate} | *gateway added* | | "
                  f"{fmt(lat_med('gateway', rate, 'p50_ms') - lat_med('direct', rate, 'p50_ms'), 1)} | "
                  f"{fmt(lat_med('gateway', rate, 'p90_ms') - lat_med('direct', rate, 'p90_ms'), 1)} | "
                  f"{fmt(lat_med('gateway', rate, 'p99_ms') - lat_med('direct', rate, 'p99_ms'), 1)} | | |")
        w("")
        cpu_lat = {rate: [r for r in rs if r.get("cpu_s") and r.get("ok")]
                   for (t, rate), rs in lat.items() if t == "gateway"}
        cpu_lat = {rate: rs for rate, rs in cpu_lat.items() if rs}
        if cpu_lat:
            w("CPU per answered call at these rates (gateway runs; µs, medians of the repeats; from the "
              "start of a run until billing-worker had settled its calls). Below "
              "`calls.outbox_first_below` (1,500 calls/s) charges are kept in the outbox first, so "
              "PostgreSQL does more per call here than at saturation.")
            w("")
            names = [(n, label) for n, label in CPU_ACCOUNTED
                     if any(r["cpu_s"].get(n, 0) > 0 for rs in cpu_lat.values() for r in rs)]
            w("| rate (req/s) | " + " | ".join(label for _, label in names) + " | total |")
            w("|---|" + "---|" * (len(names) + 1))
            for rate in sorted(cpu_lat):
                rs = cpu_lat[rate]
                per = {n: median([r["cpu_s"].get(n, 0) / r["ok"] * 1e6 for r in rs]) for n, _ in names}
                total = median([sum(r["cpu_s"].values()) / r["ok"] * 1e6 for r in rs])
                w(f"| {rate} | " + " | ".join(fmt(per[n]) for n, _ in names) + f" | **{fmt(total)}** |")
            w("")

    if by(kind="settlement") or by(kind="pgbench"):
        w("## Settlement (billing-worker) and PostgreSQL")
        w("")
        w("| what | per second (median) | each run | seconds for all N (median) | other CPU |")
        w("|---|---|---|---|---|")
        for mode, label in (("batched", "settlements, batched (defaults, `BATCH_MAX=512`)"),
                            ("single", "settlements, single (`BATCH_MAX=1`)")):
            rs = by(kind="settlement", mode=mode)
            if not rs:
                continue
            runs = ", ".join(f"timed out at {r['settled']:,} of {r['n']:,}" if r.get("timed_out") else fmt(r["rate"])
                             for r in rs)
            w(f"| {label}, N = {rs[0]['n']:,} | **{fmt(settle[mode])}** | {runs} | "
              f"{fmt(median([r['seconds'] for r in rs if not r.get('timed_out')]), 1)} | {other(rs)}% |")
        pg_runs = by(kind="pgbench")
        if pg_runs:
            w(f"| pgbench single-row UPDATE transactions, 8 clients | **{fmt(pgb)}** | "
              f"{', '.join(fmt(r['tps']) for r in pg_runs)} | | {other(pg_runs)}% |")
        w("")
        w("Batched mode settles a whole batch (up to `batch_max`, 512 by default) in one transaction of a fixed number of set-based, "
          "prepared statements (look up the request ids already settled, delete the settled holds, take "
          "leased calls' costs from their leases, then one call of the SQL function `settle_usage`, which "
          "locks the users in id order, debits them and writes the ledger and usage rows, and one "
          "statement adding the charges of keys and users with a spend limit to their spend totals, "
          "right before the commit); single mode (`BATCH_MAX=1`) settles each charge in its own transaction.")
        w("")

    mem = by(kind="memory")
    if mem:
        w("## gateway-api memory (VmRSS)")
        w("")
        w("| state | RSS |")
        w("|---|---|")
        for r in mem:
            label = {"idle": "idle, after start", "after-load": "idle, after the load phases"}.get(r["state"], r["state"])
            if r["state"] == "streams":
                label = (f"{r['streams_open']:,} of {r['streams_requested']:,} streaming calls open "
                         f"({r['streams_alive_at_end']:,} still receiving events at the end, "
                         f"{r['failed']:,} failed to open; opening took {r['seconds_to_open']:.1f} s)")
            w(f"| {label} | {r['rss_kib'] / 1024:.1f} MiB |")
        w("")

    notes = list(meta.get("notes", []))
    disturbed = [r for r in results if r["other_cpu"] == r["other_cpu"] and r["other_cpu"] > 15]
    if disturbed:
        worst = max(disturbed, key=lambda r: r["other_cpu"])
        notes.append(f"{len(disturbed)} of {len(results)} measurements ran while processes outside the "
                     f"benchmark used more than 15% of a core (worst {worst['other_cpu']:.0f}%, mostly "
                     f"`{worst['other_top']}`); their numbers are lower than a quiet machine would give.")
    if notes:
        w("## Notes from this run")
        w("")
        for note in notes:
            w(f"- {note}")
        w("")
    text = "\n".join(out)
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--api", required=True)
    s.add_argument("--mock-url", required=True)
    s.add_argument("--stream-mock-url", required=True)
    s.add_argument("--users", type=int, default=64)
    s.add_argument("--balance", default="1000000")
    s.add_argument("--keys-out", required=True)
    s.add_argument("--users-out", required=True)
    s.set_defaults(func=cmd_seed)
    s = sub.add_parser("cpu-watch")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_cpu_watch)
    s = sub.add_parser("quiet")
    s.add_argument("--max-wait", type=float, default=120)
    s.add_argument("--threshold", type=float, default=15)
    s.set_defaults(func=cmd_quiet)
    s = sub.add_parser("pgbench-json")
    s.add_argument("--repeat", type=int, default=0)
    s.add_argument("--window", type=float, nargs=2, default=[0, 0])
    s.set_defaults(func=cmd_pgbench_json)
    s = sub.add_parser("wrk-json")
    s.add_argument("--window", type=float, nargs=2, default=[0, 0])
    s.add_argument("--target", required=True)
    s.add_argument("--repeat", type=int, default=0)
    s.add_argument("--cpu-before", help="a cpu-snap file: account the CPU used since, per request")
    s.set_defaults(func=cmd_wrk_json)
    s = sub.add_parser("cpu-snap")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_cpu_snap)
    s = sub.add_parser("hey-json")
    s.add_argument("--window", type=float, nargs=2, default=[0, 0])
    s.add_argument("--target", required=True)
    s.add_argument("--rate", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--repeat", type=int, default=0)
    s.set_defaults(func=cmd_hey_json)
    s = sub.add_parser("openloop")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--path", default="/v1/chat/completions")
    s.add_argument("--keys", required=True)
    s.add_argument("--rate", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--connections", type=int, default=64)
    s.add_argument("--target", required=True)
    s.add_argument("--repeat", type=int, default=0)
    s.set_defaults(func=cmd_openloop)
    s = sub.add_parser("add-cpu")
    s.add_argument("--cpu-before", required=True)
    s.set_defaults(func=cmd_add_cpu)
    s = sub.add_parser("publish")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--users", required=True)
    s.add_argument("--model-id", type=int, required=True)
    s.add_argument("--queue", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5672)
    s.add_argument("--user", default="guest")
    s.add_argument("--password", default="guest")
    s.set_defaults(func=cmd_publish)
    s = sub.add_parser("settle-wait")
    s.add_argument("--db", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--mode", required=True)
    s.add_argument("--repeat", type=int, default=0)
    s.add_argument("--timeout", type=float, default=120)
    s.set_defaults(func=cmd_settle_wait)
    s = sub.add_parser("streams")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--keys", required=True)
    s.add_argument("--pid", type=int, required=True)
    s.set_defaults(func=cmd_streams)
    s = sub.add_parser("rss")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--state", required=True)
    s.add_argument("--samples", type=int, default=5)
    s.set_defaults(func=cmd_rss)
    s = sub.add_parser("flush")
    s.set_defaults(func=cmd_flush)
    s = sub.add_parser("meta")
    s.set_defaults(func=cmd_meta)
    s = sub.add_parser("report")
    s.add_argument("--results", required=True)
    s.add_argument("--meta", required=True)
    s.add_argument("--cpu-log")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_report)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
