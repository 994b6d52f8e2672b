#!/usr/bin/env bash
# `make bench`: a self-contained benchmark of the gateway on this machine, written to
# docs/BENCHMARKS.md. It builds release binaries, uses its own database, RabbitMQ queue prefix
# and ports on 127.0.0.1, starts its own mock provider, nginx, gateway-api and billing-worker,
# and stops exactly the processes it started (by PID), also when it fails or is interrupted.
#
# Knobs (environment): BENCH_DURATION (s per load run, 10), BENCH_REPEATS (3), BENCH_RATES
# ("500 1000 2000"), BENCH_SETTLE_N (20000 batched), BENCH_SETTLE_N_SINGLE (5000), BENCH_STREAMS (1000), BENCH_USERS (64),
# BENCH_PHASES ("throughput latency memory settlement pgbench"), BENCH_KEEP=1 keeps the temp dir,
# BENCH_OUT (docs/BENCHMARKS.md), BENCH_LATENCY_TOOL (openloop: tests/bench/bench.py's fixed-rate
# generator rotating the keys; hey: hey -q, one key per run), BENCH_QUIET_WAIT (s, 120).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/tests/bench

DURATION=${BENCH_DURATION:-10}
REPEATS=${BENCH_REPEATS:-3}
RATES=${BENCH_RATES:-500 1000 2000}
SETTLE_N=${BENCH_SETTLE_N:-20000}
SETTLE_N_SINGLE=${BENCH_SETTLE_N_SINGLE:-5000}
SETTLE_REPEATS=${BENCH_SETTLE_REPEATS:-3}
STREAMS=${BENCH_STREAMS:-1000}
USERS=${BENCH_USERS:-64}
PHASES=${BENCH_PHASES:-throughput latency memory settlement pgbench}
LATENCY_TOOL=${BENCH_LATENCY_TOOL:-openloop}
OUT=${BENCH_OUT:-$ROOT/docs/BENCHMARKS.md}
WARMUP=3
WRK_THREADS=2
WRK_CONNECTIONS=64
PREFETCH=256
PGBENCH_SECONDS=10

GATEWAY_PORT=18180
NGINX_PORT=18181
MOCK_PORT=19290
STREAM_MOCK_PORT=19291
WORKER_OPS_PORT=19102
DB=ai_gateway_bench
PGBENCH_DB=ai_gateway_bench_pgbench
# CPU accounting counts the PostgreSQL backends of this database (and the server's own processes),
# not those of other databases on the shared instance (bench.py serves_bench_database).
export BENCH_PG_DB=$DB
PREFIX=bench_
QUEUE=${PREFIX}billing_log_queue
export RUST_LOG=warn

STARTED=$(date +%s)
WORK=$(mktemp -d /tmp/ai-gateway-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
NOTES=$WORK/notes.txt
: >"$RESULTS"
: >"$NOTES"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
PY="python3 $HERE/bench.py"
declare -A PIDS=()

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
note() { echo "$*" >>"$NOTES"; log "note: $*"; }
die() { log "FAILED: $*"; exit 1; }

# ---------------------------------------------------------------- our processes, by PID

start() { # start NAME CMD...: runs CMD in the background, output to $WORK/NAME.log
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS[$name]=$!
}

stop() { # stop NAME: SIGTERM to the PID we started, SIGKILL after 10 s
    local name=$1 pid=${PIDS[$1]:-}
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$name]"
}

run() { # run NAME CMD...: a foreground step that the traps can still stop (it is ours by PID)
    local name=$1 rc=0
    shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS[$name]=$!
    wait "${PIDS[$name]}" || rc=$?
    unset "PIDS[$name]"
    return $rc
}

