#!/usr/bin/env bash
# Offline checks of the deployment files (`make check-deploy`, part of `make test`):
#   Dockerfile  hadolint; the image builds and ships every workspace binary; .dockerignore
#               keeps every file the build reads
#   k8s/        rendered with kustomize (kubectl's), validated against the Kubernetes schemas
#               (strict) and KEDA's CRD schemas, plus the cross-references and the security
#               settings the manifests must keep
#   compose     interpolated and validated against the Compose Specification schema, plus
#               references, mounts and scrape targets (and `docker compose config` if present)
#   rabbitmq    definitions.json equals the topology crates/messaging declares; imported into a
#               throw-away vhost of the local broker when one runs
#   grafana     provisioning and dashboard; every charted metric is recorded by the code
#   self-test   broken copies of a manifest, the compose file, the definitions, the dashboard
#               and the Dockerfile must each be refused, or the checks themselves are broken
# Tools (pinned in deploy/check/requirements.txt) live in .run/deploy-venv, installed on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.run/deploy-venv
OUT=.run/deploy-check
REQUIREMENTS=deploy/check/requirements.txt
K8S_VERSIONS=(--k8s 1.29.0 --k8s 1.37.0)

stamp=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$stamp" ]; then
    echo "installing the deployment check tools into $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS"
    echo "$stamp" > "$VENV/.requirements.sha256"
fi
PY="$VENV/bin/python"
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ beside the checks
CHECKS=deploy/check
rm -rf "$OUT" && mkdir -p "$OUT"

section() { echo "== $*"; }

section "Dockerfile: $("$VENV/bin/hadolint" --version)"
"$VENV/bin/hadolint" --no-color deploy/Dockerfile
echo "  ok: hadolint found nothing in deploy/Dockerfile"

section "Kubernetes: kustomize $("$VENV/bin/kubectl" version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p') (kubectl $("$VENV/bin/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p')), kubernetes-validate $("$VENV/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')"
rendered=()
for dir in k8s/base k8s/overlays/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    "$VENV/bin/kubectl" kustomize "$dir" > "$OUT/$name.yaml"
    rendered+=("$OUT/$name.yaml")
    if [ "$dir" = k8s/base ]; then
        "$PY" "$CHECKS/k8s_check.py" "$OUT/$name.yaml" "${K8S_VERSIONS[@]}"
    else
        "$PY" "$CHECKS/k8s_check.py" "$OUT/$name.yaml" "${K8S_VERSIONS[@]}" --production
    fi
done
"$PY" "$CHECKS/k8s_check.py" k8s/base/secret.example.yaml "${K8S_VERSIONS[@]}" --schema-only
"$PY" "$CHECKS/image_check.py" "${rendered[@]}"

section "docker compose"
"$PY" "$CHECKS/compose_check.py" deploy/docker-compose.yml
if docker compose version >/dev/null 2>&1; then
    APP__AUTH__JWT_SECRET=x APP__SECURITY__MASTER_KEY=x APP__ORDERS__PAYMENT_WEBHOOK_SECRET=x \
        docker compose -f deploy/docker-compose.yml config -q
    echo "  ok: docker compose config accepts it"
else
    echo "  note: no docker compose plugin here; validated against the Compose Specification schema only"
fi

section "RabbitMQ definitions"
"$PY" "$CHECKS/rabbitmq_check.py" deploy/rabbitmq --live

section "Prometheus and Grafana"
"$PY" "$CHECKS/observability_check.py" deploy

section "self-test: broken inputs must be refused"
refuse() {  # refuse DESCRIPTION EXPECTED-MESSAGE COMMAND...: the command must fail, saying so
    local what=$1 expected=$2; shift 2
    if "$@" >"$OUT/self-test.log" 2>&1; then
        echo "  FAIL the checks accepted $what" >&2
        cat "$OUT/self-test.log" >&2
        exit 1
    fi
    if ! grep -q -- "$expected" "$OUT/self-test.log"; then
        echo "  FAIL $what was refused, but not for the expected reason ($expected)" >&2
        cat "$OUT/self-test.log" >&2
        exit 1
    fi
    echo "  ok: refused $what"
}
base="$OUT/base.yaml"
sed 's/readinessProbe:/readinessProbes:/' "$base" > "$OUT/broken-field.yaml"
refuse "a Deployment with an unknown field" "'readinessProbes' was unexpected" \
    "$PY" "$CHECKS/k8s_check.py" "$OUT/broken-field.yaml" "${K8S_VERSIONS[@]}"
sed 's/averageUtilization: 70/averageUtilization: high/' "$base" > "$OUT/broken-type.yaml"
refuse "an HPA with a wrongly typed field" "is not of type 'integer'" \
    "$PY" "$CHECKS/k8s_check.py" "$OUT/broken-type.yaml" "${K8S_VERSIONS[@]}"
sed 's/pathType: Prefix/pathType: Prefixed/' "$base" > "$OUT/broken-enum.yaml"
refuse "an Ingress with an unknown pathType" "'Prefixed' is not one of" \
    "$PY" "$CHECKS/k8s_check.py" "$OUT/broken-enum.yaml" "${K8S_VERSIONS[@]}"
sed 's/minReplicaCount:/minReplicas:/' "$base" > "$OUT/broken-keda.yaml"
refuse "a KEDA ScaledObject with an unknown field" "KEDA CRD schema" \
    "$PY" "$CHECKS/k8s_check.py" "$OUT/broken-keda.yaml" "${K8S_VERSIONS[@]}"
sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: false/' "$base" > "$OUT/broken-policy.yaml"
refuse "a writable root filesystem" "readOnlyRootFilesystem must be true" \
    "$PY" "$CHECKS/k8s_check.py" "$OUT/broken-policy.yaml" "${K8S_VERSIONS[@]}"
sed 's/^    depends_on:/    depend_on:/' deploy/docker-compose.yml > deploy/.self-test-compose.yml
trap 'rm -f deploy/.self-test-compose.yml' EXIT
refuse "a compose file with an unknown key" "'depend_on' was unexpected" \
    "$PY" "$CHECKS/compose_check.py" deploy/.self-test-compose.yml
mkdir -p "$OUT/rabbitmq"
sed 's/"x-delivery-limit": 10/"x-delivery-limit": 5/' deploy/rabbitmq/definitions.json > "$OUT/rabbitmq/definitions.json"
cp deploy/rabbitmq/rabbitmq.conf "$OUT/rabbitmq/"
refuse "definitions that differ from topology.rs" "x-delivery-limit" \
    "$PY" "$CHECKS/rabbitmq_check.py" "$OUT/rabbitmq"
mkdir -p "$OUT/observability/grafana"
cp deploy/docker-compose.yml "$OUT/observability/"
cp -r deploy/grafana/provisioning deploy/grafana/dashboards "$OUT/observability/grafana/"
sed -i 's/billing_outbox_size/billing_outbox_length/' "$OUT/observability/grafana/dashboards/ai-gateway.json"
refuse "a dashboard charting a metric no code records" "billing_outbox_length, which no code records" \
    "$PY" "$CHECKS/observability_check.py" "$OUT/observability"
printf 'FROM debian:latest\nRUN cd /tmp && apt-get install curl\n' > "$OUT/Dockerfile.broken"
refuse "a Dockerfile hadolint warns about" "DL3007" "$VENV/bin/hadolint" --no-color "$OUT/Dockerfile.broken"

echo "deployment checks: all passed"
