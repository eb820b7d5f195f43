#!/usr/bin/env python3
"""Minimal SOCKS5 proxy (RFC 1928: no authentication, CONNECT only) for the HTTP client tests.

Binds 127.0.0.1:0, prints "READY <port>" on stdout, then one line per relayed connection:
"RELAY <n> <host>:<port>" (host as the client sent it: an IPv4 address, or a name for socks5h),
so a test can check that its request went through the proxy.
"""
import ipaddress
import socket
import socketserver
import sys
import threading

LOCK = threading.Lock()
COUNT = [0]


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError("short read")
        buf += part
    return buf


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        c = self.request
        try:
            ver, nmethods = recv_exact(c, 2)
            methods = recv_exact(c, nmethods)
            if ver != 5 or 0 not in methods:
                c.sendall(b"\x05\xff")
                return
            c.sendall(b"\x05\x00")
            ver, cmd, _, atyp = recv_exact(c, 4)
            if atyp == 1:
                host = str(ipaddress.IPv4Address(recv_exact(c, 4)))
            elif atyp == 3:
                host = recv_exact(c, recv_exact(c, 1)[0]).decode("ascii", "replace")
            elif atyp == 4:
                host = str(ipaddress.IPv6Address(recv_exact(c, 16)))
            else:
                c.sendall(b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00")
                return
            port = int.from_bytes(recv_exact(c, 2), "big")
            if ver != 5 or cmd != 1:
                c.sendall(b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00")
                return
            try:
                up = socket.create_connection((host, port), timeout=5)
                up.settimeout(None)
            except OSError:
                c.sendall(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
                return
            with LOCK:
                COUNT[0] += 1
                print("RELAY %d %s:%d" % (COUNT[0], host, port), flush=True)
            c.sendall(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
            t = threading.Thread(target=pipe, args=(up, c), daemon=True)
            t.start()
            pipe(c, up)
            t.join()
            up.close()
        except (OSError, ValueError):
            pass


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    server = Server(("127.0.0.1", 0), Handler)
    print("READY %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
