#!/usr/bin/env python3
"""A SASL front for a broker without SASL (tansu): the server side of Kafka's SASL exchange,
done by an implementation nobody in this project wrote, then bytes relayed to the broker.

tansu 0.6 as packaged cannot hold SCRAM users before authentication is on, so the tests put
this in front of it. The SCRAM server is `scramp` (the library pg8000 uses); PLAIN is
compared here. Per client connection the front:

  - answers ApiVersions by asking the broker and adding SaslHandshake (v0-1) and
    SaslAuthenticate (v0-2) to its list;
  - answers SaslHandshake (unknown mechanism: UNSUPPORTED_SASL_MECHANISM with the enabled
    ones) and SaslAuthenticate (PLAIN; SCRAM-SHA-256/512 through scramp), with Kafka's
    error code and message on failure, after which it closes the connection as Kafka does;
  - refuses (closes) any other request before authentication, as Kafka does;
  - with --session-lifetime-ms, returns that lifetime (KIP-368), accepts re-authentication
    on the same connection (SaslHandshake + SaslAuthenticate again), and closes a
    connection whose session expired when any other request arrives, as Kafka does;
  - relays every other request to the broker over its own connection, keeping the answers
    in request order (clients like librdkafka pipeline requests).

Users come from a JSON file {"user": "password", ...}, read again at every authentication,
so a test can change a password mid-run. Each event is one line on stdout:

  LISTENING <port>
  AUTH ok|failed conn=<n> user=<u> mechanism=<m> reauth=0|1
  HANDSHAKE unsupported conn=<n> mechanism=<m>
  EXPIRED conn=<n> api=<key>          (a connection cut off: a client that did not renew)
  REFUSED conn=<n> api=<key>          (a request before authentication)

Usage: sasl_front.py --listen PORT --upstream HOST:PORT --users FILE
                     [--mechanisms PLAIN,SCRAM-SHA-256,SCRAM-SHA-512]
                     [--session-lifetime-ms N]
"""

import argparse
import itertools
import json
import queue
import socket
import struct
import sys
import threading
import time

from scramp import ScramException, ScramMechanism

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36

NONE = 0
SASL_AUTHENTICATION_FAILED = 58
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34

ITERATIONS = 4096
LOCK = threading.Lock()
CONNECTIONS = itertools.count(1)


def say(line):
    with LOCK:
        print(line, flush=True)


# ---- wire helpers


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def read_frame(sock):
    (size,) = struct.unpack(">i", read_exact(sock, 4))
    return read_exact(sock, size)


def frame(body):
    return struct.pack(">i", len(body)) + body


def uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_uvarint(buf, pos):
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def skip_tagged(buf, pos):
    count, pos = read_uvarint(buf, pos)
    for _ in range(count):
        _tag, pos = read_uvarint(buf, pos)
        size, pos = read_uvarint(buf, pos)
        pos += size
    return pos


def request_flexible(api_key, version):
    if api_key == API_VERSIONS:
        return version >= 3
    if api_key == SASL_AUTHENTICATE:
        return version >= 2
    return False


def parse_request(data):
    """(api_key, version, correlation_id, body) of one request frame."""
    api_key, version, correlation = struct.unpack(">hhi", data[:8])
    pos = 8
    (client_len,) = struct.unpack(">h", data[pos : pos + 2])
    pos += 2 + max(client_len, 0)
    if request_flexible(api_key, version):
        pos = skip_tagged(data, pos)
    return api_key, version, correlation, data[pos:]


# ---- responses we make ourselves


def handshake_response(correlation, error, mechanisms):
    body = struct.pack(">ih", correlation, error) + struct.pack(">i", len(mechanisms))
    for m in mechanisms:
        raw = m.encode()
        body += struct.pack(">h", len(raw)) + raw
    return frame(body)


