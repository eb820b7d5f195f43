#!/usr/bin/env python3
"""Scripted HTTP/1.1 peer for the HTTP client tests (stdlib only).

Binds 127.0.0.1:0, prints "READY <port>" on stdout, serves until killed. Keep-alive on every
response (Content-Length or chunked). It also acts as a plain forward proxy for absolute-form
requests ("GET http://host:port/path"), which it serves itself and marks with X-Via-Proxy.

Endpoints:
  /json                 200 application/json
  /status/<code>        that status, with Retry-After: 7
  /slow?ms=N            answers after N ms
  /stream               a fixed SSE script, sent in awkward pieces (chunked, flushed, delayed)
  /stream?n=N&ms=M      N "tick" events, one every M ms
  /big?bytes=N[&chunked=1]   N bytes of 'x' (chunked: no Content-Length)
  /echo                 JSON of the method, path, headers and body
  /conn                 the client's remote port (to check connection reuse)
  /early                sends its head before it reads the request body, then reads it, then
                        its body ("early")
  /drop_if_reused       the client's remote port, but on a connection that served a request
                        before, closes it without a word (a keep-alive the server gave up on)
  /redirect?to=PATH     302 to PATH
  /loop                 302 to /loop, for ever
  /redirect_endless?to=PATH  302 to PATH with a chunked body that goes on (up to 64 GiB) while read
  /stats                JSON counters: {"proxied": n}
"""
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# The SSE script of /stream: a BOM split in two, a CRLF split across writes, CR-only and LF-only
# line ends, comments, ids, retry. tests/unit/test_http_client.c knows the events it yields.
STREAM_PIECES = [
    b"\xef\xbb", b"\xbf: hello\r", b"\n",
    b"event: greet", b"ing\r\ndata: hel", b"lo\r", b"\n\r", b"\n",
    b"id: 1\ndata: line1\ndata:  line2\n\n",
    b"data: {\"a\":", b"1}\r", b"\r",
    b"retry: 1500\n", b"event: end\ndata\n", b"\n",
    b"data: unterminated",
]

LOCK = threading.Lock()
COUNTERS = {"proxied": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        pass

    def send_body(self, status, body, ctype="text/plain", extra=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.via_proxy:
            self.send_header("X-Via-Proxy", "1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def start_chunked(self, ctype):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def route(self):
        self.via_proxy = False
        target = self.path
        if target.startswith("http://"):
            self.via_proxy = True
            with LOCK:
                COUNTERS["proxied"] += 1
            parts = urlsplit(target)
            target = parts.path + ("?" + parts.query if parts.query else "")
        parts = urlsplit(target)
        path, q = parts.path, parse_qs(parts.query)
        if path == "/early":  # a server that answers while the body is still coming (a 413 would)
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.flush()
            self.read_body()
            self.wfile.write(b"early")
            return
        body = self.read_body()

        if path == "/json":
            self.send_body(200, b'{"ok":true,"n":1}', "application/json")
        elif path.startswith("/status/"):
            code = int(path[len("/status/"):])
            self.send_body(code, b"status %d" % code, extra={"Retry-After": "7"})
        elif path == "/slow":
            time.sleep(int(q.get("ms", ["1000"])[0]) / 1000.0)
            self.send_body(200, b"slow done")
        elif path == "/stream":
            self.stream(q)
        elif path == "/big":
            n = int(q.get("bytes", ["0"])[0])
            if q.get("chunked"):
                self.start_chunked("application/octet-stream")
                while n > 0:
                    k = min(n, 16384)
                    self.chunk(b"x" * k)
                    n -= k
                self.end_chunked()
            else:
                self.send_body(200, b"x" * n, "application/octet-stream")
        elif path == "/echo":
            doc = {
                "method": self.command,
                "path": target,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }
            self.send_body(200, json.dumps(doc).encode(), "application/json")
        elif path == "/conn":
            self.send_body(200, str(self.client_address[1]).encode())
        elif path == "/drop_if_reused":
            if self.served > 1:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_body(200, str(self.client_address[1]).encode())
        elif path == "/redirect":
            self.send_body(302, b"moved", extra={"Location": q.get("to", ["/json"])[0]})
        elif path == "/redirect_endless":
            self.send_response(302)
            self.send_header("Location", q.get("to", ["/json"])[0])
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b"z" * 65536
            try:
                for _ in range(1 << 20):  # 64 GiB at most; a client that stops reading ends it
                    self.chunk(block)
                self.end_chunked()
            except OSError:
                self.close_connection = True
        elif path == "/redirect_long":  # a Location longer than any URL a fetch takes
            self.send_body(302, b"far", extra={"Location": "/json?" + "a" * int(q.get("n", ["9000"])[0])})
        elif path == "/loop":
            self.send_body(302, b"again", extra={"Location": "/loop"})
        elif path == "/stats":
            with LOCK:
                doc = dict(COUNTERS)
            self.send_body(200, json.dumps(doc).encode(), "application/json")
        else:
            self.send_body(404, b"no such endpoint")

    def stream(self, q):
        self.start_chunked("text/event-stream")
        if "n" in q:
            n = int(q["n"][0])
            ms = int(q.get("ms", ["20"])[0])
            for i in range(n):
                self.chunk(b"data: tick %d\n\n" % i)
                time.sleep(ms / 1000.0)
        else:
            for piece in STREAM_PIECES:
                self.chunk(piece)
                time.sleep(0.01)
        self.end_chunked()

    def handle_one_request(self):
        self.served = getattr(self, "served", 0) + 1  # requests on this connection, this one too
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self):
        self.route()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print("READY %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
