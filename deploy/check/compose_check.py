"""Validates deploy/docker-compose.yml without a Docker engine.

1. Interpolates ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error},
   ${VAR:+alt} and $$ as Compose does, with the variables a user passes (--env-file
   .run/dev.env), and fails if a variable the file requires is missing from that set.
2. Validates the result against the Compose Specification JSON schema (the copy vendored by
   the pinned check-jsonschema package).
3. Checks what the schema cannot: depends_on targets exist, service_healthy targets have a
   healthcheck, service_completed_successfully targets are one-shot, bind-mounted files and
   the build context/Dockerfile exist, the Prometheus targets are compose services, and
   every app service runs as the image's non-root user with a read-only root filesystem.

usage: compose_check.py deploy/docker-compose.yml
"""

from __future__ import annotations

import json
import re
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from common import Problems

# What `deploy/local/dev-env.sh` writes and the README passes with --env-file.
SAMPLE_ENV = {
    "APP__AUTH__JWT_SECRET": "x" * 48,
    "APP__SECURITY__MASTER_KEY": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "APP__ORDERS__PAYMENT_WEBHOOK_SECRET": "y" * 24,
}

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str], problems: Problems, where: str):
    if isinstance(value, dict):
        return {k: interpolate(v, env, problems, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, problems, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group(1):
            return "$"
        name = match.group(2) or match.group(5)
        op, arg = match.group(3), match.group(4) or ""
        present = name in env
        nonempty = present and env[name] != ""
        if op in (":-", "-"):
            use_default = not nonempty if op == ":-" else not present
            return interpolate(arg, env, problems, where) if use_default else env[name]
        if op in (":?", "?"):
            missing = not nonempty if op == ":?" else not present
            if missing:
                problems.add(f"{where}: required variable {name} is not set ({arg})")
                return ""
            return env[name]
        if op in (":+", "+"):
            use_alt = nonempty if op == ":+" else present
            return interpolate(arg, env, problems, where) if use_alt else ""
        return env.get(name, "")

    return _VAR.sub(replace, value)


def compose_schema() -> dict:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def main() -> None:
    path = Path(sys.argv[1]).resolve()
    base = path.parent
    problems = Problems(path.name)
    raw = yaml.safe_load(path.read_text())
    doc = interpolate(raw, dict(SAMPLE_ENV), problems, "compose")

    schema = compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    for error in validator_cls(schema).iter_errors(doc):
        where = "/".join(str(p) for p in error.absolute_path)
        problems.add(f"compose-spec schema at '{where}': {error.message}")

    services: dict = doc.get("services", {})
    volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for target, spec in depends.items():
            if not problems.check(target in services, f"{name}: depends_on unknown service {target}"):
                continue
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                problems.check("healthcheck" in services[target] and not services[target]["healthcheck"].get("disable"),
                               f"{name}: waits for {target} to be healthy, but {target} has no healthcheck")
            if condition == "service_completed_successfully":
                problems.check(services[target].get("restart", "no") == "no",
                               f"{name}: waits for {target} to complete, but {target} restarts")
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0] if isinstance(mount, str) else mount.get("source", "")
            if source.startswith((".", "/")):
                problems.check((base / source).exists(), f"{name}: bind-mounted {source} does not exist")
            elif source:
                problems.check(source in volumes, f"{name}: named volume {source} is not declared")
        build = svc.get("build")
        if build:
            context = base / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            problems.check((context / dockerfile).is_file(), f"{name}: Dockerfile {context / dockerfile} not found")
        if build:  # our image: same hardening as on Kubernetes
            problems.check(svc.get("read_only") is True, f"{name}: read_only root filesystem expected")
            problems.check("ALL" in svc.get("cap_drop", []), f"{name}: cap_drop ALL expected")
            problems.check(svc.get("user") in (None, "10001", "10001:10001"), f"{name}: must run as the image's uid 10001")

    for required in ("postgres", "rabbitmq", "migrate", "gateway-api", "invocation-worker", "billing-worker",
                     "mock-llm", "prometheus", "grafana"):
        problems.check(required in services, f"service {required} is missing")
    if "migrate" in services:
        command = services["migrate"].get("command")
        problems.check(command == ["gateway-api", "migrate"], "migrate must run `gateway-api migrate`")
        for app in ("gateway-api", "invocation-worker", "billing-worker"):
            cond = (services.get(app, {}).get("depends_on") or {}).get("migrate", {}).get("condition")
            problems.check(cond == "service_completed_successfully", f"{app}: must start after migrate completed successfully")
    rabbit = services.get("rabbitmq", {})
    problems.check(str(rabbit.get("image", "")).startswith("rabbitmq:3.13-management"), "rabbitmq must be rabbitmq:3.13-management")
    problems.check(str(services.get("postgres", {}).get("image", "")).startswith("postgres:15"), "postgres must be postgres:15")

    # Prometheus scrapes compose services.
    prom_file = base / "prometheus/prometheus.yml"
    prom = yaml.safe_load(prom_file.read_text())
    jobs = [c["job_name"] for c in prom.get("scrape_configs", [])]
    problems.check(len(jobs) == len(set(jobs)), "prometheus.yml: duplicate job names")
    scraped = set()
    for config in prom.get("scrape_configs", []):
        for static in config.get("static_configs", []):
            for target in static.get("targets", []):
                host = target.split(":")[0]
                scraped.add(host)
                problems.check(host in services or host == "localhost", f"prometheus.yml: target {target} is no compose service")
    for app in ("gateway-api", "invocation-worker", "billing-worker"):
        problems.check(app in scraped, f"prometheus.yml: {app} is not scraped")

    problems.exit(f"{path.name}: {len(services)} services valid against the Compose Specification schema; "
                  f"references, mounts and scrape targets resolve")


if __name__ == "__main__":
    main()
