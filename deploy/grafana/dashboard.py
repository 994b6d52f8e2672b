"""Generates the Grafana dashboard of the AI gateway (Prometheus metrics of every service).

    python3 deploy/grafana/dashboard.py > deploy/grafana/dashboards/ai-gateway.json

Edit this file, not the JSON: deploy/check.sh fails when the two differ, and it fails when a
panel charts a metric that no code records.
"""
import json

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
state = {"id": 1, "y": 0}

def row(title):
    panels.append({"type": "row", "title": title, "id": state["id"], "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": state["y"]}, "panels": []})
    state["id"] += 1
    state["y"] += 1
    state["x"] = 0

def ts(title, targets, unit="short", w=8, h=8, description=None, stack=False):
    if state["x"] + w > 24:
        state["x"] = 0
        state["y"] += h
    p = {
        "type": "timeseries", "title": title, "id": state["id"], "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": state["x"], "y": state["y"]},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10,
                        "stacking": {"mode": "normal" if stack else "none", "group": "A"}}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l}
                    for i, (e, l) in enumerate(targets)],
    }
    if description:
        p["description"] = description
    panels.append(p)
    state["id"] += 1
    state["x"] += w
    if state["x"] >= 24:
        state["x"] = 0
        state["y"] += h

def stat(title, expr, unit="short", w=6, h=4, description=None):
    if state["x"] + w > 24:
        state["x"] = 0
        state["y"] += h
    p = {"type": "stat", "title": title, "id": state["id"], "datasource": DS,
         "gridPos": {"h": h, "w": w, "x": state["x"], "y": state["y"]},
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
         "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                     "colorMode": "value", "graphMode": "area", "textMode": "auto"},
         "targets": [{"refId": "A", "datasource": DS, "expr": expr}]}
    if description:
        p["description"] = description
    panels.append(p)
    state["id"] += 1
    state["x"] += w
    if state["x"] >= 24:
        state["x"] = 0
        state["y"] += h

def end_row(h=8):
    if state["x"] != 0:
        state["x"] = 0
        state["y"] += h

R = "[$__rate_interval]"
SEL = 'job=~"$job"'

def q(p, metric, by, extra=""):
    return (f'histogram_quantile({p}, sum by (le{", " + by if by else ""}) '
            f'(rate({metric}_bucket{{{SEL}{extra}}}{R})))')

# ---------------------------------------------------------------- overview
row("Overview")
stat("Requests / s", f'sum(rate(http_requests_total{{{SEL}}}{R}))', "reqps")
stat("5xx ratio", f'sum(rate(http_requests_total{{{SEL},status=~"5.."}}{R})) / clamp_min(sum(rate(http_requests_total{{{SEL}}}{R})), 1e-9)', "percentunit")
stat("p95 latency", q(0.95, "http_request_duration_seconds", ""), "s")
stat("Billing outbox", f'max(billing_outbox_size{{{SEL}}})', "short",
     description="Charges waiting in the Postgres outbox for a broker publish (billing_outbox_size).")
end_row(4)

# ---------------------------------------------------------------- HTTP
row("HTTP API (gateway-api)")
ts("Request rate by route and status",
   [(f'sum by (route, status) (rate(http_requests_total{{{SEL}}}{R}))', "{{route}} {{status}}")], "reqps", w=12)
ts("Errors by route and status (4xx, 5xx)",
   [(f'sum by (route, status) (rate(http_requests_total{{{SEL},status=~"[45].."}}{R}))', "{{route}} {{status}}")], "reqps", w=12)
ts("Latency p95 by route",
   [(q(0.95, "http_request_duration_seconds", "route"), "{{route}}")], "s", w=12)
ts("Latency p50 / p95 / p99 by status",
   [(q(0.5, "http_request_duration_seconds", "status"), "p50 {{status}}"),
    (q(0.95, "http_request_duration_seconds", "status"), "p95 {{status}}"),
    (q(0.99, "http_request_duration_seconds", "status"), "p99 {{status}}")], "s", w=12)
end_row()

# ---------------------------------------------------------------- upstream
row("Upstream providers")
ts("Upstream calls by provider and outcome",
   [(f'sum by (provider, outcome) (rate(upstream_requests_total{{{SEL}}}{R}))', "{{provider}} {{outcome}}")], "reqps")
