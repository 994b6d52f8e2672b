#!/usr/bin/env bash
# `make run`: builds, prepares the database, starts the three services, stops them on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROFILE=${PROFILE:-dev}
TARGET_DIR=$([ "$PROFILE" = "release" ] && echo release || echo debug)
DB_NAME=${DB_NAME:-ai_gateway}
PORT=${PORT:-8080}
HOST=${HOST:-127.0.0.1}
export ADMIN_EMAIL=${ADMIN_EMAIL:-admin@example.com}
export ADMIN_PASSWORD=${ADMIN_PASSWORD:-admin-password}

deploy/local/ensure-services.sh
deploy/local/dev-env.sh
cargo build --profile "$PROFILE" --bins

if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
    createdb -h 127.0.0.1 -U postgres "$DB_NAME"
    echo "created database $DB_NAME"
fi

set -a
# shellcheck disable=SC1091
. .run/dev.env
APP__DATABASE__URL=${APP__DATABASE__URL:-postgres://postgres@127.0.0.1:5432/$DB_NAME}
APP__SERVER__HOST=$HOST
APP__SERVER__PORT=$PORT
set +a

bin=target/$TARGET_DIR
"$bin/gateway-api" migrate

pids=()
stop() {
    trap - INT TERM EXIT
    echo; echo "stopping..."
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait
}
trap stop INT TERM EXIT

"$bin/mock-llm" --host 127.0.0.1 --port "${MOCK_PORT:-9200}" & pids+=($!)
"$bin/gateway-api" & pids+=($!)
"$bin/invocation-worker" & pids+=($!)
"$bin/billing-worker" & pids+=($!)

for _ in $(seq 1 100); do
    curl -fsS "http://$HOST:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
API="http://$HOST:$PORT" MOCK_URL="http://127.0.0.1:${MOCK_PORT:-9200}/v1" deploy/local/seed-demo.py || true
cat <<INFO

  AI gateway is running (Ctrl-C stops all three services)
    Console:  http://$HOST:$PORT/  (sign in as the admin below, or sign up)
    API:      http://$HOST:$PORT
    Docs:     http://$HOST:$PORT/docs/
    OpenAPI:  http://$HOST:$PORT/openapi.json
    Admin:    $ADMIN_EMAIL / $ADMIN_PASSWORD  (only created when no admin exists yet)
    Mock LLM: http://127.0.0.1:${MOCK_PORT:-9200}/v1 (providers mock-llm: demo-chat, demo-image; mock-anthropic: demo-claude)
    Workers:  invocation-worker http://127.0.0.1:9101/healthz, billing-worker http://127.0.0.1:9102/healthz

INFO
wait -n "${pids[@]}" || true
