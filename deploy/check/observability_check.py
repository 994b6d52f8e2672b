"""Checks the Prometheus and Grafana files of deploy/ against the metrics the code records.

- grafana/provisioning: a Prometheus datasource whose uid the dashboard uses, and a file
  provider whose path is where docker-compose.yml mounts grafana/dashboards.
- grafana/dashboards/*.json: valid dashboard JSON (unique panel ids, a PromQL expression per
  target, balanced brackets), and every metric the expressions use is recorded somewhere in
  crates/ or services/ (histograms with _bucket/_sum/_count) or comes from RabbitMQ/Prometheus.
- The dashboard covers each metric family the operations issue names, and equals what
  grafana/dashboard.py generates.

usage: observability_check.py deploy/
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from common import Problems, emitted_metrics

EXTERNAL = re.compile(r"^(rabbitmq_|up$|scrape_|process_)")
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "clamp_min", "clamp_max",
    "min", "max", "avg", "count", "le", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "label_values", "bool", "offset", "topk", "bottomk", "abs", "delta", "deriv", "vector", "scalar", "time",
}
# Families the issue asks the dashboard to show; the jobs ones are recorded by the invocation worker.
REQUIRED = [
    "http_requests_total", "http_request_duration_seconds",
    "upstream_requests_total", "upstream_latency_seconds", "upstream_failovers_total",
    "billing_settlements_total", "billing_lag_seconds", "billing_outbox_size", "billing_published_total",
    "billing_holds_open",
    "messaging_consumed_total", "messaging_in_flight", "messaging_dead_lettered_total", "messaging_retried_total",
    "jobs_total", "job_duration_seconds",
]


def metric_names(expr: str) -> set[str]:
    # Drop label matchers, strings and range selectors, then take the identifiers left over.
    bare = re.sub(r'\{[^}]*\}', "", expr)
    bare = re.sub(r'"[^"]*"', "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b", bare))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+", n)}


def main() -> None:
    deploy = Path(sys.argv[1]).resolve()
    problems = Problems("observability")
    emitted = emitted_metrics()
    known = set()
    for name, kind in emitted.items():
        known.add(name)
        if kind == "histogram":
            known |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}

    datasources = yaml.safe_load((deploy / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d.get("uid") for d in datasources.get("datasources", []) if d.get("type") == "prometheus"}
    problems.check("prometheus" in uids, "grafana: no provisioned Prometheus datasource with uid 'prometheus'")
    providers = yaml.safe_load((deploy / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    compose = (deploy / "docker-compose.yml").read_text()
    for provider in providers.get("providers", []):
        path = provider.get("options", {}).get("path", "")
        problems.check(f"./grafana/dashboards:{path}" in compose, f"grafana: provider path {path} is not where compose mounts grafana/dashboards")

    dashboards = sorted((deploy / "grafana/dashboards").glob("*.json"))
    problems.check(bool(dashboards), "grafana: no dashboard JSON")
    used: set[str] = set()
    for file in dashboards:
        try:
            dashboard = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            problems.add(f"{file.name}: invalid JSON: {error}")
            continue
        for field in ("uid", "title", "panels", "schemaVersion"):
            problems.check(field in dashboard, f"{file.name}: missing {field}")
        ids = [p.get("id") for p in dashboard.get("panels", [])]
        problems.check(len(ids) == len(set(ids)), f"{file.name}: duplicate panel ids")
        for panel in dashboard.get("panels", []):
            if panel.get("type") == "row":
                continue
            grid = panel.get("gridPos", {})
            problems.check(all(k in grid for k in "hwxy") and grid.get("x", 0) + grid.get("w", 0) <= 24,
                           f"{file.name}: panel '{panel.get('title')}' has a bad gridPos")
            targets = panel.get("targets", [])
            problems.check(bool(targets), f"{file.name}: panel '{panel.get('title')}' has no query")
            for target in targets:
                expr = target.get("expr", "")
                if not problems.check(bool(expr.strip()), f"{file.name}: panel '{panel.get('title')}' has an empty query"):
                    continue
                for open_, close in ("()", "{}", "[]"):
                    problems.check(expr.count(open_) == expr.count(close), f"{file.name}: unbalanced {open_}{close} in: {expr}")
                for name in metric_names(expr):
                    used.add(name)
                    if EXTERNAL.match(name):
                        continue
                    problems.check(name in known, f"{file.name}: panel '{panel.get('title')}' uses {name}, which no code records")
    generator = deploy / "grafana/dashboard.py"
    if generator.exists():
        generated = subprocess.run([sys.executable, str(generator)], capture_output=True, text=True, check=True).stdout
        committed = (deploy / "grafana/dashboards/ai-gateway.json").read_text()
        problems.check(json.loads(generated) == json.loads(committed),
                       "grafana/dashboards/ai-gateway.json differs from what grafana/dashboard.py generates; "
                       "run: python3 deploy/grafana/dashboard.py > deploy/grafana/dashboards/ai-gateway.json")
    for family in REQUIRED:
        problems.check(any(u == family or u.startswith(family + "_") for u in used), f"dashboard: no panel shows {family}")
    not_shown = sorted(n for n in emitted if not any(u == n or u.startswith(n + "_") for u in used) and "test" not in n)
    if not_shown:
        problems.note(f"recorded but on no dashboard panel: {', '.join(not_shown)}")
    problems.exit(f"grafana provisioning and {len(dashboards)} dashboard(s): {len(used)} metric names, all recorded by the code or by RabbitMQ")


if __name__ == "__main__":
    main()
