"""A channel in another process reaches an agent through a real nats-server: an inbound event on
plugin.inbound.<plugin>.<instance> is routed by the agents' inbound_bindings, answered by the
agent (fake provider), and the reply comes back on plugin.outbound.<plugin>.<instance>."""
import datetime
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import uuid

from nexo_harness import Nexo, main, write_config
from test_api_sdk import script, start_fake

AGENTS = """\
agents:
  - id: kate
    model: {provider: anthropic, model: m}
    inbound_bindings: [{plugin: telegram, instance: kate_bot}]
  - id: ana
    model: {provider: anthropic, model: m}
    inbound_bindings: [{plugin: whatsapp}]
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class NatsConn:
    """The NATS text protocol, just enough for a test: CONNECT, SUB, PUB, MSG, PING/PONG."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        assert self.line().startswith(b"INFO ")
        self.s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"test-channel"}\r\nPING\r\n')
        while self.line() != b"PONG":
            pass

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("nats closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def sub(self, subject, sid):
        self.s.sendall(b"SUB %s %d\r\nPING\r\n" % (subject.encode(), sid))
        while self.line() != b"PONG":
            pass

    def pub(self, subject, data):
        self.s.sendall(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data))

    def next_msg(self, timeout=15):
        self.s.settimeout(timeout)
        while True:
            line = self.line()
            if line == b"PING":
                self.s.sendall(b"PONG\r\n")
                continue
            if line.startswith(b"MSG "):
                parts = line.split()
                n = int(parts[-1])
                while len(self.buf) < n + 2:
                    self.buf += self.s.recv(65536)
                data, self.buf = self.buf[:n], self.buf[n + 2:]
                return parts[1].decode(), json.loads(data)


def envelope(topic, payload):
    ts = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    return json.dumps({"id": str(uuid.uuid4()), "timestamp": ts, "topic": topic, "source": "test-channel",
                       "session_id": None, "payload": payload}).encode()


class RouterOverNats(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="nexo-nats-")
        cls.nport = free_port()
        cls.nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(cls.nport)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in cls.nats.stderr:  # readiness: its own log line
            if "Server is ready" in line:
                break
        cls.fake, cls.fport = start_fake()
        write_config(os.path.join(cls.tmp, "config"), {
            "broker.yaml": "broker: {type: nats, url: \"nats://127.0.0.1:%d\"}\n" % cls.nport,
            "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                        % cls.fport,
            "agents.yaml": AGENTS,
        })
        cls.n = Nexo(config_dir=os.path.join(cls.tmp, "config")).start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if cls.n.get_json("/readyz")[1]["bus_mode"] == "nats":
                break
            time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        code = cls.n.stop()
        cls.n.cleanup()
        for p in (cls.fake, cls.nats):
            p.kill()
            p.wait()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert code == 0, code

    def test_inbound_message_is_answered_on_the_outbound_subject(self):
        self.assertEqual(self.n.get_json("/readyz")[1]["bus_mode"], "nats")
        c = NatsConn(self.nport)
        c.sub("plugin.outbound.>", 1)
        script(self.fport, [{"text": "hello Alice"}, {"text": "hola"}])
        # No binding matches telegram without an instance: dropped. Then whatsapp -> ana.
        c.pub("plugin.inbound.telegram", envelope("plugin.inbound.telegram",
                                                  {"kind": "message", "from": "1", "chat": 1, "text": "x"}))
        inbound = envelope("plugin.inbound.telegram.kate_bot",
                           {"kind": "message", "from": "42", "chat": 42, "text": "hi", "msg_id": 7})
        c.pub("plugin.inbound.telegram.kate_bot", inbound)
        subject, env = c.next_msg()
        self.assertEqual(subject, "plugin.outbound.telegram.kate_bot")
        self.assertEqual(env["source"], "kate")
        # the idempotency key: the inbound event id and the reply's index (docs/bus.md)
        self.assertEqual(env["payload"], {"to": "42", "text": "hello Alice", "reply_to": "7",
                                          "session_id": "agent:kate:telegram.kate_bot:42",
                                          "key": json.loads(inbound)["id"] + ":0"})
        c.pub("plugin.inbound.whatsapp", envelope("plugin.inbound.whatsapp",
                                                  {"kind": "message", "from": "573001112233", "text": "hola?"}))
        subject, env = c.next_msg()
        self.assertEqual(subject, "plugin.outbound.whatsapp")
        self.assertEqual((env["source"], env["payload"]["text"], env["payload"]["to"]),
                         ("ana", "hola", "573001112233"))
        import urllib.request
        reqs = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/_requests" % self.fport).read())
        self.assertEqual(len(reqs), 2)  # the unbound telegram message never reached a model


if __name__ == "__main__":
    main()