delete_bench_queues() {
    local q
    for q in "$QUEUE" "$QUEUE.retry" "$QUEUE.dlq" \
        "${PREFIX}model_invocation_queue" "${PREFIX}model_invocation_queue.retry" "${PREFIX}model_invocation_queue.dlq"; do
        rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local name
    for name in "${!PIDS[@]}"; do stop "$name"; done
    delete_bench_queues
    dropdb -h 127.0.0.1 -U postgres --if-exists "$PGBENCH_DB" 2>/dev/null || true
    if [ "$rc" -ne 0 ]; then
        log "logs of this run: $WORK"
    elif [ -z "${BENCH_KEEP:-}" ]; then
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_http() { # wait_http URL NAME
    for _ in $(seq 1 150); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        kill -0 "${PIDS[$2]}" 2>/dev/null || die "$2 exited; see $WORK/$2.log: $(tail -5 "$WORK/$2.log")"
        sleep 0.2
    done
    die "$2 did not answer on $1"
}
psql_q() { psql -h 127.0.0.1 -U postgres -XAtq "$@"; }
now() { date +%s.%N; }
drain() { # wait until billing-worker has settled every call made so far: no charge left in the
    # billing queue (ready or unacked: a message is acked after its settlement committed) and no
    # open hold (calls admitted against a credit lease have none, so holds alone are not enough)
    local open queued t0=$SECONDS
    for _ in $(seq 1 240); do
        open=$(psql_q -d "$DB" -c "SELECT count(*) FROM balance_holds WHERE status = 'open'")
        queued=$(rabbitmqctl -q list_queues name messages 2>/dev/null | awk -v q="$QUEUE" '$1 == q { print $2 }')
        if [ "$open" = "0" ] && [ "${queued:-0}" = "0" ]; then
            [ $((SECONDS - t0)) -lt 2 ] || log "settled the backlog in $((SECONDS - t0))s"
            return 0
        fi
        sleep 0.5
    done
    note "billing-worker still had $open open holds and ${queued:-?} queued charges after 120 s; measuring anyway"
}

# ------------------------------------------------------------------------------ setup

need_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v hey >/dev/null || missing+=(hey)
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v pgbench >/dev/null || missing+=(postgresql-contrib)
    command -v curl >/dev/null || missing+=(curl)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

need_tools
deploy/local/ensure-services.sh
start cpu-watch $PY cpu-watch --out "$WORK/cpu.log"
FLUSH=$($PY flush)
for port in $GATEWAY_PORT $NGINX_PORT $MOCK_PORT $STREAM_MOCK_PORT $WORKER_OPS_PORT; do
    port_free "$port" || die "port $port on 127.0.0.1 is in use; the benchmark needs it free"
done
log "building release binaries"
cargo build --release --bins 2>"$WORK/build.log" || die "cargo build --release --bins failed: $(grep -m 5 -A 5 '^error' "$WORK/build.log")"

log "database $DB (dropped and recreated), queue prefix $PREFIX"
dropdb -h 127.0.0.1 -U postgres --if-exists --force "$DB"
createdb -h 127.0.0.1 -U postgres "$DB"
delete_bench_queues
# Dirty pages that earlier work on this shared instance left (a test suite, say) would be
# written by the checkpointer during the measurements and counted as PostgreSQL's CPU per call.
psql -h 127.0.0.1 -U postgres -qc CHECKPOINT

export APP__DATABASE__URL=postgres://postgres@127.0.0.1:5432/$DB
export APP__BROKER__QUEUE_PREFIX=$PREFIX
export APP__AUTH__JWT_SECRET
APP__AUTH__JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
export APP__SECURITY__MASTER_KEY
APP__SECURITY__MASTER_KEY=$(head -c 32 /dev/urandom | base64)
export APP__AUTH__BCRYPT_COST=4
export ADMIN_EMAIL=bench-admin@example.com ADMIN_PASSWORD=bench-admin-password

start_worker() { # start_worker [BATCH_MAX]: the shipped defaults unless a batch size is given
    if [ -n "${1:-}" ]; then export APP__BILLING__BATCH_MAX=$1; else unset APP__BILLING__BATCH_MAX; fi
    APP__OPS__PORT=$WORKER_OPS_PORT APP__BROKER__PREFETCH=$PREFETCH \
        APP__SHUTDOWN_GRACE_SECONDS=5 start worker "$BIN/billing-worker"
    unset APP__BILLING__BATCH_MAX
    wait_http "http://127.0.0.1:$WORKER_OPS_PORT/readyz" worker
}

start mock "$BIN/mock-llm" --host 127.0.0.1 --port $MOCK_PORT --latency-ms 0
wait_http "http://127.0.0.1:$MOCK_PORT/healthz" mock
APP__SERVER__HOST=127.0.0.1 APP__SERVER__PORT=$GATEWAY_PORT APP__SERVER__SHUTDOWN_GRACE_SECONDS=5 \
    start gateway "$BIN/gateway-api"
wait_http "http://127.0.0.1:$GATEWAY_PORT/readyz" gateway
start_worker

mkdir -p "$WORK/nginx/tmp"
sed -e "s/@MOCK_PORT@/$MOCK_PORT/" -e "s/@NGINX_PORT@/$NGINX_PORT/" "$HERE/nginx.conf.in" >"$WORK/nginx/nginx.conf"
start nginx nginx -p "$WORK/nginx" -c nginx.conf -g 'daemon off;'
wait_http "http://127.0.0.1:$NGINX_PORT/healthz" nginx

log "seeding $USERS bench users"
run seed $PY seed --api "http://127.0.0.1:$GATEWAY_PORT" --mock-url "http://127.0.0.1:$MOCK_PORT/v1" \
    --stream-mock-url "http://127.0.0.1:$STREAM_MOCK_PORT/v1" --users "$USERS" \
    --keys-out "$WORK/keys.txt" --users-out "$WORK/users.json" || die "seeding: $(cat "$WORK/seed.err")"
export BENCH_KEYS_FILE=$WORK/keys.txt
quiet=$($PY quiet --max-wait "${BENCH_QUIET_WAIT:-120}" --threshold 15)
log "$quiet"
case $quiet in still*) note "at the start, $quiet" ;; esac

