#!/usr/bin/env python3
"""The kill table of `make bench`: each binary in turn (gateway-api, billing-worker,
invocation-worker) is killed with SIGKILL in the middle of a load of plain calls, streaming calls
and image jobs, then started again; once billing has settled, every call answered in full and
every COMPLETED job must have exactly one usage row, nothing may be charged twice, and
`billing-worker reconcile` must pass.

For each row it starts its own stack on 127.0.0.1 (database `ai_gateway_bench_kill`, dropped and
created again; RabbitMQ queue prefix `benchkill_`; a mock LLM; two gateway-api processes on the
one database; one billing-worker; one invocation-worker), and stops exactly the processes it
started, by PID, also when it fails or is interrupted. It replaces (or appends) its own section of
docs/BENCHMARKS.md and exits non-zero if a charge was lost or doubled or the books do not
balance. Standard library only; needs the release binaries (`make bench` builds them).

Knobs (environment): BENCH_KILL_CLIENTS (16), BENCH_KILL_SECONDS (load per row, 8),
BENCH_KILL_AT (s into the load, 3), BENCH_KILL_ROWS ("gateway-api billing-worker
invocation-worker"), BENCH_KILL_GATEWAY_BIN (another gateway-api build to run), BENCH_OUT,
BENCH_KEEP=1 (keep the logs and the database).
"""
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from bench import Amqp, shortstr  # noqa: E402  (the main benchmark's AMQP client)

BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
GATEWAY_BIN = os.environ.get("BENCH_KILL_GATEWAY_BIN") or os.path.join(BIN, "gateway-api")
DB = "ai_gateway_bench_kill"
PREFIX = "benchkill_"
GATEWAY_PORTS = (18380, 18381)
MOCK_PORT, BILLING_OPS, INVOCATION_OPS = 19490, 19131, 19132
CLIENTS = int(os.environ.get("BENCH_KILL_CLIENTS", "16"))
SECONDS = float(os.environ.get("BENCH_KILL_SECONDS", "8"))
KILL_AT = float(os.environ.get("BENCH_KILL_AT", "3"))
ROWS = os.environ.get("BENCH_KILL_ROWS", "gateway-api billing-worker invocation-worker").split()
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "docs", "BENCHMARKS.md"))
SETTLE_DEADLINE = 120  # s after the load ends; past it the row is reported as not settled
STABLE_FOR = 2.0  # s without a new usage row (and nothing waiting anywhere) counts as settled
HEADING = "## Kill -9 under load"
CHAT, IMAGE = "kill-chat", "kill-image"
MAX_TOKENS = 64
QUEUES = [f"{PREFIX}{q}{suffix}" for q in ("billing_log_queue", "model_invocation_queue")
          for suffix in ("", ".retry", ".dlq")]
# The process killed in each row (gateway-api: the first of the two gateways).
VICTIM = {"gateway-api": "gateway-a", "billing-worker": "billing", "invocation-worker": "invocation"}

