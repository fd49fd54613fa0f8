#!/usr/bin/env python3
"""An independent Kafka client for the integration tests: librdkafka, via confluent-kafka.

The Rust tests use it to check our worker against a second implementation of the
protocol: messages it produces must be consumed by the worker, and offsets the worker
commits must be seen by a librdkafka consumer group (and the other way round).

Bytes travel as base64 in JSON so keys, values and headers survive exactly.

Subcommands (all take --bootstrap HOST:PORT and any number of -X key=value, passed to
librdkafka as configuration):

  produce   --topic T [--partition P] [--compression none|gzip|snappy|lz4|zstd]
            Reads messages from stdin, one JSON object per line:
              {"key": b64|null, "value": b64|null, "headers": [[name, b64|null], ...],
               "partition": int}            (every field optional)
            Prints one JSON line per message, in input order: {"partition": P, "offset": O}.
            Fails unless every message is acknowledged by the broker (acks=all).

  consume   --group G --topic T --count N [--timeout SECONDS] [--allow-fewer]
            Joins group G, reads N messages (from the earliest offset where the group has
            no committed offset), prints one JSON line per message:
              {"topic", "partition", "offset", "key", "value", "headers", "timestamp",
               "timestamp_type"}
            then commits synchronously and leaves the group. Fails if fewer than N
            messages arrive within the timeout, unless --allow-fewer.

  committed --group G --topic T
            Prints the group's committed offsets as one JSON object,
            {"0": offset or null, "1": ...}, keyed by partition (null: nothing committed).

  member    --group G --topic T [--work SECONDS]
            A long-lived group member (any -X: group.instance.id,
            partition.assignment.strategy, session.timeout.ms): joins group G, "processes"
            each message it gets (waits --work seconds, then reports it), commits what it
            processed (every 200 ms, and synchronously before a partition is revoked, so a
            clean handover repeats nothing), and prints one JSON line per event, flushed:
              {"event": "assigned" | "revoked" | "lost", "partitions": [...], "t": secs}
              {"event": "processed", "partition": P, "offset": O, "value": b64, "t": secs}
              {"event": "error", "error": text, "fatal": bool, "t": secs}
              {"event": "closed", "t": secs}
            Runs until stdin says "stop" (or closes): then commits, closes the consumer (a
            dynamic member leaves the group; a static one does not) and exits 0. Killed, it
            leaves nothing behind but its session.

  metadata  --topic T
            Prints the cluster as librdkafka's list_topics sees it, one JSON object:
              {"brokers": {"1": "host:port", ...}, "controller": id,
               "partitions": {"0": {"leader": id, "replicas": [...], "isrs": [...]}, ...}}

Diagnostics (group join time, progress) go to stderr; stdout is only the JSON output.
"""

import argparse
import base64
import json
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

# librdkafka's default session timeout is 45 s; a short one keeps a dead member's
# partitions from being stuck for long, and tansu completes a join in about half of it.
SESSION_TIMEOUT_MS = 6000


def log(msg):
    print(f"kafka_tool: {msg}", file=sys.stderr, flush=True)


def b64(data):
    return None if data is None else base64.b64encode(data).decode("ascii")


def unb64(text):
    return None if text is None else base64.b64decode(text, validate=True)


def config(args, **extra):
    conf = {"bootstrap.servers": args.bootstrap, "client.id": "kafka_tool"}
    conf.update(extra)
    for item in args.X:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"kafka_tool: -X expects key=value, got {item!r}")
        conf[key] = value
    return conf


def produce(args):
    conf = config(
        args,
        **{
            "acks": "all",
            "compression.type": args.compression,
            # A short linger groups consecutive messages into one record batch, so
            # compression codecs are exercised on real multi-record batches.
            "linger.ms": 20,
            "message.timeout.ms": int(args.timeout * 1000),
        },
    )
    producer = Producer(conf)
    results = []
    errors = []

    def on_delivery(index):
        def callback(err, msg):
            if err is not None:
                errors.append(f"message {index}: {err}")
            else:
                results[index] = {"partition": msg.partition(), "offset": msg.offset()}

        return callback

    for lineno, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
            headers = [(name, unb64(value)) for name, value in message.get("headers") or []]
            key = unb64(message.get("key"))
            value = unb64(message.get("value"))
        except (ValueError, TypeError) as e:
            sys.exit(f"kafka_tool: stdin line {lineno} is not a valid message: {e}")
        partition = message.get("partition", args.partition)
        kwargs = {"key": key, "value": value, "headers": headers}
        if partition is not None:
            kwargs["partition"] = partition
        results.append(None)
        producer.produce(args.topic, on_delivery=on_delivery(len(results) - 1), **kwargs)
        producer.poll(0)

    remaining = producer.flush(args.timeout)
    if remaining:
        errors.append(f"{remaining} message(s) still undelivered after {args.timeout}s")
    if errors:
        sys.exit("kafka_tool: produce failed: " + "; ".join(errors))
    for result in results:
        print(json.dumps(result))
    log(f"produced {len(results)} message(s) to {args.topic} ({args.compression})")


def consume(args):
    conf = config(
        args,
        **{
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
        },
    )
    consumer = Consumer(conf)
    started = time.monotonic()

    def on_assign(_consumer, partitions):
        parts = sorted(p.partition for p in partitions)
        log(f"group {args.group} joined after {time.monotonic() - started:.2f}s, assigned {parts}")

    consumer.subscribe([args.topic], on_assign=on_assign)
    deadline = started + args.timeout
    received = 0
    try:
        while received < args.count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = consumer.poll(min(left, 0.5))
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(msg.error())
            record = {
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": b64(msg.key()),
                "value": b64(msg.value()),
                "headers": [[name, b64(value)] for name, value in msg.headers() or []],
                "timestamp": msg.timestamp()[1],
                # 1: CreateTime (set by the producer), 2: LogAppendTime, 0: none.
                "timestamp_type": msg.timestamp()[0],
            }
            print(json.dumps(record), flush=True)
            received += 1
        if received:
            # Commits the positions after the messages returned above; synchronous, so
            # the offsets are on the broker when this tool exits.
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    log(f"consumed {received} message(s) from {args.topic} in {time.monotonic() - started:.2f}s")
    if received < args.count and not args.allow_fewer:
        sys.exit(
            f"kafka_tool: consume got {received} of {args.count} message(s) from "
            f"{args.topic} within {args.timeout}s"
        )