def authenticate_response(correlation, version, error, message, auth_bytes, lifetime_ms):
    if version >= 2:
        body = struct.pack(">i", correlation) + uvarint(0)
        body += struct.pack(">h", error)
        if message is None:
            body += uvarint(0)
        else:
            raw = message.encode()
            body += uvarint(len(raw) + 1) + raw
        body += uvarint(len(auth_bytes) + 1) + auth_bytes
        body += struct.pack(">q", lifetime_ms) + uvarint(0)
        return frame(body)
    body = struct.pack(">ih", correlation, error)
    if message is None:
        body += struct.pack(">h", -1)
    else:
        raw = message.encode()
        body += struct.pack(">h", len(raw)) + raw
    body += struct.pack(">i", len(auth_bytes)) + auth_bytes
    if version >= 1:
        body += struct.pack(">q", lifetime_ms)
    return frame(body)


def authenticate_request_bytes(version, body):
    if version >= 2:
        size, pos = read_uvarint(body, 0)
        return body[pos : pos + size - 1]
    (size,) = struct.unpack(">i", body[:4])
    return body[4 : 4 + size]


def patch_api_versions(response, version):
    """The broker's ApiVersions answer with SaslHandshake and SaslAuthenticate added."""
    correlation = response[:4]
    body = response[4:]
    (error,) = struct.unpack(">h", body[:2])
    if error != NONE:
        return frame(response)
    pos = 2
    entries = []
    if version >= 3:
        count, pos = read_uvarint(body, pos)
        count -= 1
        for _ in range(count):
            key, lo, hi = struct.unpack(">hhh", body[pos : pos + 6])
            end = skip_tagged(body, pos + 6)
            entries.append((key, lo, hi, body[pos + 6 : end]))
            pos = end
    else:
        (count,) = struct.unpack(">i", body[pos : pos + 4])
        pos += 4
        for _ in range(count):
            key, lo, hi = struct.unpack(">hhh", body[pos : pos + 6])
            entries.append((key, lo, hi, b""))
            pos += 6
    rest = body[pos:]
    entries = [e for e in entries if e[0] not in (SASL_HANDSHAKE, SASL_AUTHENTICATE)]
    tag = uvarint(0) if version >= 3 else b""
    entries += [(SASL_HANDSHAKE, 0, 1, tag), (SASL_AUTHENTICATE, 0, 2, tag)]
    entries.sort()
    out = bytearray(correlation) + struct.pack(">h", NONE)
    out += uvarint(len(entries) + 1) if version >= 3 else struct.pack(">i", len(entries))
    for key, lo, hi, tags in entries:
        out += struct.pack(">hhh", key, lo, hi) + tags
    out += rest
    return frame(bytes(out))


# ---- one client connection