ts("Upstream errors by provider and key",
   [(f'sum by (provider, key, outcome) (rate(upstream_requests_total{{{SEL},outcome!="ok"}}{R}))', "{{provider}} key {{key}} {{outcome}}")], "reqps")
ts("Key and provider failovers by provider",
   [(f'sum by (provider) (rate(upstream_failovers_total{{{SEL}}}{R}))', "keys of {{provider}}"),
    (f'sum by (provider) (rate(upstream_provider_failovers_total{{{SEL}}}{R}))', "on to {{provider}}")], "ops")
ts("Upstream latency p50 / p95 / p99 by provider",
   [(q(0.5, "upstream_latency_seconds", "provider"), "p50 {{provider}}"),
    (q(0.95, "upstream_latency_seconds", "provider"), "p95 {{provider}}"),
    (q(0.99, "upstream_latency_seconds", "provider"), "p99 {{provider}}")], "s", w=24)
end_row()

# ---------------------------------------------------------------- billing
row("Billing")
ts("Settlements / s by outcome",
   [(f'sum by (outcome) (rate(billing_settlements_total{{{SEL}}}{R}))', "{{outcome}}")], "ops")
ts("Billing lag (call finished to settled)",
   [(q(0.5, "billing_lag_seconds", ""), "p50"),
    (q(0.95, "billing_lag_seconds", ""), "p95"),
    (q(0.99, "billing_lag_seconds", ""), "p99")], "s")
ts("Outbox size",
   [(f'max(billing_outbox_size{{{SEL}}})', "charges in the outbox")], "short",
   description="Every billing worker reports the same table size; max, not sum.")
ts("Charges published by path",
   [(f'sum by (path) (rate(billing_published_total{{{SEL}}}{R}))', "{{path}}"),
    (f'sum(rate(billing_lost_total{{{SEL}}}{R}))', "lost")], "ops",
   description="broker: published at once; outbox: broker unavailable, kept in Postgres; lost: neither worked.")
ts("Settlement batches",
   [(q(0.95, "billing_batch_size", ""), "p95 batch size"),
    (f'sum(rate(billing_batch_size_count{{{SEL}}}{R}))', "batches / s"),
    (q(0.95, "billing_batch_seconds", ""), "p95 batch seconds")], "short")
ts("Holds open / expired holds released",
   [(f'max(billing_holds_open{{{SEL}}})', "open holds"),
    (f'sum(rate(billing_holds_expired_total{{{SEL}}}{R}))', "expired released / s")], "short",
   description="Open holds (reserved balance of calls in flight) as the billing workers last counted them.")
ts("Amount held by open holds",
   [(f'max(billing_holds_open_amount{{{SEL}}})', "held")], "short",
   description="Approximate (a float for charting); balances themselves stay exact decimals.")
end_row()

# ---------------------------------------------------------------- messaging
row("Messaging (RabbitMQ consumers and publishers)")
ts("Consumed / acked by queue",
   [(f'sum by (queue) (rate(messaging_consumed_total{{{SEL}}}{R}))', "consumed {{queue}}"),
    (f'sum by (queue) (rate(messaging_acked_total{{{SEL}}}{R}))', "acked {{queue}}")], "ops")
ts("Retried / requeued / dead-lettered by queue",
   [(f'sum by (queue) (rate(messaging_retried_total{{{SEL}}}{R}))', "retried {{queue}}"),
    (f'sum by (queue) (rate(messaging_requeued_total{{{SEL}}}{R}))', "requeued {{queue}}"),
    (f'sum by (queue) (rate(messaging_dead_lettered_total{{{SEL}}}{R}))', "dead-lettered {{queue}}")], "ops")
ts("In flight by queue",
   [(f'sum by (queue) (messaging_in_flight{{{SEL}}})', "{{queue}}")], "short",
   description="Deliveries being handled now; bounded by the consumer prefetch (APP__BROKER__PREFETCH).")
ts("Handler duration p95 by queue and outcome",
   [(q(0.95, "messaging_handler_duration_seconds", "queue, outcome"), "{{queue}} {{outcome}}")], "s")
ts("Published by queue and outcome",
   [(f'sum by (queue, outcome) (rate(messaging_published_total{{{SEL}}}{R}))', "{{queue}} {{outcome}}")], "ops")