def member(args):
    conf = config(
        args,
        **{
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
        },
    )
    started = time.monotonic()
    out_lock = threading.Lock()

    def emit(event, **fields):
        fields["event"] = event
        fields["t"] = round(time.monotonic() - started, 3)
        with out_lock:
            print(json.dumps(fields), flush=True)

    def on_error(err):
        emit("error", error=str(err), fatal=err.fatal())

    conf["error_cb"] = on_error
    consumer = Consumer(conf)
    # Next offset to commit per partition: set once a message is processed.
    done = {}

    def commit(partitions=None):
        offsets = [
            TopicPartition(args.topic, p, o)
            for p, o in sorted(done.items())
            if partitions is None or p in partitions
        ]
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as e:
                emit("error", error=f"commit: {e}", fatal=False)

    def on_assign(_consumer, partitions):
        emit("assigned", partitions=sorted(p.partition for p in partitions))

    def on_revoke(_consumer, partitions):
        parts = sorted(p.partition for p in partitions)
        # Before the partitions go: what was processed is committed, so the next owner
        # starts right after it.
        commit(set(parts))
        for p in parts:
            done.pop(p, None)
        emit("revoked", partitions=parts)

    def on_lost(_consumer, partitions):
        parts = sorted(p.partition for p in partitions)
        for p in parts:
            done.pop(p, None)
        emit("lost", partitions=parts)

    stop = threading.Event()

    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    last_commit = time.monotonic()
    try:
        while not stop.is_set():
            msg = consumer.poll(0.1)
            if msg is not None:
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        emit("error", error=str(msg.error()), fatal=msg.error().fatal())
                else:
                    if args.work > 0:
                        time.sleep(args.work)
                    done[msg.partition()] = msg.offset() + 1
                    emit("processed", partition=msg.partition(), offset=msg.offset(),
                         value=b64(msg.value()))
            if time.monotonic() - last_commit >= 0.2:
                commit()
                last_commit = time.monotonic()
        commit()
    finally:
        consumer.close()
    emit("closed")


def committed(args):
    consumer = Consumer(config(args, **{"group.id": args.group}))
    try:
        metadata = consumer.list_topics(args.topic, timeout=args.timeout)
        topic = metadata.topics.get(args.topic)
        if topic is None or topic.error is not None:
            sys.exit(f"kafka_tool: topic {args.topic} not found: {topic and topic.error}")
        wanted = [TopicPartition(args.topic, p) for p in sorted(topic.partitions)]
        result = {}
        for tp in consumer.committed(wanted, timeout=args.timeout):
            if tp.error is not None:
                sys.exit(f"kafka_tool: committed offset of partition {tp.partition}: {tp.error}")
            # librdkafka reports "no committed offset" as a negative logical offset.
            result[str(tp.partition)] = tp.offset if tp.offset >= 0 else None
    finally:
        consumer.close()
    print(json.dumps(result))


def metadata(args):
    consumer = Consumer(config(args, **{"group.id": "kafka_tool-metadata"}))
    try:
        md = consumer.list_topics(args.topic, timeout=args.timeout)
        topic = md.topics.get(args.topic)
        if topic is None or topic.error is not None:
            sys.exit(f"kafka_tool: topic {args.topic} not found: {topic and topic.error}")
        result = {
            "brokers": {str(b.id): f"{b.host}:{b.port}" for b in md.brokers.values()},
            "controller": md.controller_id,
            "partitions": {
                str(p.id): {"leader": p.leader, "replicas": p.replicas, "isrs": p.isrs}
                for p in topic.partitions.values()
            },
        }
    finally:
        consumer.close()
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--bootstrap", required=True, help="HOST:PORT of the broker")
        p.add_argument("--topic", required=True)
        p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
        p.add_argument("-X", action="append", default=[], metavar="KEY=VALUE",
                       help="extra librdkafka configuration")

    p = sub.add_parser("produce", help="produce messages read as JSON lines from stdin")
    common(p)
    p.add_argument("--partition", type=int, default=None)
    p.add_argument("--compression", default="none",
                   choices=["none", "gzip", "snappy", "lz4", "zstd"])
    p.set_defaults(run=produce)

    p = sub.add_parser("consume", help="consume N messages as a group member, then commit")
    common(p)
    p.add_argument("--group", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--allow-fewer", action="store_true")
    p.set_defaults(run=consume)

    p = sub.add_parser("member", help="a long-lived group member, told to stop on stdin")
    common(p)
    p.add_argument("--group", required=True)
    p.add_argument("--work", type=float, default=0.0, help="seconds per message (default 0)")
    p.set_defaults(run=member)

    p = sub.add_parser("committed", help="print a group's committed offsets")
    common(p)
    p.add_argument("--group", required=True)
    p.set_defaults(run=committed)

    p = sub.add_parser("metadata", help="print brokers and partition leaders")
    common(p)
    p.set_defaults(run=metadata)

    args = parser.parse_args()
    try:
        args.run(args)
    except KafkaException as e:
        sys.exit(f"kafka_tool: {args.command} failed: {e}")


if __name__ == "__main__":
    main()