WORK = None  # the logs of a run: a temporary directory, made by main
ENV = dict(os.environ)
ENV.update({
    "RUST_LOG": "warn",
    "APP__DATABASE__URL": f"postgres://postgres@127.0.0.1:5432/{DB}",
    "APP__BROKER__QUEUE_PREFIX": PREFIX,
    "APP__AUTH__JWT_SECRET": base64.b64encode(os.urandom(48)).decode(),
    "APP__SECURITY__MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    "APP__AUTH__BCRYPT_COST": "4",
    "ADMIN_EMAIL": "bench-kill@example.com",
    "ADMIN_PASSWORD": "bench-kill-password",
})
# What each process of the stack runs: command, own environment, readiness URL.
SERVICES = {
    "mock": ([f"{BIN}/mock-llm", "--host", "127.0.0.1", "--port", str(MOCK_PORT), "--latency-ms", "0",
              "--stream-chunk-delay-ms", "5"], {}, f"http://127.0.0.1:{MOCK_PORT}/healthz"),
    **{name: ([GATEWAY_BIN], {"APP__SERVER__HOST": "127.0.0.1", "APP__SERVER__PORT": str(port),
                              "APP__SERVER__SHUTDOWN_GRACE_SECONDS": "5"},
              f"http://127.0.0.1:{port}/readyz")
       for name, port in zip(("gateway-a", "gateway-b"), GATEWAY_PORTS)},
    # Expired reservations and the outbox are swept every 500 ms.
    "billing": ([f"{BIN}/billing-worker"], {"APP__OPS__PORT": str(BILLING_OPS), "APP__SHUTDOWN_GRACE_SECONDS": "5",
                                             "APP__BILLING__SWEEP_INTERVAL_MS": "500"},
                f"http://127.0.0.1:{BILLING_OPS}/readyz"),
    # A killed worker's job is taken over once its 4 s lease has expired.
    "invocation": ([f"{BIN}/invocation-worker"], {
        "APP__OPS__PORT": str(INVOCATION_OPS), "APP__SHUTDOWN_GRACE_SECONDS": "5", "APP__BROKER__PREFETCH": "64",
        "APP__JOBS__LEASE_SECONDS": "4", "APP__UPSTREAM__TOTAL_TIMEOUT_MS": "3000",
        "APP__UPSTREAM__FIRST_BYTE_TIMEOUT_MS": "2000", "APP__JOBS__SWEEP_INTERVAL_MS": "500",
        "APP__JOBS__STRANDED_AFTER_SECONDS": "2", "APP__JOBS__RETRY_BASE_MS": "200"},
        f"http://127.0.0.1:{INVOCATION_OPS}/readyz"),
}
PROCS = {}


