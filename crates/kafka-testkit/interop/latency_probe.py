#!/usr/bin/env python3
"""librdkafka's worst produce->receive time per partition, for the fake-cluster scenarios.

A librdkafka consumer (confluent-kafka) joins a group on --bootstrap (the fake cluster) and
reads --topic from the earliest offset; a librdkafka producer (acks=all, no linger) writes
one probe message to every partition each --interval seconds through --produce-bootstrap
(tansu directly, so the producer never meets the cluster's faults). Each probe's value is
JSON {"p": partition, "seq": n, "t": send time (time.time())}; its latency is the time it is
received minus "t" (one host, one clock).

The driver (kafka_testkit::latency) talks to it over stdin/stdout, one JSON object a line:

  {"event": "assigned", "partitions": [..], "after_s": s}   the group assigned partitions
  {"event": "ready"}     every partition delivered a probe sent after the assignment:
                         the measured window starts here
  (stdin "stop" or end of input: stop producing, wait up to --drain-timeout seconds for
   every probe sent in the window, then report)
  {"event": "result", "partitions": {"0": {"worst_ms": .., "worst_at_s": .., "produced": n,
   "received": n, "missing": n}, ..}, "window_s": s}

worst_at_s is when (seconds into the window) the worst probe was sent. A probe never
received counts in "missing", and its latency as at least the drain deadline.
Diagnostics go to stderr.
"""

import argparse
import json
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

# tansu completes a join in about half the session timeout (see kafka_tool.py).
SESSION_TIMEOUT_MS = 6000


def log(msg):
    print(f"latency_probe: {msg}", file=sys.stderr, flush=True)


def emit(obj):
    print(json.dumps(obj), flush=True)


def extra_config(items):
    conf = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"latency_probe: -X expects key=value, got {item!r}")
        conf[key] = value
    return conf


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="the consumer's bootstrap list")
    parser.add_argument("--produce-bootstrap", required=True, help="the producer's broker")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between probes")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("-X", action="append", default=[], metavar="KEY=VALUE",
                        help="extra librdkafka configuration for the consumer")
    args = parser.parse_args()

    stop = threading.Event()

    def read_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=read_stdin, daemon=True).start()

    def on_error(err):
        log(f"consumer error: {err}")

    consumer_conf = {
        "bootstrap.servers": args.bootstrap,
        "client.id": "latency_probe",
        "group.id": args.group,
        "enable.auto.commit": True,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "error_cb": on_error,
    }
    consumer_conf.update(extra_config(args.X))
    consumer = Consumer(consumer_conf)
    producer = Producer({
        "bootstrap.servers": args.produce_bootstrap,
        "client.id": "latency_probe_producer",
        "acks": "all",
        "linger.ms": 0,
    })

    started = time.monotonic()
    assigned = threading.Event()

    def on_assign(_consumer, partitions):
        parts = sorted(p.partition for p in partitions)
        emit({"event": "assigned", "partitions": parts,
              "after_s": round(time.monotonic() - started, 3)})
        log(f"assigned {parts}")
        if len(parts) == args.partitions:
            assigned.set()

    consumer.subscribe([args.topic], on_assign=on_assign)

    seq = 0
    window_start = None  # time.time() when "ready" was printed
    assigned_at = None  # time.time() of the assignment: probes after it count for "ready"
    ready_seen = set()
    sent = {p: {} for p in range(args.partitions)}  # seq -> send time, in the window
    received = {p: {} for p in range(args.partitions)}  # seq -> latency, in the window
    next_send = time.monotonic()
    draining_until = None

    def complete():
        return all(set(sent[p]) <= set(received[p]) for p in sent)

    try:
        while True:
            now = time.monotonic()
            if stop.is_set() and draining_until is None:
                if window_start is None:
                    sys.exit("latency_probe: stopped before the measured window started")
                draining_until = now + args.drain_timeout
                log(f"stop: draining {sum(len(s) for s in sent.values())} probes")
            if draining_until is not None and (complete() or now >= draining_until):
                break
            if window_start is None and now - started > args.ready_timeout:
                sys.exit(f"latency_probe: not ready within {args.ready_timeout}s "
                         f"(assigned: {assigned.is_set()}, ready: {sorted(ready_seen)})")
            if draining_until is None and now >= next_send:
                next_send += args.interval
                if next_send < now:
                    next_send = now + args.interval
                if assigned.is_set() and assigned_at is None:
                    assigned_at = time.time()
                for p in range(args.partitions):
                    t = time.time()
                    value = json.dumps({"p": p, "seq": seq, "t": t})
                    producer.produce(args.topic, value=value.encode(), partition=p)
                    if window_start is not None:
                        sent[p][seq] = t
                seq += 1
            producer.poll(0)
            msg = consumer.poll(0.005)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                log(f"message error: {msg.error()}")
                continue
            arrived = time.time()
            try:
                probe = json.loads(msg.value())
            except ValueError:
                continue
            p, n, t = probe["p"], probe["seq"], probe["t"]
            if window_start is None:
                if assigned_at is not None and t >= assigned_at:
                    ready_seen.add(p)
                    if len(ready_seen) == args.partitions:
                        window_start = time.time()
                        emit({"event": "ready"})
                        log("ready: the measured window starts")
                continue
            if n in sent.get(p, {}) and n not in received[p]:
                received[p][n] = arrived - t
    except KafkaException as e:
        sys.exit(f"latency_probe: {e}")
    finally:
        producer.flush(5)
        consumer.close()

    end = time.time()
    result = {}
    for p in range(args.partitions):
        worst, worst_at = 0.0, 0.0
        for n, t in sent[p].items():
            latency = received[p].get(n, end - t)
            if latency > worst:
                worst, worst_at = latency, t - window_start
        result[str(p)] = {
            "worst_ms": round(worst * 1000, 1),
            "worst_at_s": round(worst_at, 2),
            "produced": len(sent[p]),
            "received": len(received[p]),
            "missing": len(set(sent[p]) - set(received[p])),
        }
    emit({"event": "result", "partitions": result, "window_s": round(end - window_start, 2)})


if __name__ == "__main__":
    main()
