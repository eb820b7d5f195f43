# NX_TEST_LABELS: threaded (also run against the TSan build)
"""Graceful shutdown: a request in flight when SIGTERM arrives completes and the process exits 0;
meanwhile /readyz answers 503 on a new connection for a moment before the listeners close; a
second signal exits at once."""
import json
import signal
import socket
import tempfile
import time
import unittest

from nexo_harness import Nexo, main, recv_all, write_config
from peers import fake_requests, llm_yaml, script, start_fake, stop_fake

BODY = b'{"level":"info"}'


def slow_request_head(n):
    return (b"POST /admin/log-level HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % n)


class Shutdown(unittest.TestCase):
    def setUp(self):
        self.n = Nexo()

    def tearDown(self):
        self.n.cleanup()

    def test_sigterm_lets_a_slow_request_finish_then_exits_0(self):
        self.n.start()
        s = self.n.connect("admin")
        s.sendall(slow_request_head(len(BODY)) + BODY[:5])
        # An idle keep-alive connection must not hold the shutdown up.
        idle = self.n.connect("gateway")
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertIn(b"200", idle.recv(4096))

        self.n.signal(signal.SIGTERM)
        self.n.wait_log(r"SIGTERM received: stopping gracefully")
        # Not accepting any more.
        with self.assertRaises(OSError):
            c = socket.create_connection(("127.0.0.1", self.n.ports["gateway"]), timeout=5)
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            if not c.recv(4096):
                raise ConnectionResetError("closed")
        self.assertIsNone(self.n.proc.poll(), "exited before the slow request finished")
        s.sendall(BODY[5:])
        resp = recv_all(s)
        self.assertTrue(resp.startswith(b"HTTP/1.1 200"), resp)
        self.assertEqual(json.loads(resp.split(b"\r\n\r\n", 1)[1]), {"level": "info"})
        self.assertEqual(recv_all(idle), b"")  # the idle connection was closed
        self.assertEqual(self.n.wait(), 0, self.n.read_log())
        self.assertIn("stopped", self.n.read_log())

    def test_sigterm_answers_readyz_503_before_the_listeners_close(self):
        # A load balancer probing /readyz after the signal must get a clean 503, not a refused
        # connection: with a request in flight the listeners stay open (1 s at most), not ready.
        fake, fport = start_fake()
        try:
            with tempfile.TemporaryDirectory() as cfg:
                write_config(cfg, {"llm.yaml": llm_yaml(fport), "agents.yaml":
                                   "agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"})
                self.n = Nexo(config_dir=cfg).start()
                script(fport, [{"hang_ms": 4000, "text": "late"}])
                chat = self.n.connect()
                body = json.dumps({"model": "kate",
                                   "messages": [{"role": "user", "content": "hi"}]}).encode()
                chat.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                deadline = time.monotonic() + 10
                while not fake_requests(fport):  # the turn is upstream: the request is in flight
                    self.assertLess(time.monotonic(), deadline, "the fake never got the request")
                    time.sleep(0.01)

                self.n.signal(signal.SIGTERM)
                # new connections are still accepted for the drain (1 s at most): asked at once,
                # without waiting for the log, so that a slow machine still finds it open
                deadline = time.monotonic() + 5
                while True:
                    status, ready = self.n.get_json("/readyz")
                    if status != 200:
                        break
                    self.assertLess(time.monotonic(), deadline, "/readyz stayed ready after SIGTERM")
                self.assertEqual(status, 503, ready)
                self.n.wait_log(r"not ready: /readyz answers 503")
                self.assertEqual(ready["status"], "not_ready")
                self.assertEqual(ready["missing"], ["shutting down"])

                # Then the listeners close, well before the request in flight ends (bounded drain)...
                deadline = time.monotonic() + 3
                while True:
                    try:
                        self.n.connect(timeout=1).close()
                    except OSError:
                        break
                    self.assertLess(time.monotonic(), deadline, "the listener stayed open")
                    time.sleep(0.02)
                self.assertIsNone(self.n.proc.poll(), "exited before the request in flight ended")
                # ...and that request still gets its answer.
                resp = recv_all(chat)
                self.assertTrue(resp.startswith(b"HTTP/1.1 200"), resp)
                self.assertIn(b"late", resp)
                chat.close()
                self.assertEqual(self.n.wait(), 0, self.n.read_log())
        finally:
            stop_fake(fake)

    def test_second_signal_exits_at_once(self):
        self.n.start()
        s = self.n.connect("admin")
        s.sendall(slow_request_head(len(BODY)) + BODY[:5])  # never finished
        self.n.signal(signal.SIGTERM)
        self.n.wait_log(r"stopping gracefully")
        self.n.signal(signal.SIGINT)
        self.assertEqual(self.n.wait(timeout=10), 5)
        s.close()

    def test_grace_deadline_closes_a_stuck_request_and_exits_0(self):
        with tempfile.TemporaryDirectory() as cfg:
            write_config(cfg, {"gateway.yaml": "shutdown_grace: 300ms\n"})
            self.n = Nexo(config_dir=cfg).start()
            s = self.n.connect("admin")
            s.sendall(slow_request_head(len(BODY)) + BODY[:5])  # never finished
            self.n.signal(signal.SIGTERM)
            self.assertEqual(self.n.wait(timeout=10), 0, self.n.read_log())
            self.assertEqual(recv_all(s), b"")  # closed by force, no response
            s.close()

    def test_sigint_on_idle_gateway_exits_0(self):
        self.n.start()
        self.n.signal(signal.SIGINT)
        self.assertEqual(self.n.wait(), 0, self.n.read_log())


if __name__ == "__main__":
    main()
