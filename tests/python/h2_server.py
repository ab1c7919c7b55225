"""HTTP/2 test backend for tests/tests/http2_upstream.rs, on the `h2` package: prior
knowledge (h2c) on a plain socket, or TLS with ALPN `h2`. One thread per connection.

    h2_server.py [--tls CERT KEY]      prints "READY <port>"; exits when stdin closes

Paths:
  /echo           the request body back, with the trailer `x-body-length`
  /hold?n=N       answered once N `/hold` streams are open at once, on any connections
  /refused?key=K  the first stream with key K is reset with REFUSED_STREAM, later ones answer
  /goaway         answered, then a GOAWAY whose last stream id is this stream's
  /stats          JSON: connections accepted, most streams open at once on one connection,
                  requests per path, PINGs received (h2 answers them)
  anything else   "h2 backend path=<path>"
"""

import json
import os
import select
import socket
import ssl
import sys
import threading
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events

LOCK = threading.Lock()
STATS = {"connections": 0, "max_open": 0, "paths": {}, "pings": 0}
REFUSED = set()
# `/hold` streams waiting: (connection, stream id).
HELD = []


class Conn:
    def __init__(self, sock):
        self.sock = sock
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.requests = {}
        self.pending = {}
        self.open = 0
        # Held streams another connection's thread released (the barrier was reached there).
        self.released = []
        self.wake_r, self.wake_w = os.pipe()

    def run(self):
        self.h2.initiate_connection()
        self.flush()
        while True:
            pending = getattr(self.sock, "pending", lambda: 0)()
            if pending:
                ready = [self.sock]
            else:
                ready, _, _ = select.select([self.sock, self.wake_r], [], [])
            if self.wake_r in ready:
                os.read(self.wake_r, 64)
                with LOCK:
                    released, self.released = self.released, []
                for s in released:
                    self.send(s, b"held\n")
            if self.sock in ready:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for event in self.h2.receive_data(data):
                    self.handle(event)
            self.pump()
            self.flush()

    def handle(self, event):
        if isinstance(event, h2.events.RequestReceived):
            self.requests[event.stream_id] = (dict(event.headers), bytearray())
            self.open += 1
            with LOCK:
                STATS["max_open"] = max(STATS["max_open"], self.open)
        elif isinstance(event, h2.events.DataReceived):
            self.requests[event.stream_id][1].extend(event.data)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.respond(event.stream_id)
        elif isinstance(event, h2.events.PingReceived):
            with LOCK:
                STATS["pings"] += 1
        elif isinstance(event, h2.events.StreamReset):
            self.requests.pop(event.stream_id, None)
            self.pending.pop(event.stream_id, None)

    def respond(self, stream_id):
        headers, body = self.requests.pop(stream_id)
        url = urlsplit(headers[":path"])
        query = parse_qs(url.query)
        with LOCK:
            STATS["paths"][url.path] = STATS["paths"].get(url.path, 0) + 1
        if url.path == "/hold":
            with LOCK:
                HELD.append((self, stream_id))
                if len(HELD) >= int(query["n"][0]):
                    for conn, s in HELD:
                        conn.released.append(s)
                        os.write(conn.wake_w, b"x")
                    HELD.clear()
        elif url.path == "/echo":
            self.send(stream_id, bytes(body), trailers=[("x-body-length", str(len(body)))])
        elif url.path == "/refused":
            key = query["key"][0]
            with LOCK:
                first = key not in REFUSED
                REFUSED.add(key)
            if first:
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                self.open -= 1
            else:
                self.send(stream_id, b"retried method=%s\n" % headers[":method"].encode())
        elif url.path == "/goaway":
            self.send(stream_id, b"going away\n")
            self.pump()
            self.h2.close_connection(last_stream_id=stream_id)
        elif url.path == "/stats":
            with LOCK:
                self.send(stream_id, json.dumps(STATS).encode())
        else:
            self.send(stream_id, b"h2 backend path=%s\n" % url.path.encode())

    def send(self, stream_id, body, trailers=None):
        headers = [(":status", "200"), ("content-type", "text/plain")]
        if trailers is None:
            headers.append(("content-length", str(len(body))))
        self.h2.send_headers(stream_id, headers)
        self.pending[stream_id] = [memoryview(body), trailers]

    def pump(self):
        for stream_id, (rest, trailers) in list(self.pending.items()):
            while len(rest) > 0:
                window = min(
                    self.h2.local_flow_control_window(stream_id),
                    self.h2.max_outbound_frame_size,
                )
                if window <= 0:
                    break
                self.h2.send_data(stream_id, bytes(rest[:window]))
                rest = rest[window:]
            self.pending[stream_id][0] = rest
            if len(rest) == 0:
                if trailers:
                    self.h2.send_headers(stream_id, trailers, end_stream=True)
                else:
                    self.h2.end_stream(stream_id)
                del self.pending[stream_id]
                self.open -= 1

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)


def serve_connection(sock, tls):
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_side=True)
        Conn(sock).run()
    except (OSError, ssl.SSLError):
        pass
    finally:
        sock.close()


def main(args):
    tls = None
    if "--tls" in args:
        i = args.index("--tls")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args[i + 1], args[i + 2])
        tls.set_alpn_protocols(["h2"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)

    def accept():
        while True:
            sock, _ = listener.accept()
            with LOCK:
                STATS["connections"] += 1
            threading.Thread(target=serve_connection, args=(sock, tls), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print("READY %d" % listener.getsockname()[1], flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1:])