phase() { [[ " $PHASES " == *" $1 "* ]]; }
url_of() {
    case $1 in
        direct) echo "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" ;;
        nginx) echo "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" ;;
        gateway*) echo "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" ;;
    esac
}
port_of() {
    case $1 in
        direct) echo $MOCK_PORT ;;
        nginx) echo $NGINX_PORT ;;
        gateway) echo $GATEWAY_PORT ;;
    esac
}
BODY='{"model":"demo-chat","messages":[{"role":"user","content":"hello"}],"max_tokens":16}'

run rss-idle $PY rss --pid "${PIDS[gateway]}" --state idle && cat "$WORK/rss-idle.out" >>"$RESULTS"

# ------------------------------------------------------------------------ 1. throughput

wrk_run() { # wrk_run TARGET REPEAT KEYS_FILE
    local t0 t1
    drain
    $PY cpu-snap --out "$WORK/cpu-before.json"
    t0=$(now)
    BENCH_KEYS_FILE=$3 run wrk wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d${DURATION}s -s "$HERE/chat.lua" "$(url_of "$1")" ||
        die "wrk against $1: $(cat "$WORK/wrk.err")"
    t1=$(now)
    # The CPU a gateway run costs includes settling its calls, which lags behind at saturation.
    case $1 in gateway-noworker) ;; gateway*) drain ;; esac
    $PY wrk-json --target "$1" --repeat "$2" --window "$t0" "$t1" --cpu-before "$WORK/cpu-before.json" \
        <"$WORK/wrk.out" | tee -a "$RESULTS" >&2
}

if phase throughput; then
    for target in direct nginx gateway; do
        log "warm-up $target (${WARMUP}s)"
        run warmup wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d${WARMUP}s -s "$HERE/chat.lua" "$(url_of $target)" ||
            die "wrk warm-up against $target: $(cat "$WORK/warmup.err")"
    done
    for r in $(seq 1 "$REPEATS"); do
        for target in direct nginx gateway; do
            wrk_run $target "$r" "$WORK/keys.txt"
        done
    done
    # Four diagnostics, one run each: every request with the same access key (one busy
    # customer), a model behind an Anthropic provider, clients accepting gzip, and the gateway
    # with billing-worker stopped (what settling costs the call path).
    head -n 1 "$WORK/keys.txt" >"$WORK/one-key.txt"
    wrk_run gateway-1key 1 "$WORK/one-key.txt"
    # The same calls to a model behind an Anthropic provider: what translating costs.
    BENCH_MODEL=bench-claude wrk_run gateway-anthropic 1 "$WORK/keys.txt"
    # Clients that accept gzip, as the OpenAI and Anthropic SDKs do (wrk sends no
    # Accept-Encoding): model-call answers must cost the same.
    BENCH_ACCEPT_ENCODING="gzip, deflate" wrk_run gateway-gzip 1 "$WORK/keys.txt"
    drain
    stop worker
    wrk_run gateway-noworker 1 "$WORK/keys.txt"
    start_worker
fi

# --------------------------------------------------------------------------- 2. latency

