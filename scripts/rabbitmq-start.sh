#!/usr/bin/env bash
# Start RabbitMQ (Debian's rabbitmq-server) without systemd, listening on loopback only, and wait
# until it accepts connections. Idempotent: a running broker is left alone.
set -euo pipefail
say() { printf 'rabbitmq-start: %s\n' "$*"; }
command -v rabbitmq-server >/dev/null || { say "rabbitmq-server is not installed (scripts/setup-host.sh)"; exit 1; }
# Loopback only: the broker is the pipeline's, not the network's.
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
if timeout 20 rabbitmqctl -q status >/dev/null 2>&1; then
    say "already running"
    exit 0
fi
mkdir -p /var/log/rabbitmq /var/lib/rabbitmq
chown -R rabbitmq:rabbitmq /var/log/rabbitmq /var/lib/rabbitmq 2>/dev/null || true
# The Debian wrapper switches to the rabbitmq user itself.
rabbitmq-server -detached >/var/log/rabbitmq/minion-start.log 2>&1 || true
# await_startup fails at once while the node is not yet reachable: poll until it answers.
for _ in $(seq 90); do
    if timeout 20 rabbitmqctl -q await_startup >/dev/null 2>&1; then
        say "running on 127.0.0.1:5672"
        exit 0
    fi
    sleep 1
done
say "RabbitMQ did not start within 90 s; see /var/log/rabbitmq/"
tail -n 30 /var/log/rabbitmq/*.log >&2 || true
exit 1
