#!/usr/bin/env bash
# Runs the worker against a local broker: starts tansu if nothing answers on
# 127.0.0.1:${KAFKA_PORT:-9092} (see scripts/kafka-up.sh, which also creates $KAFKA_TOPIC
# and $KAFKA_DLQ_TOPIC), builds the release binary and replaces this shell with it.
# The environment passes through, so the worker's own defaults apply (./poc.db,
# localhost:9092) unless the environment or a .env file says otherwise. Arguments are
# passed to the worker.
#
# The broker keeps running after the worker exits; stop it with scripts/kafka-up.sh --stop.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/kafka-up.sh
cargo build --release
# A broker moved with KAFKA_PORT is where the worker should go too, unless told otherwise.
if [[ -n "${KAFKA_PORT:-}" && -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
fi
exec target/release/provision-worker "$@"