if phase latency; then
    for r in $(seq 1 "$REPEATS"); do
        held=
        for rate in $RATES; do
            for target in direct nginx gateway; do
                if [ $target = gateway ] && [ -n "$held" ]; then
                    # It could not hold a lower rate in this repeat: this one would only repeat the
                    # saturation measurement (and take long to settle).
                    echo "{\"kind\": \"latency\", \"target\": \"gateway\", \"rate\": $rate, \"repeat\": $r, \"skipped_after\": $held}" |
                        tee -a "$RESULTS" >&2
                    continue
                fi
                drain
                t0=$(now)
                if [ "$LATENCY_TOOL" = hey ]; then
                    # hey sends one fixed Authorization header: each run uses another bench key.
                    key=$(sed -n "$(((r * 7 + rate) % 64 + 1))p" "$WORK/keys.txt")
                    [ -n "$key" ] || key=$(head -n 1 "$WORK/keys.txt")
                    workers=$(((rate + 49) / 50)) # 50 req/s per worker: one request every 20 ms
                    run hey hey -z ${DURATION}s -c $workers -q $((rate / workers)) -m POST -T application/json \
                        -disable-compression -H "Authorization: Bearer $key" -d "$BODY" -o csv "$(url_of $target)" ||
                        die "hey against $target: $(tail -5 "$WORK/hey.err")"
                    $PY hey-json --target $target --rate "$rate" --seconds "$DURATION" --repeat "$r" \
                        --window "$t0" "$(now)" <"$WORK/hey.out" >"$WORK/latency.json"
                else
                    $PY cpu-snap --out "$WORK/cpu-before.json"
                    run openloop $PY openloop --port "$(port_of $target)" --keys "$WORK/keys.txt" --rate "$rate" \
                        --seconds "$DURATION" --target $target --repeat "$r" ||
                        die "open-loop load against $target: $(tail -5 "$WORK/openloop.err")"
                    if [ $target = gateway ]; then
                        # The CPU per call at this rate, settling included (the outbox path below
                        # calls.outbox_first_below, the broker path above it).
                        drain
                        $PY add-cpu --cpu-before "$WORK/cpu-before.json" <"$WORK/openloop.out" >"$WORK/latency.json"
                    else
                        cp "$WORK/openloop.out" "$WORK/latency.json"
                    fi
                fi
                tee -a "$RESULTS" <"$WORK/latency.json" >&2
                if [ $target = gateway ] && ! python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(r["achieved_rps"] < 0.95 * r["rate"])' "$WORK/latency.json"; then
                    held=$rate
                fi
            done
        done
    done
fi

# ---------------------------------------------------------------------------- 3. memory

if phase memory; then
    drain
    run rss-after $PY rss --pid "${PIDS[gateway]}" --state after-load && cat "$WORK/rss-after.out" >>"$RESULTS"
    start stream-mock "$BIN/mock-llm" --host 127.0.0.1 --port $STREAM_MOCK_PORT --latency-ms 0 \
        --stream-chunk-delay-ms 1000 --completion-tokens 60
    wait_http "http://127.0.0.1:$STREAM_MOCK_PORT/healthz" stream-mock
    log "holding $STREAMS streaming calls open"
    run streams $PY streams --port $GATEWAY_PORT --n "$STREAMS" --keys "$WORK/keys.txt" \
        --pid "${PIDS[gateway]}" || die "streams: $(tail -5 "$WORK/streams.err")"
    tee -a "$RESULTS" <"$WORK/streams.out" >&2
    stop stream-mock
fi

# ------------------------------------------------------------------------ 4. settlement

if phase settlement; then
    drain # what the earlier phases published, then stop the worker
    stop worker
    model_id=$(psql_q -d "$DB" -c "SELECT id FROM llm_models WHERE name = 'demo-chat'")
    for r in $(seq 1 "$SETTLE_REPEATS"); do
        for mode in batched single; do
            batch= n=$SETTLE_N
            [ $mode = single ] && batch=1 n=$SETTLE_N_SINGLE
            psql_q -d "$DB" -c "TRUNCATE usage_logs" >/dev/null
            run publish $PY publish --n "$n" --users "$WORK/users.json" --model-id "$model_id" \
                --queue "$QUEUE" || die "publishing: $(tail -5 "$WORK/publish.err")"
            log "$(cat "$WORK/publish.err")"
            start_worker $batch
            run settle $PY settle-wait --db "$DB" --n "$n" --mode $mode --repeat "$r" ||
                die "settle-wait: $(tail -5 "$WORK/settle.err")"
            tee -a "$RESULTS" <"$WORK/settle.out" >&2
            stop worker
        done
    done
    dead=$(rabbitmqctl -q list_queues name messages 2>/dev/null | awk -v q="$QUEUE.dlq" '$1 == q { print $2 }')
    [ "${dead:-0}" = "0" ] || note "$dead billing messages were dead-lettered during the settlement runs"