def log(message):
    print(f"[kill {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ our processes, by PID


def start(name):
    command, env, _ = SERVICES[name]
    out = open(os.path.join(WORK, f"{name}.log"), "a")
    PROCS[name] = subprocess.Popen(command, env={**ENV, **env}, stdout=out, stderr=out)


def stop(name):
    """SIGTERM to the PID we started, SIGKILL after 10 s."""
    proc = PROCS.pop(name, None)
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ready(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(name, seconds=60):
    deadline = time.monotonic() + seconds
    while not ready(SERVICES[name][2]):
        if PROCS[name].poll() is not None:
            raise SystemExit(f"kill bench: {name} exited; see {WORK}/{name}.log")
        if time.monotonic() > deadline:
            raise SystemExit(f"kill bench: {name} not ready within {seconds} s; see {WORK}/{name}.log")
        time.sleep(0.1)


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# -------------------------------------------------------------------------- Postgres, broker


def psql(sql, db=DB):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-XAtqc", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def rows(sql):
    text = psql(sql)
    return [line.split("|") for line in text.splitlines()] if text else []


class Broker(Amqp):
    def delete_queue(self, queue):
        # queue.delete: reserved short, queue, bits (if-unused, if-empty, no-wait) all off
        self.method(1, 50, 40, b"\x00\x00" + shortstr(queue) + b"\x00")
        self.expect_method(1, 50, 41)


def delete_queues():
    broker = Broker("127.0.0.1", 5672, "guest", "guest")
    for queue in QUEUES:
        broker.delete_queue(queue)
    broker.close()


def queue_depths():
    """Messages (ready + unacknowledged) in each of our queues, from rabbitmqctl."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages"],
                         check=True, capture_output=True, text=True).stdout
    depths = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in QUEUES and parts[1].isdigit():
            depths[parts[0]] = int(parts[1])
    return depths


# ------------------------------------------------------------------------------------ seed


def api(port, method, path, token=None, body=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
        return json.loads(text) if text else None


def seed():
    """The mock as a provider with a chat and an image model; one user with one access key per
    client. Answers [(key, access_key_id)]."""
    port = GATEWAY_PORTS[0]
    admin = api(port, "POST", "/v1/auth/login",
                body={"email": ENV["ADMIN_EMAIL"], "password": ENV["ADMIN_PASSWORD"]})["access_token"]
    provider = api(port, "POST", "/v1/admin/providers", admin,
                   {"name": "mock", "kind": "openai", "base_url": f"http://127.0.0.1:{MOCK_PORT}/v1"})
    api(port, "POST", f"/v1/admin/providers/{provider['id']}/keys", admin, {"api_key": "sk-mock", "weight": 1})
    api(port, "POST", "/v1/admin/models", admin, {
        "name": CHAT, "provider_id": provider["id"], "upstream_model": "mock-gpt", "kind": "chat",
        "max_output_tokens": 1024, "pricing": {"input_per_million": "0.15", "output_per_million": "0.60"}})
    api(port, "POST", "/v1/admin/models", admin, {
        "name": IMAGE, "provider_id": provider["id"], "upstream_model": "mock-image", "kind": "image",
        "pricing": {"per_image": "0.0001"}})
    keys = []
    for i in range(CLIENTS + 1):
        email = f"kill{i}@bench.local"
        user = api(port, "POST", "/v1/admin/users", admin, {"email": email, "password": "bench-password"})
        api(port, "POST", f"/v1/admin/users/{user['id']}/balance-adjustments", admin,
            {"amount": "1000", "reason": "kill bench"})
        token = api(port, "POST", "/v1/auth/login", body={"email": email, "password": "bench-password"})["access_token"]
        key = api(port, "POST", "/v1/me/access-keys", token, {"name": "kill"})
        keys.append((key["key"], key["id"]))
    # Each gateway reloads its routes every catalog_refresh_ms (and /v1/models lists a model
    # before the routes have it): wait until a call and a job go through each, with the last
    # key, which the load does not use (its usage rows are not counted).
    probe = keys.pop()[0]
    deadline = time.monotonic() + 15
    for gateway in GATEWAY_PORTS:
        for path, body in (("/v1/chat/completions", {"model": CHAT, "messages": [{"role": "user", "content": "hi"}]}),
                           ("/v1/jobs/image-generation", {"model": IMAGE, "prompt": "probe"})):
            while True:
                try:
                    api(gateway, "POST", path, probe, body)
                    break
                except urllib.error.HTTPError as error:
                    if error.code != 404 or time.monotonic() > deadline:
                        raise SystemExit(f"kill bench: {path} on gateway {gateway} answered {error.code}")
                time.sleep(0.1)
    return keys


# ------------------------------------------------------------------------------------ load


async def read_response(reader):
    """Status, headers and the whole body (Content-Length or chunked); raises if the
    connection breaks before the body is complete."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers: the empty line ending the body
                return status, headers, bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    raise ConnectionError(f"a response without length: {head[0]}")


class Kill:
    """The SIGKILL of a row's victim. A gateway is killed the instant one of its answers has
    arrived complete (the first once the kill is armed): a charge not durable by then is still
    in the process. A worker is killed when the kill is armed."""

    def __init__(self, victim):
        self.victim = victim
        self.armed = False
        self.done = asyncio.Event()
        self.at = None

    def fire(self):
        if self.armed and not self.done.is_set():
            PROCS[self.victim].kill()  # SIGKILL to the PID we started
            self.at = time.monotonic()
            self.done.set()


class Client:
    """One load client: its own access key, a keep-alive connection to each gateway."""

    def __init__(self, index, key, key_id, kill):
        self.index, self.key, self.key_id = index, key, key_id
        self.kill = kill  # fired after an answer of the first gateway, if the victim is it
        self.connections = [None, None]
        self.seq = 0
        self.chat_calls = 0
        self.answered = []  # (kind, (prompt, completion), x-request-id)
        self.jobs = []  # job ids answered 202
        self.failed = Counter()

    def chat_body(self, stream):
        """A chat call whose billed usage, (prompt, completion) tokens, no other call of this
        key shares: the mock counts a prompt's words and `[[tokens:N]]` sets the answer's
        length. Its usage row (access key, prompt, completion) thus names the call."""
        n = self.chat_calls
        self.chat_calls += 1
        words, completion = n % 100 + 1, n // 100 + 1
        if completion > MAX_TOKENS:
            raise SystemExit("kill bench: more calls per client than usages told apart; lower the load")
        body = {"model": CHAT, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": f"[[tokens:{completion}]]" + " w" * words}]}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body, (words + 1, completion)

    async def send(self, gateway, path, body):
        connection = self.connections[gateway]
        if connection is None:
            connection = await asyncio.open_connection("127.0.0.1", GATEWAY_PORTS[gateway])
            self.connections[gateway] = connection
        reader, writer = connection
        data = json.dumps(body).encode()
        writer.write((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.key}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)
        return await asyncio.wait_for(read_response(reader), 30)

    async def one(self):
        seq = self.seq
        self.seq += 1
        kind = ("plain", "plain", "stream", "job")[seq % 4]
        gateway = (seq + seq // 4) % 2  # every kind of call goes to both gateways
        try:
            if kind == "job":
                status, _, body = await self.send(gateway, "/v1/jobs/image-generation",
                                                  {"model": IMAGE, "prompt": f"kill bench {seq} [[sleep:200]]"})
                if status == 202:
                    self.jobs.append(json.loads(body)["job_id"])
                else:
                    self.failed[f"job {status}"] += 1
                return
            body, usage = self.chat_body(kind == "stream")
            status, headers, answer = await self.send(gateway, "/v1/chat/completions", body)
            if status != 200:
                self.failed[f"{kind} {status}"] += 1
                if os.environ.get("KILL_DEBUG"):
                    log(f"gateway {gateway} {kind} {status}: {answer[:200]!r}")
                return
            if kind == "plain":
                got = json.loads(answer)["usage"]
            else:
                if b"data: [DONE]" not in answer:
                    self.failed["stream without [DONE]"] += 1
                    return
                events = [json.loads(line[6:]) for line in answer.decode().splitlines()
                          if line.startswith("data: {")]
                got = next((e["usage"] for e in events if e.get("usage")), None)
                if got is None:
                    raise SystemExit(f"kill bench: a complete stream without usage: {answer[-300:]!r}")
            if (got["prompt_tokens"], got["completion_tokens"]) != usage:
                raise SystemExit(f"kill bench: a call answered usage {got}, expected {usage}")
            self.answered.append((kind, usage, headers.get("x-request-id")))
            if self.kill and gateway == 0:
                self.kill.fire()
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ConnectionError, ValueError) as error:
            # The gateway died (or was down) mid-call: not answered.
            self.failed[f"{kind} {type(error).__name__}"] += 1
            connection, self.connections[gateway] = self.connections[gateway], None
            if connection:
                connection[1].close()
            if isinstance(error, ConnectionRefusedError):
                await asyncio.sleep(0.02)  # the gateway is down: do not spin

    async def run(self, until):
        while time.monotonic() < until:
            await self.one()
        for connection in self.connections:
            if connection:
                connection[1].close()


async def load_and_kill(keys, binary):
    """Runs the load for SECONDS; at KILL_AT arms the SIGKILL of the row's victim, and starts
    it again once it is gone. Answers the clients and when the victim was killed and ready
    again (s into the load)."""
    victim = VICTIM[binary]
    kill = Kill(victim)
    clients = [Client(i, key, key_id, kill if victim == "gateway-a" else None)
               for i, (key, key_id) in enumerate(keys)]
    began = time.monotonic()
    tasks = [asyncio.create_task(c.run(began + SECONDS)) for c in clients]
    await asyncio.sleep(KILL_AT)
    kill.armed = True
    if victim != "gateway-a":
        kill.fire()
    await asyncio.wait_for(kill.done.wait(), SECONDS)
    await asyncio.to_thread(PROCS[victim].wait)
    start(victim)
    await asyncio.to_thread(wait_ready, victim)
    back = time.monotonic() - began
    await asyncio.gather(*tasks)
    return clients, kill.at - began, back


# ------------------------------------------------------------------------------ settlement


def wait_settled():
    """Polls until nothing is left to settle: no charge in the outbox, no job still running,
    every queue empty (ready and unacknowledged), and no new usage row for STABLE_FOR seconds.
    Answers the seconds it took, or None at the deadline."""
    began = time.monotonic()
    last, stable_since = None, time.monotonic()
    while time.monotonic() - began < SETTLE_DEADLINE:
        outbox, running, usage = (int(v) for v in psql(
            "SELECT (SELECT count(*) FROM billing_outbox) || '|' || "
            "(SELECT count(*) FROM async_jobs WHERE status NOT IN ('COMPLETED', 'FAILED')) || '|' || "
            "(SELECT count(*) FROM usage_logs)").split("|"))
        if usage != last:
            last, stable_since = usage, time.monotonic()
        quiet = outbox == 0 and running == 0 and time.monotonic() - stable_since >= STABLE_FOR
        if os.environ.get("KILL_DEBUG"):
            log(f"settling: outbox {outbox}, jobs running {running}, usage rows {usage}")
        if quiet:
            waiting = {q: n for q, n in queue_depths().items() if n and not q.endswith(".dlq")}
            if not waiting:
                return time.monotonic() - began
            stable_since = time.monotonic()
        time.sleep(0.25)
    return None


def count(clients, killed, back, settle_seconds):
    """The row of the table: what was answered against what was billed."""
    keys = ",".join(str(c.key_id) for c in clients)
    usage = rows("SELECT request_id, coalesce(access_key_id, 0), prompt_tokens, completion_tokens, images "
                 f"FROM usage_logs WHERE access_key_id IN ({keys})")
    by_call = Counter((int(k), int(p), int(c)) for _, k, p, c, images in usage if images == "0")
    by_request = Counter(r[0] for r in usage)
    request_ids = set(by_request)
    answered = [(c.key_id, kind, u, rid) for c in clients for kind, u, rid in c.answered]
    calls = Counter(kind for _, kind, _, _ in answered)
    lost_calls = sum(1 for key_id, _, (p, c), _ in answered if (key_id, p, c) not in by_call)
    answered_keys = {(key_id, p, c) for key_id, _, (p, c), _ in answered}
    cut_off_billed = sum(1 for call in by_call if call not in answered_keys)
    job_ids = [j for c in clients for j in c.jobs]
    jobs = dict(rows(f"SELECT job_id, status FROM async_jobs WHERE access_key_id IN ({keys})"))
    completed = [j for j, status in jobs.items() if status == "COMPLETED"]
    lost_jobs = sum(1 for j in completed if j not in request_ids)
    vanished = sum(1 for j in job_ids if j not in jobs)  # answered 202, no job row
    accepted = set(job_ids)
    cut_off_billed += sum(1 for j in completed if j not in accepted and j in request_ids)
    retaken = int(psql(f"SELECT count(*) FROM async_jobs WHERE attempts > 1 AND access_key_id IN ({keys})"))
    # A ledger charge row takes the sum of the usage rows that name it (one row per user and
    # settlement batch); a row taking more, or a charged usage row naming none, is a doubled or
    # stray charge.
    ledger_twice = int(psql("SELECT count(*) FROM balance_ledger l LEFT JOIN (SELECT ledger_id, sum(cost) AS cost "
                            "FROM usage_logs WHERE ledger_id IS NOT NULL GROUP BY ledger_id) u ON u.ledger_id = l.id "
                            "WHERE l.kind = 'charge' AND -l.delta <> COALESCE(u.cost, 0)"))
    ledger_twice += int(psql("SELECT count(*) FROM usage_logs WHERE cost > 0 AND ledger_id IS NULL"))
    doubled = (sum(n - 1 for n in by_call.values() if n > 1) + sum(n - 1 for n in by_request.values() if n > 1)
               + ledger_twice)
    reconcile = subprocess.run([f"{BIN}/billing-worker", "reconcile"], env=ENV, capture_output=True, text=True)
    same_id = sum(1 for *_, rid in answered if rid in request_ids)
    failed = Counter()
    for c in clients:
        failed.update(c.failed)
    return {
        "plain": calls["plain"], "streams": calls["stream"], "jobs_accepted": len(job_ids),
        "jobs_completed": sum(1 for j in job_ids if jobs.get(j) == "COMPLETED"),
        "jobs_failed": sum(1 for j in job_ids if jobs.get(j) == "FAILED"), "jobs_retaken": retaken,
        "usage_rows": len(usage), "lost": lost_calls + lost_jobs + vanished, "lost_calls": lost_calls,
        "lost_jobs": lost_jobs + vanished, "doubled": doubled, "cut_off_billed": cut_off_billed,
        "reconcile": reconcile.returncode, "reconcile_text": (reconcile.stdout + reconcile.stderr).strip()[-400:],
        "request_id_matches": same_id, "killed_at": killed, "back_at": back, "settle_seconds": settle_seconds,
        "not_answered": dict(failed),
        "dead_lettered": sum(n for q, n in queue_depths().items() if q.endswith(".dlq")),
    }


# --------------------------------------------------------------------------------- one row


def fresh_stack():
    for name in list(PROCS):
        stop(name)
    delete_queues()
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    # The schema of this workspace's build, also when BENCH_KILL_GATEWAY_BIN runs another one.
    subprocess.run([f"{BIN}/gateway-api", "migrate"], env=ENV, check=True, capture_output=True)
    for name in ("mock", "gateway-a", "gateway-b", "billing", "invocation"):
        start(name)
        wait_ready(name)


def row(binary):
    log(f"{binary}: starting the stack")
    fresh_stack()
    keys = seed()
    log(f"{binary}: {CLIENTS} clients for {SECONDS:.0f} s, SIGKILL of {VICTIM[binary]} at {KILL_AT:.0f} s")
    clients, killed, back = asyncio.run(load_and_kill(keys, binary))
    settle_seconds = wait_settled()
    result = {"binary": binary, **count(clients, killed, back, settle_seconds)}
    log(f"{binary}: {json.dumps(result)}")
    return result


# ---------------------------------------------------------------------------------- report


def section(results):
    def settled(r):
        return f"{r['settle_seconds']:.1f} s" if r["settle_seconds"] is not None else f"not within {SETTLE_DEADLINE} s"

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    bad = sum(r["lost"] + r["doubled"] for r in results)
    verdict = "PASS" if bad == 0 and all(r["reconcile"] == 0 for r in results) else "MISS"
    lines = [
        "", HEADING, "",
        f"Target (issue 14): no charge lost or doubled in the kill table, and `reconcile` passes: **{verdict}**.",
        "",
        f"Measured by `tests/bench/kill.py` ({time.strftime('%Y-%m-%d %H:%M %Z')}, commit `{commit}`"
        + (" with uncommitted changes" if dirty else "") + ", release binaries"
        + (f", gateway-api from `{GATEWAY_BIN}`" if os.environ.get("BENCH_KILL_GATEWAY_BIN") else "")
        + f"): for each row a fresh stack on 127.0.0.1 (database `{DB}`, queue prefix `{PREFIX}`, a mock LLM "
        f"answering at once and streaming a chunk every 5 ms, two gateway-api processes on the one database, "
        f"one billing-worker, one invocation-worker), {CLIENTS} clients with an access key each for "
        f"{SECONDS:.0f} s, each making plain calls, streaming calls and image jobs (200 ms at the provider) in "
        f"turn, on keep-alive connections to both gateways. {KILL_AT:.0f} s into the load the row's binary is "
        "killed with SIGKILL (gateway-api: the first of the two, the instant one of its answers has arrived "
        "complete, so that a charge not yet durable would still be in the process), started again at once, and "
        "the load runs to its end. Then the script polls until billing has settled (outbox empty, no job running, every queue "
        f"empty, no new usage row for {STABLE_FOR:.0f} s) and counts.",
        "",
        "| binary killed | calls answered (plain + streams) | jobs accepted / COMPLETED | usage rows | lost | "
        "doubled | billed, answer cut off | reconcile | settled after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['binary']} | {r['plain'] + r['streams']:,} ({r['plain']:,} + {r['streams']:,}) | "
            f"{r['jobs_accepted']:,} / {r['jobs_completed']:,} | {r['usage_rows']:,} | {r['lost']} | {r['doubled']} | "
            f"{r['cut_off_billed']} | {'pass' if r['reconcile'] == 0 else 'FAIL'} | {settled(r)} |")
    lines += [
        "",
        "- *Calls answered*: a 200 whose whole body arrived; for a stream, one that reached its final "
        "`data: [DONE]` and the end of the response. *Jobs accepted*: answered 202.",
        "- *Lost*: an answered call, or a COMPLETED job, without a usage row (a 202 whose job row is missing "
        "counts too). *Doubled*: more than one usage row for one call, more than one usage row per request id, "
        "a `charge` ledger row that took other than the sum of the usage rows naming it (one per user and "
        "settlement batch), or a charged usage row naming none. *Billed, answer cut off*: usage rows of calls "
        "(and jobs) whose answer the kill broke off; the provider did the work, so billing them is right. *Reconcile*: "
        "`billing-worker reconcile` (every balance equals its ledger, every hold total its open holds and "
        "leases, every user's charged usage its ledger charges, every charge row the usage rows naming it).",
        "- How a call is matched to its usage row: the gateway's `X-Request-Id` response header is the HTTP "
        "request's id, not the id the charge carries (`usage_logs.request_id` is minted by the call path), "
        f"so it cannot be used ({sum(r['request_id_matches'] for r in results)} of "
        f"{sum(r['plain'] + r['streams'] for r in results):,} answered calls' `X-Request-Id` named a usage "
        "row). Instead every chat call of a key asks for a usage no other call of that key has (the mock "
        "counts prompt words, and `[[tokens:N]]` sets the answer's length), so (access key, prompt tokens, "
        "completion tokens) names the call exactly. A job's request id is its job id.",
    ]
    for r in results:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(r["not_answered"].items())) or "none"
        lines.append(
            f"- {r['binary']}: killed {r['killed_at']:.1f} s into the load, ready again at {r['back_at']:.1f} s; "
            f"jobs claimed again after their worker died {r['jobs_retaken']}; jobs FAILED {r['jobs_failed']}; "
            f"dead-lettered messages {r['dead_lettered']}; "
            f"not answered: {refused}.")
        if r["reconcile"] != 0:
            lines.append(f"  reconcile said: `{r['reconcile_text']}`")
    return "\n".join(lines) + "\n"


def write(text):
    """Puts this script's section into OUT: in place of the one there (from its heading to the
    next `## `), else at the end."""
    existing = open(OUT).read() if os.path.exists(OUT) else ""
    at = existing.find("\n" + HEADING + "\n")
    if at < 0:
        before, after = existing, ""
    else:
        end = existing.find("\n## ", at + 1 + len(HEADING))
        before, after = existing[:at], (existing[end:] if end >= 0 else "")
    before = before.rstrip("\n") + "\n\n" if before.strip() else ""
    with open(OUT, "w") as out:
        out.write(before + text.strip("\n") + "\n" + after)


def main():
    global WORK
    WORK = tempfile.mkdtemp(prefix="ai-gateway-kill.")
    for port in (*GATEWAY_PORTS, MOCK_PORT, BILLING_OPS, INVOCATION_OPS):
        if not port_free(port):
            raise SystemExit(f"kill bench: port {port} on 127.0.0.1 is in use; it needs it free")
    for binary in (GATEWAY_BIN, *(f"{BIN}/{b}" for b in ("billing-worker", "invocation-worker", "mock-llm"))):
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"kill bench: {binary} is not built (cargo build --release --bins)")
    results = [row(binary) for binary in ROWS]
    for name in list(PROCS):
        stop(name)
    text = section(results)
    write(text)
    print(text)
    log(f"wrote {OUT}")
    bad = [r["binary"] for r in results
           if r["lost"] or r["doubled"] or r["reconcile"] != 0 or r["settle_seconds"] is None]
    if bad:
        raise SystemExit(f"kill bench: charges lost or doubled, books wrong or not settled after killing {bad}")


def cleanup():
    for name in list(PROCS):
        stop(name)
    try:
        delete_queues()
    except (OSError, SystemExit) as error:
        log(f"deleting the queues: {error}")
    if not os.environ.get("BENCH_KEEP"):
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", DB])


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ok = False
    try:
        main()
        ok = True
    finally:
        cleanup()
        if WORK is None:
            pass
        elif ok and not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(WORK, ignore_errors=True)
        else:
            log(f"logs of this run: {WORK}")
