#!/usr/bin/env python3
"""SASL in front of a Kafka-protocol broker that has none (noida-db), for BrokerKit's tests.

Listens on HOST:PORT (the address the broker behind it advertises, see scripts/brokers.sh)
and, per client connection, speaks the pre-authentication part of the Kafka protocol itself:
ApiVersions (the broker's own list, plus SaslHandshake and SaslAuthenticate), SaslHandshake
v1 and SaslAuthenticate v0 for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, checked
against the user table). Once a client is authenticated, the connection is spliced through
to the broker (a Unix socket) byte for byte. Rejections answer SASL_AUTHENTICATION_FAILED
(58) as a Kafka broker does.

usage: kafka-sasl-front.py HOST:PORT UPSTREAM_UNIX_SOCKET USER:PASSWORD [USER:PASSWORD ...]
"""
import base64
import hashlib
import hmac
import os
import select
import socket
import struct
import sys
import threading
import time

SASL_HANDSHAKE, API_VERSIONS, SASL_AUTHENTICATE = 17, 18, 36
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ITERATIONS = 4096


def read_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(sock):
    size = read_exactly(sock, 4)
    if size is None:
        return None
    (length,) = struct.unpack(">i", size)
    if length <= 0 or length > 1 << 20:
        return None
    return read_exactly(sock, length)


def string(value):
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def read_string(body, at):
    (length,) = struct.unpack_from(">h", body, at)
    at += 2
    if length < 0:
        return None, at
    return body[at:at + length].decode(), at + length


def upstream_api_versions(path):
    """The broker's ApiVersions (v0) as (key, min, max) triples; waits up to 60 s for it."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                request = struct.pack(">hhi", API_VERSIONS, 0, 1) + string("sasl-front")
                s.sendall(struct.pack(">i", len(request)) + request)
                body = read_frame(s)
            if body is not None:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"kafka-sasl-front: no broker answered on {path}")
        time.sleep(0.2)
    error, count = struct.unpack_from(">hi", body, 4)
    if error != 0:
        raise SystemExit(f"kafka-sasl-front: the broker answered ApiVersions with error {error}")
    return [struct.unpack_from(">hhh", body, 10 + 6 * i) for i in range(count)]


class Scram:
    """The server side of one SCRAM exchange (RFC 5802), without channel binding."""

    def __init__(self, mechanism, users):
        self.hash = hashlib.sha256 if mechanism == "SCRAM-SHA-256" else hashlib.sha512
        self.name = "sha256" if mechanism == "SCRAM-SHA-256" else "sha512"
        self.users = users
        self.step = 0

    def hmac(self, key, message):
        return hmac.new(key, message.encode() if isinstance(message, str) else message, self.hash).digest()

    def respond(self, token):
        """Returns (ok, reply bytes, user, done)."""
        text = token.decode()
        if self.step == 0:
            if not text.startswith("n,"):
                return False, b"", None, True
            self.client_first_bare = text.split(",", 2)[2]
            attributes = dict(part.split("=", 1) for part in self.client_first_bare.split(","))
            self.user = attributes.get("n", "")
            password = self.users.get(self.user)
            if password is None:
                return False, b"", self.user, True
            salt = os.urandom(16)
            self.nonce = attributes["r"] + base64.b64encode(os.urandom(18)).decode()
            self.salted = hashlib.pbkdf2_hmac(self.name, password.encode(), salt, ITERATIONS)
            self.server_first = f"r={self.nonce},s={base64.b64encode(salt).decode()},i={ITERATIONS}"
            self.step = 1
            return True, self.server_first.encode(), self.user, False
        attributes = dict(part.split("=", 1) for part in text.split(","))
        without_proof = text.rsplit(",p=", 1)[0]
        # As Kafka's own SCRAM server: the nonce must end with the server's (librdkafka
        # 2.0.2 sends its client nonce once more in front of it).
        if not attributes.get("r", "").endswith(self.nonce):
            return False, b"", self.user, True
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}"
        client_key = self.hmac(self.salted, "Client Key")
        stored_key = self.hash(client_key).digest()
        signature = self.hmac(stored_key, auth_message)
        proof = base64.b64decode(attributes.get("p", ""))
        recovered = bytes(a ^ b for a, b in zip(proof, signature))
        if len(proof) != len(signature) or self.hash(recovered).digest() != stored_key:
            return False, b"", self.user, True
        server_signature = self.hmac(self.hmac(self.salted, "Server Key"), auth_message)
        return True, ("v=" + base64.b64encode(server_signature).decode()).encode(), self.user, True


def splice(a, b):
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [])
        for s in readable:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


def serve(client, upstream_path, apis, users):
    mechanism, scram = None, None
    try:
        while True:
            request = read_frame(client)
            if request is None:
                return
            api_key, api_version, correlation = struct.unpack_from(">hhi", request, 0)
            _, at = read_string(request, 8)  # client id
            if api_key == API_VERSIONS:
                # Newer versions get UNSUPPORTED_VERSION (35) with the list, in v0 layout:
                # the client then asks again with v0.
                body = struct.pack(">hi", 0 if api_version == 0 else 35, len(apis))
                body += b"".join(struct.pack(">hhh", *api) for api in apis)
            elif api_key == SASL_HANDSHAKE:
                mechanism, at = read_string(request, at)
                body = struct.pack(">h", 0 if mechanism in MECHANISMS else 33)
                body += struct.pack(">i", len(MECHANISMS)) + b"".join(string(m) for m in MECHANISMS)
                if mechanism.startswith("SCRAM-"):
                    scram = Scram(mechanism, users)
            elif api_key == SASL_AUTHENTICATE and mechanism in MECHANISMS:
                (length,) = struct.unpack_from(">i", request, at)
                token = request[at + 4:at + 4 + length]
                if mechanism == "PLAIN":
                    parts = token.split(b"\0")
                    user = parts[1].decode() if len(parts) == 3 else ""
                    ok = len(parts) == 3 and users.get(user) == parts[2].decode()
                    reply, done = b"", True
                else:
                    ok, reply, user, done = scram.respond(token)
                if ok:
                    body = struct.pack(">h", 0) + struct.pack(">h", -1) + struct.pack(">i", len(reply)) + reply
                else:
                    body = struct.pack(">h", 58) + string(f"Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}")
                    body += struct.pack(">i", 0)
                client.sendall(struct.pack(">ii", 4 + len(body), correlation) + body)
                if not ok:
                    return
                if done:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
                        upstream.connect(upstream_path)
                        splice(client, upstream)
                    return
                continue
            else:
                return  # nothing else is served before authentication
            client.sendall(struct.pack(">ii", 4 + len(body), correlation) + body)
    except (OSError, ValueError, KeyError, struct.error):
        return
    finally:
        client.close()


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    upstream_path = sys.argv[2]
    users = dict(pair.split(":", 1) for pair in sys.argv[3:])
    apis = [api for api in upstream_api_versions(upstream_path) if api[0] not in (SASL_HANDSHAKE, SASL_AUTHENTICATE)]
    apis += [(SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 0)]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(64)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, upstream_path, apis, users), daemon=True).start()


if __name__ == "__main__":
    main()