fi

# --------------------------------------------------------------------------- 5. pgbench

if phase pgbench; then
    log "pgbench"
    dropdb -h 127.0.0.1 -U postgres --if-exists "$PGBENCH_DB"
    createdb -h 127.0.0.1 -U postgres "$PGBENCH_DB"
    run pgbench-init pgbench -h 127.0.0.1 -U postgres -i -q -s 10 "$PGBENCH_DB" ||
        die "pgbench -i: $(tail -5 "$WORK/pgbench-init.err")"
    echo '\set aid random(1, 100000 * :scale)' >"$WORK/update.sql"
    echo 'UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;' >>"$WORK/update.sql"
    for r in $(seq 1 "$REPEATS"); do
        t0=$(now)
        run pgbench pgbench -h 127.0.0.1 -U postgres -n -f "$WORK/update.sql" -c 8 -j 2 -T $PGBENCH_SECONDS \
            "$PGBENCH_DB" || die "pgbench: $(tail -5 "$WORK/pgbench.err")"
        $PY pgbench-json --repeat "$r" --window "$t0" "$(now)" <"$WORK/pgbench.out" | tee -a "$RESULTS" >&2
    done
    dropdb -h 127.0.0.1 -U postgres --if-exists "$PGBENCH_DB"
fi

# ---------------------------------------------------------------------------- report

for name in gateway worker mock nginx; do
    if [ -n "${PIDS[$name]:-}" ] && ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
        note "$name exited during the run (see its log)"
    fi
done
errors=$(grep -ciE '"level":"ERROR"| ERROR ' "$WORK/gateway.log" || true)
[ "$errors" = "0" ] || note "gateway-api logged $errors error lines during the run"
# What gateway-api warned of or logged as errors (a failed provider call is a warning), grouped
# with timestamps, ids and numbers blanked, most frequent first: a non-200 answer's cause.
{ grep -iE '"level":"(WARN|ERROR)"| (WARN|ERROR) ' "$WORK/gateway.log" || true; } | sed -E -e 's/\x1b\[[0-9;]*m//g' -e 's/^[0-9T:.Z-]+ +//' \
    -e 's/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/<id>/g' -e 's/[0-9]+/N/g' -e 's/`//g' |
    cut -c1-300 | sort | uniq -c | sort -rn | head -4 |
    while read -r count line; do note "gateway-api log, $count x: \`$line\`"; done

elapsed=$(($(date +%s) - STARTED))
BENCH_FLUSH=$FLUSH BENCH_RUNTIME="$((elapsed / 60)) min $((elapsed % 60)) s" BENCH_SETTLE_N_SINGLE=$SETTLE_N_SINGLE \
    BENCH_DURATION=$DURATION BENCH_REPEATS=$REPEATS BENCH_USERS=$USERS BENCH_SETTLE_N=$SETTLE_N \
    BENCH_STREAMS=$STREAMS BENCH_WARMUP=$WARMUP BENCH_WRK_THREADS=$WRK_THREADS \
    BENCH_WRK_CONNECTIONS=$WRK_CONNECTIONS BENCH_PREFETCH=$PREFETCH BENCH_PGBENCH_SECONDS=$PGBENCH_SECONDS \
    BENCH_DB=$DB BENCH_PREFIX=$PREFIX BENCH_NOTES=$NOTES BENCH_LATENCY_TOOL=$LATENCY_TOOL \
    BENCH_PORTS="gateway $GATEWAY_PORT, nginx $NGINX_PORT, mock $MOCK_PORT and $STREAM_MOCK_PORT, worker ops $WORKER_OPS_PORT" \
    $PY meta >"$WORK/meta.json"
$PY report --results "$RESULTS" --meta "$WORK/meta.json" --cpu-log "$WORK/cpu.log" --out "$OUT" >/dev/null
log "wrote $OUT"
