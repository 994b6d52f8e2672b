"""Checks deploy/rabbitmq/definitions.json against crates/messaging/src/topology.rs.

The services re-declare the topology on start; RabbitMQ refuses a re-declaration whose
arguments differ (PRECONDITION_FAILED), so the definitions must carry exactly the arguments
the code declares. This reads the code's queue names, dead-letter exchange and the arguments
it puts on each kind of queue, derives the expected definitions, and compares.

With --live (and a reachable local node), it also imports the file into a throw-away vhost
and user with `rabbitmqctl import_definitions`, checks the queues came out as quorum queues
with those arguments, that the user's password hash matches the documented password, and
removes both again.

usage: rabbitmq_check.py deploy/rabbitmq [--live]
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from common import REPO, Problems, topology_queue_names

TOPOLOGY = REPO / "crates/messaging/src/topology.rs"
PASSWORD = "gateway"  # documented dev credentials of deploy/docker-compose.yml


def function_body(text: str, name: str) -> str:
    start = re.search(rf"fn {name}\b[^{{]*\{{", text)
    if not start:
        raise ValueError(f"topology.rs: fn {name} not found")
    depth, i = 1, start.end()
    while depth and i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start.end():i - 1]


def calls(body: str, name: str) -> list[list[str]]:
    """The top-level-comma-separated arguments of every `name(...)` call in `body`."""
    found = []
    for match in re.finditer(rf"\b{name}\(", body):
        depth, i, start, args = 1, match.end(), match.end(), []
        while depth and i < len(body):
            ch = body[i]
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            elif ch == "," and depth == 1:
                args.append(body[start:i].strip())
                start = i + 1
            elif ch == '"':
                i = body.index('"', i + 1)
            i += 1
        last = body[start:i - 1].strip()
        if last:
            args.append(last)
        found.append(args)
    return found


def puts(body: str, var: str | None = None) -> dict[str, str]:
    """`put(&mut VAR, "x-...", VALUE)` / `put(args, ...)` calls -> {argument: value expression}."""
    found = {}
    for args in calls(body, "put"):
        if len(args) != 3 or not re.fullmatch(r'"x-[a-z-]+"', args[1]):
            continue
        target = args[0].replace("&mut", "").strip()
        if var is None or target == var:
            found[args[1].strip('"')] = args[2]
    return found


def expected_definitions() -> tuple[dict, dict]:
    text = TOPOLOGY.read_text()
    queues = topology_queue_names()
    if len(queues) < 1:
        raise ValueError("topology.rs: no *_QUEUE constants")
    limit = int(re.search(r"pub const DELIVERY_LIMIT:\s*i32\s*=\s*(\d+)", text).group(1))
    dlx = re.search(r'dead_letter_exchange:\s*format!\("\{prefix\}([^"]+)"\)', text).group(1)
    retry_suffix = re.search(r'retry:\s*format!\("\{work\}([^"]+)"\)', text).group(1)
    dlq_suffix = re.search(r'dead_letter:\s*format!\("\{work\}([^"]+)"\)', text).group(1)

    def literal(expr: str, queue: str) -> object:
        expr = expr.strip()
        if m := re.fullmatch(r'text\("([^"]*)"\)\??', expr):
            return m.group(1)
        if re.fullmatch(r"FieldValue::I\(DELIVERY_LIMIT\)", expr):
            return limit
        if re.fullmatch(r"text\(&names\.dead_letter_exchange\)\??", expr):
            return dlx
        if re.fullmatch(r"text\(&set\.dead_letter\)\??", expr):
            return queue + dlq_suffix
        if re.fullmatch(r"text\(&set\.work\)\??", expr):
            return queue
        raise ValueError(f"topology.rs: cannot read argument value `{expr}`; update deploy/check/rabbitmq_check.py")

    base = puts(function_body(text, "quorum_arguments"))
    at_least_once = puts(function_body(text, "at_least_once_dead_lettering"))
    declare = function_body(text, "declare_topology")
    work_args = puts(declare, "work")
    retry_args = puts(declare, "retry")
    if "at_least_once_dead_lettering(&mut work)" in declare:
        work_args |= at_least_once
    if "at_least_once_dead_lettering(&mut retry)" in declare:
        retry_args |= at_least_once

    expected_queues = {}
    for queue in queues:
        def args(extra: dict[str, str]) -> dict:
            return {k: literal(v, queue) for k, v in (base | extra).items()}
        expected_queues[queue] = args(work_args)
        expected_queues[queue + retry_suffix] = args(retry_args)
        expected_queues[queue + dlq_suffix] = args({})
    expected_bindings = {(dlx, queue + dlq_suffix, queue + dlq_suffix) for queue in queues}
    return expected_queues, {"exchange": dlx, "bindings": expected_bindings}


def static_check(defs: dict, problems: Problems) -> None:
    queues, extra = expected_definitions()
    got = {q["name"]: q for q in defs.get("queues", [])}
    problems.check(set(got) == set(queues), f"queues {sorted(got)} differ from topology.rs {sorted(queues)}")
    for name, args in queues.items():
        if name not in got:
            continue
        q = got[name]
        problems.check(q.get("durable") is True and q.get("auto_delete") is False, f"queue {name}: must be durable, not auto-delete")
        problems.check(q.get("vhost") == "/", f"queue {name}: vhost must be /")
        problems.check(q.get("arguments") == args, f"queue {name}: arguments {q.get('arguments')} != code's {args}")
    exchanges = {e["name"]: e for e in defs.get("exchanges", [])}
    dlx = exchanges.get(extra["exchange"])
    if problems.check(dlx is not None, f"exchange {extra['exchange']} missing"):
        problems.check(dlx.get("type") == "direct" and dlx.get("durable") is True and dlx.get("auto_delete") is False,
                       f"exchange {extra['exchange']}: must be a durable direct exchange")
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in defs.get("bindings", [])
                if b.get("destination_type") == "queue"}
    problems.check(bindings == extra["bindings"], f"bindings {sorted(bindings)} != code's {sorted(extra['bindings'])}")
    users = {u["name"]: u for u in defs.get("users", [])}
    problems.check("gateway" in users, "definitions: user 'gateway' (used by docker-compose.yml) missing")
    perms = {(p["user"], p["vhost"]) for p in defs.get("permissions", [])}
    problems.check(("gateway", "/") in perms, "definitions: user 'gateway' has no permissions on /")
    problems.check(any(v["name"] == "/" for v in defs.get("vhosts", [])), "definitions: vhost / missing")


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(["rabbitmqctl", *args], 124, "", "rabbitmqctl timed out")


def live_check(defs: dict, problems: Problems) -> None:
    if not shutil.which("rabbitmqctl") or rabbitmqctl("-q", "status").returncode != 0:
        problems.note("live import skipped: no local RabbitMQ node reachable with rabbitmqctl")
        return
    tag = uuid.uuid4().hex[:8]
    vhost, user = f"deploy_check_{tag}", f"deploy_check_{tag}"
    scoped = json.loads(json.dumps(defs))
    for key in ("queues", "exchanges", "bindings", "policies", "parameters"):
        for item in scoped.get(key, []):
            item["vhost"] = vhost
    scoped["vhosts"] = [{"name": vhost}]
    for item in scoped.get("users", []):
        item["name"] = user
    scoped["permissions"] = [dict(p, user=user, vhost=vhost) for p in scoped.get("permissions", [])]
    scoped["topic_permissions"] = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(scoped, handle)
    Path(handle.name).chmod(0o644)  # the broker reads it as its own user
    try:
        result = rabbitmqctl("import_definitions", handle.name)
        if not problems.check(result.returncode == 0, f"rabbitmqctl import_definitions refused the file: {result.stderr.strip() or result.stdout.strip()}"):
            return
        listed = rabbitmqctl("-q", "list_queues", "-p", vhost, "name", "type", "durable", "--formatter", "json")
        rows = {q["name"]: q for q in json.loads(listed.stdout or "[]")}
        for queue in defs.get("queues", []):
            row = rows.get(queue["name"])
            if problems.check(row is not None, f"live: queue {queue['name']} not created"):
                problems.check(row.get("type") == "quorum", f"live: queue {queue['name']} is {row.get('type')}, not quorum")
        auth = rabbitmqctl("authenticate_user", user, PASSWORD)
        problems.check(auth.returncode == 0, f"live: the user's password hash does not match the documented password '{PASSWORD}'")
        version = rabbitmqctl("-q", "version").stdout.strip()
        problems.note(f"live: imported into a temporary vhost of the local RabbitMQ {version}: {len(rows)} quorum queues")
    finally:
        rabbitmqctl("delete_vhost", vhost)
        rabbitmqctl("delete_user", user)
        Path(handle.name).unlink(missing_ok=True)


def main() -> None:
    folder = Path(sys.argv[1]).resolve()
    problems = Problems("rabbitmq")
    defs = json.loads((folder / "definitions.json").read_text())
    conf = (folder / "rabbitmq.conf").read_text()
    problems.check(re.search(r"^load_definitions\s*=\s*/etc/rabbitmq/definitions\.json\s*$", conf, re.M) is not None,
                   "rabbitmq.conf must load /etc/rabbitmq/definitions.json")
    try:
        static_check(defs, problems)
    except (ValueError, AttributeError) as error:
        problems.add(f"cannot derive the topology from {TOPOLOGY.relative_to(REPO)}: {error}")
    if "--live" in sys.argv and not problems.items:
        live_check(defs, problems)
    problems.exit(f"definitions.json declares exactly the exchanges, queues, arguments and bindings of topology.rs")


if __name__ == "__main__":
    main()
