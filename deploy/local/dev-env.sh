#!/usr/bin/env bash
# Writes .run/dev.env once with random local secrets (kept, so stored provider keys stay readable).
set -euo pipefail
mkdir -p .run
if [ ! -f .run/dev.env ]; then
    umask 077
    {
        echo "APP__AUTH__JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')"
        echo "APP__SECURITY__MASTER_KEY=$(head -c 32 /dev/urandom | base64)"
        echo "APP__ORDERS__PAYMENT_WEBHOOK_SECRET=$(head -c 24 /dev/urandom | base64 | tr -d '\n/+=')"
    } > .run/dev.env
    echo "wrote local secrets to .run/dev.env"
fi
