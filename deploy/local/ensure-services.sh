#!/usr/bin/env bash
# Starts the local PostgreSQL and RabbitMQ when they are down, and waits until both answer.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.5; done
fi
pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not come up" >&2; exit 1; }

if ! port_open 5672; then
    echo "starting RabbitMQ"
    rabbitmq-server -detached
    rabbitmqctl await_startup --timeout 120 >/dev/null
    for _ in $(seq 1 60); do port_open 5672 && break; sleep 0.5; done
fi
port_open 5672 || { echo "RabbitMQ did not come up" >&2; exit 1; }
