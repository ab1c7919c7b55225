"""gRPC test server and client for Zentinel's end-to-end tests (tests/tests/grpc.rs).

Generic handlers on raw bytes (no protobuf code generation): the `test.Echo` service.

    grpc_tool.py serve [--tls CERT KEY]          prints "READY <port>"; "GO" on stdin opens the gate
    grpc_tool.py call TARGET CASE [ARGS] [--ca CA --name NAME]
                                                 prints one JSON object with what it saw

Cases: unary TEXT | server-stream N | client-stream N | bidi N | fail | deadline MS |
gated-stream N K (prints "STARTED" after K messages, then reads the rest) |
quiet-client N (sends one message, then nothing while N replies come 100 ms apart).
"""

import json
import sys
import threading

import grpc

SERVICE = "test.Echo"
GATE = threading.Event()
PEERS = set()
PEERS_LOCK = threading.Lock()


def message(i):
    """Message i of a stream: its index, then a payload, so order and loss are both seen."""
    return b"%08d:" % i + b"x" * 100


def note_peer(context):
    with PEERS_LOCK:
        PEERS.add(context.peer())


def unary(request, context):
    note_peer(context)
    context.set_trailing_metadata((("x-echo-trailer", "done"),))
    remaining = context.time_remaining()
    reply = {
        "echo": request.decode(),
        # The client's deadline arrived (as `grpc-timeout`): at most its 30 s remain.
        "deadline_seen": remaining is not None and remaining <= 30,
        "peers": len(PEERS),
    }
    return json.dumps(reply).encode()


def server_stream(request, context):
    note_peer(context)
    text = request.decode()
    if text.startswith("gated:"):
        _, count, before = text.split(":")
        count, before = int(count), int(before)
    else:
        count, before = int(text), None
    for i in range(count):
        if before is not None and i == before:
            if not GATE.wait(timeout=120):
                context.abort(grpc.StatusCode.ABORTED, "gate never opened")
        yield message(i)


def client_stream(request_iterator, context):
    note_peer(context)
    count = 0
    size = 0
    for i, m in enumerate(request_iterator):
        if m != message(i):
            context.abort(grpc.StatusCode.DATA_LOSS, "message %d out of order" % i)
        count += 1
        size += len(m)
    return b"count=%d bytes=%d" % (count, size)


def bidi(request_iterator, context):
    note_peer(context)
    for m in request_iterator:
        yield b"echo:" + m


def chatter(request_iterator, context):
    """N replies 100 ms apart to the first message, while the client sends nothing more: a
    long-lived stream whose request side is quiet."""
    note_peer(context)
    first = next(request_iterator)
    pause = threading.Event()
    for i in range(int(first)):
        pause.wait(timeout=0.1)
        yield message(i)
    for _ in request_iterator:
        pass


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())


def slow(request, context):
    """Answers only once the call is over: the client's deadline is what ends it."""
    done = threading.Event()
    context.add_callback(done.set)
    done.wait(timeout=60)
    return b"too late"


def serve(args):
    server = grpc.server(
        __import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=32)
    )
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Chatter": grpc.stream_stream_rpc_method_handler(chatter),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if "--tls" in args:
        i = args.index("--tls")
        with open(args[i + 1], "rb") as f:
            cert = f.read()
        with open(args[i + 2], "rb") as f:
            key = f.read()
        creds = grpc.ssl_server_credentials(((key, cert),))
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("READY %d" % port, flush=True)
    for line in sys.stdin:
        if line.strip() == "GO":
            GATE.set()
    # stdin closed: the test is over.
    server.stop(grace=None)


def call(args):
    target, case = args[0], args[1]
    rest = [a for a in args[2:] if not a.startswith("--")]
    options = []
    if "--ca" in args:
        with open(args[args.index("--ca") + 1], "rb") as f:
            ca = f.read()
        name = args[args.index("--name") + 1]
        options.append(("grpc.ssl_target_name_override", name))
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca), options)
    else:
        channel = grpc.insecure_channel(target, options)
    method = lambda name: "/%s/%s" % (SERVICE, name)
    out = {}
    try:
        if case == "unary":
            call_ = channel.unary_unary(method("Unary"))
            reply, state = call_.with_call(rest[0].encode(), timeout=30)
            out["reply"] = json.loads(reply)
            out["trailers"] = dict(state.trailing_metadata())
        elif case == "server-stream":
            n = int(rest[0])
            got = 0
            for i, m in enumerate(channel.unary_stream(method("ServerStream"))(rest[0].encode(), timeout=60)):
                if m != message(i):
                    raise SystemExit("message %d is %r" % (i, m[:20]))
                got += 1
            out["count"] = got
        elif case == "gated-stream":
            n, before = int(rest[0]), int(rest[1])
            stream = channel.unary_stream(method("ServerStream"))(
                ("gated:%d:%d" % (n, before)).encode(), timeout=300
            )
            got = 0
            for i, m in enumerate(stream):
                if m != message(i):
                    raise SystemExit("message %d is %r" % (i, m[:20]))
                got += 1
                if got == before:
                    print("STARTED", flush=True)
            out["count"] = got
        elif case == "client-stream":
            n = int(rest[0])
            reply = channel.stream_unary(method("ClientStream"))(
                (message(i) for i in range(n)), timeout=60
            )
            out["reply"] = reply.decode()
        elif case == "bidi":
            n = int(rest[0])
            # Lock-step: each message is sent only after the previous echo came back, so the
            # request and the response streams are both open the whole time.
            sent = threading.Semaphore(1)
            def requests():
                for i in range(n):
                    sent.acquire()
                    yield message(i)
            got = 0
            for i, m in enumerate(channel.stream_stream(method("Bidi"))(requests(), timeout=60)):
                if m != b"echo:" + message(i):
                    raise SystemExit("echo %d is %r" % (i, m[:20]))
                got += 1
                sent.release()
            out["count"] = got
        elif case == "quiet-client":
            n = int(rest[0])
            done = threading.Event()
            def requests():
                yield rest[0].encode()
                done.wait(timeout=120)
            got = 0
            for i, m in enumerate(channel.stream_stream(method("Chatter"))(requests(), timeout=120)):
                if m != message(i):
                    raise SystemExit("reply %d is %r" % (i, m[:20]))
                got += 1
                if got == n:
                    done.set()
            out["count"] = got
        elif case == "fail":
            try:
                channel.unary_unary(method("Fail"))(b"widget-7", timeout=30)
                out["code"] = "OK"
            except grpc.RpcError as e:
                out["code"] = e.code().name
                out["details"] = e.details()
        elif case == "deadline":
            try:
                channel.unary_unary(method("Slow"))(b"", timeout=int(rest[0]) / 1000)
                out["code"] = "OK"
            except grpc.RpcError as e:
                out["code"] = e.code().name
        else:
            raise SystemExit("unknown case " + case)
    except grpc.RpcError as e:
        out["error"] = "%s: %s" % (e.code().name, e.details())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2:])
    elif sys.argv[1] == "call":
        call(sys.argv[2:])
    else:
        raise SystemExit(__doc__)
