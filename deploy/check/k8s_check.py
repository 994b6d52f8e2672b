"""Validates a rendered kustomization (the output of `kubectl kustomize DIR`).

1. Every built-in object against the Kubernetes OpenAPI schemas bundled by kubernetes-validate,
   strict (unknown fields are errors), for each version given with --k8s.
2. Every KEDA object (ScaledObject, TriggerAuthentication) against the schema of KEDA's CRD,
   taken from the pinned cloudcoil.models.keda package and made strict the way the API server
   treats a structural CRD schema (unknown fields are errors).
3. Any other apiVersion/kind is an error (nothing goes unchecked). Enumerated fields the
   schemas type as plain strings (pathType, imagePullPolicy, probe/metric types, ...) are
   checked against their allowed values.
4. What the operations issue requires of the manifests, and that the objects refer to each
   other correctly (selectors, ports, ConfigMap/Secret names and keys, scale targets, queues).

usage: k8s_check.py RENDERED.yaml --k8s 1.29.0 --k8s 1.37.0 [--production]
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
from cloudcoil.models.keda import v1alpha1 as keda

from common import REPO, Problems, load_documents, topology_queue_names

BUILTIN_GROUPS = {
    "v1",
    "apps/v1",
    "batch/v1",
    "policy/v1",
    "autoscaling/v2",
    "networking.k8s.io/v1",
}
KEDA_MODELS = {"ScaledObject": keda.ScaledObject, "TriggerAuthentication": keda.TriggerAuthentication}
SECRET_TEMPLATE = REPO / "k8s/base/secret.example.yaml"
SECRET_NAME = "ai-gateway-secrets"
UID = 10001


def strict(schema: dict) -> dict:
    """Unknown fields rejected wherever the schema lists an object's properties (as the API
    server prunes/rejects them for a structural CRD schema)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def keda_validators() -> dict[str, jsonschema.protocols.Validator]:
    validators = {}
    for kind, model in KEDA_MODELS.items():
        schema = strict(model.model_json_schema(by_alias=True, mode="validation"))
        # Fix apiVersion/kind to this CRD (the models accept any string).
        schema["properties"]["apiVersion"] = {"const": "keda.sh/v1alpha1"}
        schema["properties"]["kind"] = {"const": kind}
        schema.setdefault("required", [])
        for field in ("apiVersion", "kind", "metadata", "spec"):
            if field not in schema["required"]:
                schema["required"].append(field)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        validators[kind] = cls(schema)
    return validators


# Enumerated fields: the Kubernetes JSON schemas (from the OpenAPI v2 document) type these as
# plain strings, so their allowed values are checked here, by the field's path suffix.
ENUMS = {
    ("pathType",): {"Exact", "Prefix", "ImplementationSpecific"},
    ("imagePullPolicy",): {"Always", "IfNotPresent", "Never"},
    ("restartPolicy",): {"Always", "OnFailure", "Never"},
    ("protocol",): {"TCP", "UDP", "SCTP"},
    ("seccompProfile", "type"): {"RuntimeDefault", "Localhost", "Unconfined"},
    ("strategy", "type"): {"RollingUpdate", "Recreate"},
    ("metrics", "*", "type"): {"Resource", "Pods", "Object", "External", "ContainerResource"},
    ("target", "type"): {"Utilization", "Value", "AverageValue"},
    ("policies", "*", "type"): {"Pods", "Percent"},
    ("selectPolicy",): {"Max", "Min", "Disabled"},
    ("whenUnsatisfiable",): {"DoNotSchedule", "ScheduleAnyway"},
    ("capabilities", "drop", "*"): None,  # any capability name
}
SERVICE_TYPES = {"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"}


def enum_checks(doc: dict, problems: Problems) -> None:
    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + [key])
        elif isinstance(node, list):
            for value in node:
                walk(value, path + ["*"])
        else:
            for suffix, allowed in ENUMS.items():
                if allowed is not None and tuple(path[-len(suffix):]) == suffix and node not in allowed:
                    problems.add(f"{ident(doc)} at '{'/'.join(path)}': {node!r} is not one of {sorted(allowed)}")
    walk(doc, [])
    if doc.get("kind") == "Service":
        kind = doc.get("spec", {}).get("type", "ClusterIP")
        problems.check(kind in SERVICE_TYPES, f"{ident(doc)}: spec.type {kind!r} is not one of {sorted(SERVICE_TYPES)}")


