#!/usr/bin/env bash
# Keeps .run/dev.env with random local secrets: each is generated once and then kept (stored
# provider keys stay readable); a secret added by a newer version is appended.
set -euo pipefail
mkdir -p .run
umask 077
touch .run/dev.env
random() { head -c "$1" /dev/urandom | base64 | tr -d '\n/+='; }
ensure() {
    grep -q "^$1=" .run/dev.env || { echo "$1=$2" >> .run/dev.env; echo "generated $1 in .run/dev.env"; }
}
ensure APP__AUTH__JWT_SECRET "$(random 48)"
ensure APP__SECURITY__MASTER_KEY "$(head -c 32 /dev/urandom | base64)"
ensure APP__ORDERS__PAYMENT_WEBHOOK_SECRET "$(random 24)"