ts("Publish confirm latency p95 by queue",
   [(q(0.95, "messaging_publish_duration_seconds", "queue"), "{{queue}}")], "s")
ts("Consumers running / broker connected",
   [(f'sum by (job, queue) (messaging_consumer_running{{{SEL}}})', "consumer {{job}} {{queue}}"),
    (f'min by (job) (messaging_broker_connected{{{SEL}}})', "connected {{job}}")], "short")
ts("Broker reconnects",
   [(f'sum by (job) (increase(messaging_broker_reconnects_total{{{SEL}}}{R}))', "{{job}}")], "short")
ts("Queue depth (RabbitMQ)",
   [('sum by (queue) (rabbitmq_detailed_queue_messages_ready)', "ready {{queue}}"),
    ('sum(rabbitmq_queue_messages_ready)', "ready (all queues)")], "short",
   description="From RabbitMQ's rabbitmq_prometheus plugin (per-queue series need /metrics/detailed; the aggregate always works). The workers scale on this in Kubernetes (KEDA).")
end_row()

# ---------------------------------------------------------------- jobs
row("Async jobs (invocation-worker)")
ts("Jobs submitted and finished / s by status",
   [(f'sum(rate(jobs_submitted_total{{{SEL}}}{R}))', "submitted"),
    (f'sum by (status) (rate(jobs_total{{{SEL}}}{R}))', "{{status}}")], "ops")
ts("Job duration p50 / p95 / p99",
   [(q(0.5, "job_duration_seconds", "status"), "p50 {{status}}"),
    (q(0.95, "job_duration_seconds", "status"), "p95 {{status}}"),
    (q(0.99, "job_duration_seconds", "status"), "p99 {{status}}")], "s")
ts("Job retries, re-publishes and webhooks",
   [(f'sum(rate(jobs_retried_total{{{SEL}}}{R}))', "retried"),
    (f'sum(rate(jobs_republished_total{{{SEL}}}{R}))', "re-published by the gateway"),
    (f'sum by (outcome) (rate(webhooks_total{{{SEL}}}{R}))', "webhook {{outcome}}")], "ops",
   description="re-published: job messages the broker did not confirm at submission, published again by the gateway once the broker was back (jobs_republished_total).")
end_row()

# ---------------------------------------------------------------- admission and free work
row("Credit leases and what calls are billed for")
ts("Leases granted, topped up, given back / s",
   [(f'sum by (kind) (rate(leases_total{{{SEL}}}{R}))', "{{kind}}"),
    (f'sum(rate(leases_refused_total{{{SEL}}}{R}))', "refused (balance too small: holds)"),
    (f'sum(rate(billing_leases_expired_total{{{SEL}}}{R}))', "released after their process died")], "ops",
   description="A lease lets a gateway process admit a busy user's calls in memory; refused grants leave that user's calls on per-call holds (leases_total, leases_refused_total, billing_leases_expired_total).")
ts("Streams cut off, unpriceable usage / s",
   [(f'sum by (reason) (rate(stream_cut_total{{{SEL}}}{R}))', "stream cut: {{reason}}"),
    (f'sum(rate(calls_unpriceable_usage_total{{{SEL}}}{R}))', "usage billed at the hold")], "ops",
   description="A cut stream is still read to its end (or its deadline) and billed; usage that cannot be priced is billed what was held.")
ts("Calls refused by limits / s",
   [(f'sum by (kind) (rate(limits_refused_total{{{SEL}}}{R}))', "{{kind}}")], "ops",
   description="429s of rate, concurrency and pending-job limits (rate) and of spend limits (spend); see docs/LIMITS.md (limits_refused_total).")
end_row()

dashboard = {
    "uid": "ai-gateway",
    "title": "AI gateway",
    "description": "Requests, upstream providers, billing, messaging and jobs of the AI gateway services.",
    "tags": ["ai-gateway"],
    "timezone": "browser",
    "editable": False,
    "graphTooltip": 1,
    "refresh": "10s",
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
         "current": {"text": "Prometheus", "value": "prometheus"}, "hide": 0},
        {"name": "job", "type": "query", "label": "Service", "datasource": DS,
         "query": {"query": "label_values(up, job)", "refId": "job"},
         "definition": "label_values(up, job)", "refresh": 2, "includeAll": True, "multi": True,
         "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "hide": 0, "sort": 1},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
print(json.dumps(dashboard, indent=2))
