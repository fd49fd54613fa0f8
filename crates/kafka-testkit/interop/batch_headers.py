#!/usr/bin/env python3
"""Prints the header of every record batch of a topic, as stored by the broker.

No Kafka client library exposes a batch's header (its codec, its producer id and sequence,
its size as the broker measures it against max.message.bytes), so this speaks the wire
protocol itself: Metadata v1 for the partitions and their leaders, Fetch v4 for the raw
record batches. Written from the protocol guide, independently of the worker's code.

Usage: batch_headers.py --bootstrap HOST:PORT --topic T [--timeout SECONDS]

Prints one JSON object per batch, in partition then offset order:
  {"partition", "base_offset", "size" (the whole batch, as the broker measures it),
   "magic", "codec" ("none", "gzip", "snappy", "lz4", "zstd"), "timestamp_type"
   ("create" or "log_append"), "base_timestamp", "max_timestamp", "producer_id",
   "producer_epoch", "base_sequence", "records"}
"""

import argparse
import json
import socket
import struct
import sys
import time

CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class Conn:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.correlation = 0

    def call(self, api_key, version, body):
        self.correlation += 1
        client = b"batch_headers"
        header = struct.pack(">hhih", api_key, version, self.correlation, len(client)) + client
        frame = header + body
        self.sock.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", self._read(4))[0]
        data = self._read(size)
        correlation = struct.unpack(">i", data[:4])[0]
        if correlation != self.correlation:
            sys.exit(f"batch_headers: answer {correlation} to request {self.correlation}")
        return Reader(data[4:])

    def _read(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                sys.exit("batch_headers: the broker closed the connection")
            out += chunk
        return out


class Reader:
    def __init__(self, data):
        self.data = data
        self.at = 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        values = struct.unpack(fmt, self.data[self.at:self.at + size])
        self.at += size
        return values if len(values) > 1 else values[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.at:self.at + n].decode()
        self.at += n
        return s

    def bytes(self):
        n = self.take(">i")
        if n < 0:
            return None
        b = self.data[self.at:self.at + n]
        self.at += n
        return b


def string(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def metadata(conn, topic):
    """Metadata v1: {partition: (host, port) of its leader}."""
    r = conn.call(3, 1, struct.pack(">i", 1) + string(topic))
    brokers = {}
    for _ in range(r.take(">i")):
        node = r.take(">i")
        host = r.string()
        port = r.take(">i")
        r.string()  # rack
        brokers[node] = (host, port)
    r.take(">i")  # controller id
    leaders = {}
    for _ in range(r.take(">i")):
        error = r.take(">h")
        name = r.string()
        r.take(">b")  # is_internal
        for _ in range(r.take(">i")):
            perror, index, leader = r.take(">hii")
            for _ in range(2):  # replicas, then in-sync replicas: arrays of node ids
                for _ in range(r.take(">i")):
                    r.take(">i")
            if name == topic and error == 0:
                leaders[index] = brokers[leader]
        if name == topic and error != 0:
            sys.exit(f"batch_headers: topic {topic}: error code {error}")
    return leaders


def fetch(conn, topic, partition, offset):
    """Fetch v4 (read_uncommitted) of one partition from `offset`: (high watermark, records)."""
    body = struct.pack(">iiiib", -1, 500, 1, 64 << 20, 0)
    body += struct.pack(">i", 1) + string(topic)
    body += struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, 64 << 20)
    r = conn.call(1, 4, body)
    r.take(">i")  # throttle
    result = None
    for _ in range(r.take(">i")):
        r.string()
        for _ in range(r.take(">i")):
            index, error, high_watermark, _lso = r.take(">ihqq")
            aborted = r.take(">i")
            for _ in range(max(aborted, 0)):
                r.take(">qq")
            records = r.bytes() or b""
            if index == partition:
                if error != 0:
                    sys.exit(f"batch_headers: fetch of partition {partition}: error code {error}")
                result = (high_watermark, records)
    return result


def batches(partition, records):
    at = 0
    while at + 61 <= len(records):
        base_offset, length = struct.unpack(">qi", records[at:at + 12])
        if at + 12 + length > len(records):
            break
        (_epoch, magic, _crc, attributes, last_delta, base_ts, max_ts, pid, pepoch, seq,
         count) = struct.unpack(">ibIhiqqqhii", records[at + 12:at + 61])
        yield {
            "partition": partition,
            "base_offset": base_offset,
            "size": 12 + length,
            "magic": magic,
            "codec": CODECS.get(attributes & 7, f"unknown {attributes & 7}"),
            "timestamp_type": "log_append" if attributes & 8 else "create",
            "base_timestamp": base_ts,
            "max_timestamp": max_ts,
            "producer_id": pid,
            "producer_epoch": pepoch,
            "base_sequence": seq,
            "records": count,
            "last_offset": base_offset + last_delta,
        }
        at += 12 + length


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    host, port = args.bootstrap.rsplit(":", 1)
    leaders = metadata(Conn(host, int(port), args.timeout), args.topic)
    conns = {}
    for partition in sorted(leaders):
        leader = leaders[partition]
        conn = conns.get(leader) or conns.setdefault(leader, Conn(leader[0], leader[1], args.timeout))
        offset = 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            high_watermark, records = fetch(conn, args.topic, partition, offset)
            if offset >= high_watermark:
                break
            found = list(batches(partition, records))
            for b in found:
                if b["last_offset"] >= offset:
                    print(json.dumps(b))
            if found:
                offset = found[-1]["last_offset"] + 1
        else:
            sys.exit(f"batch_headers: partition {partition} not read to its end in {args.timeout}s")


if __name__ == "__main__":
    main()