class Client:
    def __init__(self, sock, args):
        self.sock = sock
        self.args = args
        self.id = next(CONNECTIONS)
        host, port = args.upstream.rsplit(":", 1)
        self.upstream = socket.create_connection((host, int(port)))
        self.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.out = queue.Queue()
        self.authenticated = False
        self.expires_at = None
        self.mechanism = None
        self.scram = None
        self.user = None
        self.reauth = False

    def run(self):
        writer = threading.Thread(target=self.write_loop, daemon=True)
        writer.start()
        try:
            while True:
                data = read_frame(self.sock)
                if not self.handle(data):
                    break
        except (EOFError, OSError):
            pass
        self.out.put(("close", None))
        writer.join()

    def write_loop(self):
        try:
            while True:
                kind, value = self.out.get()
                if kind == "close":
                    break
                if kind == "local":
                    self.sock.sendall(value)
                elif kind == "upstream":
                    self.sock.sendall(frame(read_frame(self.upstream)))
                elif kind == "api_versions":
                    self.sock.sendall(patch_api_versions(read_frame(self.upstream), value))
        except (EOFError, OSError):
            pass
        for s in (self.sock, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def forward(self, data, kind="upstream", value=None):
        self.upstream.sendall(frame(data))
        self.out.put((kind, value))

    def handle(self, data):
        """Processes one request; False to close the connection (after what is queued)."""
        api_key, version, correlation, body = parse_request(data)
        if api_key == API_VERSIONS:
            self.forward(data, "api_versions", version)
            return True
        if api_key == SASL_HANDSHAKE:
            return self.handshake(correlation, body)
        if api_key == SASL_AUTHENTICATE:
            return self.authenticate(correlation, version, body)
        if not self.authenticated or self.mechanism is not None:
            say(f"REFUSED conn={self.id} api={api_key}")
            return False
        if self.expires_at is not None and time.monotonic() > self.expires_at:
            say(f"EXPIRED conn={self.id} api={api_key}")
            return False
        self.forward(data)
        return True

    def handshake(self, correlation, body):
        (size,) = struct.unpack(">h", body[:2])
        mechanism = body[2 : 2 + size].decode()
        enabled = self.args.mechanisms.split(",")
        if mechanism not in enabled:
            say(f"HANDSHAKE unsupported conn={self.id} mechanism={mechanism}")
            self.out.put(
                ("local", handshake_response(correlation, UNSUPPORTED_SASL_MECHANISM, enabled))
            )
            return False
        self.reauth = self.authenticated
        self.mechanism = mechanism
        self.scram = None
        self.out.put(("local", handshake_response(correlation, NONE, enabled)))
        return True

    def users(self):
        with open(self.args.users) as f:
            return json.load(f)

    def authenticate(self, correlation, version, body):
        if self.mechanism is None:
            say(f"REFUSED conn={self.id} api={SASL_AUTHENTICATE}")
            return False
        message = authenticate_request_bytes(version, body)
        if self.mechanism == "PLAIN":
            parts = message.split(b"\0")
            user = parts[1].decode() if len(parts) == 3 else ""
            password = parts[2].decode() if len(parts) == 3 else None
            ok = password is not None and self.users().get(user) == password
            return self.finish(
                correlation, version, user, ok, b"",
                "Authentication failed: Invalid username or password",
            )
        failure = (
            "Authentication failed during authentication due to invalid credentials "
            f"with SASL mechanism {self.mechanism}"
        )
        if self.scram is None:
            mechanism = ScramMechanism(self.mechanism)
            users = self.users()

            def auth_fn(username):
                self.user = username
                if username not in users:
                    raise ScramException(f"unknown user {username}")
                return mechanism.make_auth_info(users[username], iteration_count=ITERATIONS)

            self.scram = mechanism.make_server(auth_fn)
            try:
                self.scram.set_client_first(message.decode())
            except Exception:  # scramp raises for unknown users and malformed messages
                user = message.decode(errors="replace").split("n=", 1)[-1].split(",")[0]
                return self.finish(correlation, version, user, False, b"", failure)
            self.out.put(
                (
                    "local",
                    authenticate_response(
                        correlation, version, NONE, None,
                        self.scram.get_server_first().encode(), 0,
                    ),
                )
            )
            return True
        try:
            self.scram.set_client_final(message.decode())
        except Exception:
            return self.finish(correlation, version, self.user, False, b"", failure)
        final = self.scram.get_server_final().encode()
        return self.finish(correlation, version, self.user, True, final, failure)

    def finish(self, correlation, version, user, ok, auth_bytes, failure):
        mechanism, self.mechanism, self.scram = self.mechanism, None, None
        say(
            f"AUTH {'ok' if ok else 'failed'} conn={self.id} user={user} "
            f"mechanism={mechanism} reauth={int(self.reauth)}"
        )
        if not ok:
            self.authenticated = False
            self.out.put(
                (
                    "local",
                    authenticate_response(
                        correlation, version, SASL_AUTHENTICATION_FAILED, failure, b"", 0
                    ),
                )
            )
            return False
        lifetime = self.args.session_lifetime_ms
        self.authenticated = True
        self.expires_at = time.monotonic() + lifetime / 1000 if lifetime else None
        self.out.put(
            (
                "local",
                authenticate_response(correlation, version, NONE, None, auth_bytes, lifetime),
            )
        )
        return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--users", required=True)
    parser.add_argument("--mechanisms", default="PLAIN,SCRAM-SHA-256,SCRAM-SHA-512")
    parser.add_argument("--session-lifetime-ms", type=int, default=0)
    args = parser.parse_args()

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.listen))
    server.listen(64)
    say(f"LISTENING {args.listen}")
    while True:
        sock, _ = server.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client = Client(sock, args)
        except OSError as e:
            print(f"sasl_front: cannot reach the broker at {args.upstream}: {e}", file=sys.stderr)
            sock.close()
            continue
        threading.Thread(target=client.run, daemon=True).start()


if __name__ == "__main__":
    main()