def ident(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in ("Deployment", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def schema_checks(docs: list[dict], versions: list[str], problems: Problems) -> None:
    validators = keda_validators()
    for doc in docs:
        api, kind = doc.get("apiVersion"), doc.get("kind")
        if api in BUILTIN_GROUPS:
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    path = "/".join(str(p) for p in error.path)
                    problems.add(f"{ident(doc)} (Kubernetes {version}) at '{path}': {error.message}")
                except kubernetes_validate.SchemaNotFoundError:
                    problems.add(f"{ident(doc)}: no Kubernetes {version} schema for {api} {kind}")
            enum_checks(doc, problems)
        elif api == "keda.sh/v1alpha1" and kind in validators:
            for error in validators[kind].iter_errors(doc):
                path = "/".join(str(p) for p in error.absolute_path)
                problems.add(f"{ident(doc)} (KEDA CRD schema) at '{path}': {error.message}")
        else:
            problems.add(f"{ident(doc)}: apiVersion {api} kind {kind} has no schema here; add one to the check")


def secret_template() -> dict[str, str]:
    template = load_documents(SECRET_TEMPLATE)[0]
    return template.get("stringData", {}) | template.get("data", {})


def reference_checks(docs: list[dict], production: bool, problems: Problems) -> None:
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deployments = by_kind.get("Deployment", {})
    configmaps = by_kind.get("ConfigMap", {})
    secret_keys = secret_template()
    queues = topology_queue_names()

    # Namespace: one, and every object in it.
    namespaces = list(by_kind.get("Namespace", {}))
    problems.check(len(namespaces) == 1, f"expected one Namespace, found {namespaces}")
    for doc in docs:
        if doc["kind"] != "Namespace" and namespaces:
            problems.check(doc["metadata"].get("namespace") == namespaces[0],
                           f"{ident(doc)} is not in namespace {namespaces[0]}")

    # Secrets are created out of band, never rendered.
    problems.check("Secret" not in by_kind, "the kustomization renders a Secret; secrets are created with kubectl, not committed")

    # ConfigMap: non-secret settings only, with the container defaults.
    problems.check(len(configmaps) == 1, f"expected one ConfigMap, found {list(configmaps)}")
    for name, cm in configmaps.items():
        data = cm.get("data", {})
        problems.check(data.get("APP__LOG_FORMAT") == "json", f"ConfigMap/{name}: APP__LOG_FORMAT must be json")
        problems.check(data.get("APP__SERVER__HOST") == "0.0.0.0", f"ConfigMap/{name}: APP__SERVER__HOST must be 0.0.0.0")
        problems.check(data.get("APP__RUN_MIGRATIONS") == "false",
                       f"ConfigMap/{name}: APP__RUN_MIGRATIONS must be false (the migration Job applies them)")
        for key, value in data.items():
            problems.check(key not in secret_keys, f"ConfigMap/{name}: {key} belongs in the Secret")
            problems.check(not re.search(r"SECRET|PASSWORD|MASTER_KEY", key), f"ConfigMap/{name}: {key} looks secret")
            problems.check(not re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)), f"ConfigMap/{name}: {key} carries credentials")

    # Pods: security context, resources, references, probes.
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        who = ident(doc)
        pod_sc = spec.get("securityContext", {})
        problems.check(spec.get("automountServiceAccountToken") is False, f"{who}: automountServiceAccountToken must be false")
        problems.check(pod_sc.get("runAsNonRoot") is True, f"{who}: pod securityContext.runAsNonRoot must be true")
        problems.check(pod_sc.get("runAsUser") == UID, f"{who}: pod securityContext.runAsUser must be {UID}")
        problems.check(pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                       f"{who}: pod seccompProfile must be RuntimeDefault")
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            cwho = f"{who} container {container['name']}"
            sc = container.get("securityContext", {})
            problems.check(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{cwho}: runAsNonRoot")
            problems.check(sc.get("runAsUser", pod_sc.get("runAsUser")) == UID, f"{cwho}: runAsUser {UID}")
            problems.check(sc.get("allowPrivilegeEscalation") is False, f"{cwho}: allowPrivilegeEscalation must be false")
            problems.check(sc.get("readOnlyRootFilesystem") is True, f"{cwho}: readOnlyRootFilesystem must be true")
            problems.check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{cwho}: capabilities must drop ALL")
            problems.check(sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type") == "RuntimeDefault",
                           f"{cwho}: seccompProfile RuntimeDefault")
            resources = container.get("resources", {})
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    problems.check(resource in resources.get(section, {}), f"{cwho}: resources.{section}.{resource} missing")
            image = container.get("image", "")
            if production:
                problems.check("/" in image.split(":")[0] and ":" in image and not image.endswith(":latest"),
                               f"{cwho}: image '{image}' must name a registry and a release tag in production")
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    ref = source["configMapRef"]["name"]
                    problems.check(ref in configmaps, f"{cwho}: envFrom ConfigMap {ref} is not rendered")
                if "secretRef" in source:
                    problems.check(source["secretRef"]["name"] == SECRET_NAME, f"{cwho}: envFrom Secret must be {SECRET_NAME}")
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    problems.check(ref["name"] == SECRET_NAME, f"{cwho}: env {env['name']} reads Secret {ref['name']}")
                    problems.check(ref["key"] in secret_keys,
                                   f"{cwho}: env {env['name']} reads key {ref['key']}, absent from secret.example.yaml")
            # A mounted /tmp is the only writable path.
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            problems.check("/tmp" in mounts, f"{cwho}: mount an emptyDir at /tmp (read-only root filesystem)")
            if doc["kind"] == "Deployment":
                ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    http = container.get(probe, {}).get("httpGet", {})
                    problems.check(http.get("path") == path, f"{cwho}: {probe} must GET {path}")
                    problems.check(http.get("port") in ports or http.get("port") in ports.values(),
                                   f"{cwho}: {probe} port {http.get('port')} is not a container port")
        if doc["kind"] == "Deployment":
            problems.check(spec.get("terminationGracePeriodSeconds") == 30, f"{who}: terminationGracePeriodSeconds must be 30")
            problems.check(matches(doc["spec"]["selector"].get("matchLabels", {}), doc["spec"]["template"]["metadata"].get("labels", {})),
                           f"{who}: selector does not match its pod labels")

    # The migration Job runs `gateway-api migrate`.
    jobs = by_kind.get("Job", {})
    migrating = [j for j in jobs.values()
                 if any(c.get("command", []) + c.get("args", []) == ["gateway-api", "migrate"]
                        for c in j["spec"]["template"]["spec"]["containers"])]
    problems.check(len(migrating) == 1, "expected one Job running `gateway-api migrate`")

    # Services select a Deployment and target one of its named ports; the Ingress a Service port.
    services = by_kind.get("Service", {})
    for name, svc in services.items():
        targets = [d for d in deployments.values() if matches(svc["spec"].get("selector", {}), d["spec"]["template"]["metadata"]["labels"])]
        if problems.check(bool(targets), f"Service/{name} selects no Deployment"):
            names = {p.get("name") for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort")
                problems.check(isinstance(target, int) or target in names, f"Service/{name}: targetPort {target} is no container port")
    for name, ingress in by_kind.get("Ingress", {}).items():
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                svc = services.get(backend["name"])
                if problems.check(svc is not None, f"Ingress/{name}: backend Service {backend['name']} is not rendered"):
                    port_names = {p.get("name") for p in svc["spec"]["ports"]} | {p["port"] for p in svc["spec"]["ports"]}
                    wanted = backend["port"].get("name", backend["port"].get("number"))
                    problems.check(wanted in port_names, f"Ingress/{name}: Service {backend['name']} has no port {wanted}")

    # Autoscaling: an HPA for gateway-api, a KEDA ScaledObject per worker; neither target pins replicas.
    hpas = by_kind.get("HorizontalPodAutoscaler", {})
    scaled = by_kind.get("ScaledObject", {})
    auths = by_kind.get("TriggerAuthentication", {})
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()}
    problems.check("gateway-api" in hpa_targets, "gateway-api has no HorizontalPodAutoscaler")
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        problems.check(target["kind"] == "Deployment" and target["name"] in deployments, f"HorizontalPodAutoscaler/{name}: target {target} missing")
        problems.check(hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], f"HorizontalPodAutoscaler/{name}: min > max")
    worker_queues = {"invocation-worker": "model_invocation_queue", "billing-worker": "billing_log_queue"}
    for worker, queue in worker_queues.items():
        problems.check(queue in queues, f"{queue} is not declared in crates/messaging/src/topology.rs")
        mine = [s for s in scaled.values() if s["spec"]["scaleTargetRef"]["name"] == worker]
        if not problems.check(len(mine) == 1, f"{worker}: expected one KEDA ScaledObject, found {len(mine)}"):
            continue
        triggers = mine[0]["spec"]["triggers"]
        problems.check(any(t["type"] == "rabbitmq" and t["metadata"].get("queueName") == queue for t in triggers),
                       f"ScaledObject/{mine[0]['metadata']['name']}: no rabbitmq trigger on {queue}")
    for name, so in scaled.items():
        spec = so["spec"]
        target = spec["scaleTargetRef"]
        problems.check(target.get("kind", "Deployment") == "Deployment" and target["name"] in deployments,
                       f"ScaledObject/{name}: target {target['name']} is not a rendered Deployment")
        problems.check(spec.get("minReplicaCount", 0) >= 1,
                       f"ScaledObject/{name}: minReplicaCount must be >= 1 (the workers also run sweepers)")
        problems.check(spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100), f"ScaledObject/{name}: min > max")
        problems.check(name not in hpa_targets, f"ScaledObject/{name}: its Deployment also has a plain HPA")
        for trigger in spec["triggers"]:
            if trigger["type"] != "rabbitmq":
                continue
            meta = trigger["metadata"]
            problems.check(meta.get("queueName") in queues, f"ScaledObject/{name}: queueName {meta.get('queueName')} is not in topology.rs")
            problems.check(meta.get("mode") in ("QueueLength", "MessageRate"), f"ScaledObject/{name}: mode must be QueueLength or MessageRate")
            problems.check(re.fullmatch(r"\d+(\.\d+)?", meta.get("value", "")) is not None, f"ScaledObject/{name}: value must be a number string")
            problems.check(meta.get("protocol", "auto") in ("amqp", "http", "auto"), f"ScaledObject/{name}: protocol {meta.get('protocol')}")
            problems.check("host" not in meta and "hostFromEnv" not in meta, f"ScaledObject/{name}: the AMQP URL must come from the TriggerAuthentication")
            ref = (trigger.get("authenticationRef") or {}).get("name")
            auth = auths.get(ref)
            if problems.check(auth is not None, f"ScaledObject/{name}: authenticationRef {ref} is not rendered"):
                hosts = [s for s in auth["spec"].get("secretTargetRef", []) if s["parameter"] == "host"]
                if problems.check(len(hosts) == 1, f"TriggerAuthentication/{ref}: needs one secretTargetRef for parameter host"):
                    problems.check(hosts[0]["name"] == SECRET_NAME and hosts[0]["key"] in secret_keys,
                                   f"TriggerAuthentication/{ref}: host must come from {SECRET_NAME}, a key of secret.example.yaml")
    for doc in deployments.values():
        autoscaled = doc["metadata"]["name"] in hpa_targets | {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()}
        if autoscaled:
            problems.check("replicas" not in doc["spec"], f"{ident(doc)}: autoscaled, so leave spec.replicas unset")

    # Every Deployment is covered by a PodDisruptionBudget.
    pdbs = by_kind.get("PodDisruptionBudget", {})
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        problems.check(any(matches(p["spec"]["selector"].get("matchLabels", {}), labels) for p in pdbs.values()),
                       f"Deployment/{name} has no PodDisruptionBudget")
    for name in ("gateway-api", "invocation-worker", "billing-worker"):
        problems.check(name in deployments, f"Deployment/{name} is missing")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered", type=Path)
    parser.add_argument("--k8s", action="append", required=True, help="Kubernetes version(s) to validate against")
    parser.add_argument("--production", action="store_true", help="images must name a registry and a tag")
    parser.add_argument("--schema-only", action="store_true", help="schemas only (a single manifest)")
    args = parser.parse_args()
    problems = Problems(str(args.rendered.name))
    docs = load_documents(args.rendered)
    if not docs:
        problems.add("no objects rendered")
    schema_checks(docs, args.k8s, problems)
    if not args.schema_only and not problems.items:
        reference_checks(docs, args.production, problems)
    kinds = sorted({d.get("kind", "?") for d in docs})
    problems.exit(f"{args.rendered.name}: {len(docs)} objects ({', '.join(kinds)}) valid for Kubernetes "
                  f"{', '.join(args.k8s)} and KEDA 2.16 schemas")


if __name__ == "__main__":
    main()
