"""The bus's resilience end to end, through the nexo binary (docs/bus.md, "Resilience").

Messages come in through a channel on nexo's side (the Telegram channel, long-polling a small
Bot API fake in this file), are routed to an agent answered by tests/fakes/fake_llm.py --instant,
and the replies go back out through the channel; with broker.type nats every one of those events
crosses a real nats-server (-sd <tmp>, free port). A second NATS client here (the text protocol)
plays "another process" and records what it sees on plugin.outbound.>.

  a) 1,000 messages at a steady rate; nats-server SIGKILLed at 30 % and restarted 5 s later:
     every message is answered exactly once on the channel, and the other process sees every
     reply (the ones made during the outage are replayed);
  b) nexo started while NATS is down: /readyz is ready with bus_mode "fallback"; messages are
     answered in-process; NATS started: the mode switches to "nats", nothing is lost across the
     switch, and the other process gets the replies made before it (replayed).

The injecting side never needs NATS, so what is measured is nexo's own guarantee: no message
lost across the outage. Counts are printed."""
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

from nexo_harness import Nexo, main, write_config
from test_api_sdk import start_fake

CHATS = [5000 + i for i in range(20)]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class NatsServer:
    """nats-server on a fixed free port with a temp store dir; killed and restarted at will."""

    def __init__(self, tmp, port=None, jetstream=False):
        self.port = port or free_port()
        self.store = os.path.join(tmp, "nats-store")
        self.jetstream = jetstream
        self.proc = None

    def start(self, timeout=20):
        cmd = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.store]
        if self.jetstream:
            cmd.append("-js")
        deadline = time.monotonic() + timeout
        log_path = self.store + ".log"
        while True:  # the port may linger briefly after a SIGKILL
            with open(log_path, "wb") as log:
                self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
            while self.proc.poll() is None and time.monotonic() < deadline:
                with open(log_path, "rb") as f:  # readiness: its own log line
                    if b"Server is ready" in f.read():
                        return self
                time.sleep(0.02)
            self.kill()
            if time.monotonic() > deadline:
                raise AssertionError("nats-server did not start on port %d" % self.port)
            time.sleep(0.2)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Collector(threading.Thread):
    """Another process on NATS: subscribes to a subject, reconnects whenever the server comes
    back (polling its port), records every message as (subject, envelope)."""

    def __init__(self, port, subject):
        super().__init__(daemon=True)
        self.port, self.subject = port, subject
        self.lock = threading.Lock()
        self.msgs = []
        self.connects = 0
        self.stopping = False

    def run(self):
        while not self.stopping:
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            except OSError:
                time.sleep(0.02)
                continue
            try:
                self.session(s)
            except (OSError, ConnectionError, ValueError):
                pass
            finally:
                s.close()

    def session(self, s):
        s.settimeout(0.5)
        buf = b""

        def line():
            nonlocal buf
            while b"\r\n" not in buf:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    if self.stopping:
                        raise ConnectionError("stopping")
                    continue
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            ln, buf = buf.split(b"\r\n", 1)
            return ln

        line()  # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":false,'
                  b'"name":"test-other-process"}\r\nSUB %s 1\r\nPING\r\n' % self.subject.encode())
        with self.lock:
            self.connects += 1
        while True:
            ln = line()
            if ln == b"PING":
                s.sendall(b"PONG\r\n")
            elif ln.startswith(b"MSG ") or ln.startswith(b"HMSG "):
                parts = ln.split()
                n = int(parts[-1])
                hdr = int(parts[-2]) if ln.startswith(b"HMSG ") else 0
                while len(buf) < n + 2:
                    try:
                        chunk = s.recv(65536)
                    except socket.timeout:
                        continue
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
                data, buf = buf[hdr:n], buf[n + 2:]
                with self.lock:
                    self.msgs.append((parts[1].decode(), json.loads(data)))

    def snapshot(self):
        with self.lock:
            return list(self.msgs)


class FakeBotApi:
    """The few Bot API methods the Telegram channel uses: getUpdates hands out what was added
    with update_id >= offset (at once, the channel paces itself), sendMessage is recorded."""

    def __init__(self):
        self.lock = threading.Lock()
        self.updates = []
        self.sent = []  # (chat_id, reply_to message_id, text)
        me = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):
                pass

            def do_GET(self):
                self.answer(None)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.answer(json.loads(self.rfile.read(n) or b"{}") if n else {})

            def answer(self, body):
                u = urllib.parse.urlsplit(self.path)
                method = u.path.rsplit("/", 1)[-1]
                q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
                if body:
                    q.update(body)
                if method == "getUpdates":
                    result = me.get_updates(int(q.get("offset") or 0))
                elif method == "sendMessage":
                    result = me.send(q)
                else:
                    result = True
                data = json.dumps({"ok": True, "result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def add(self, chat, mid, text):
        with self.lock:
            uid = len(self.updates) + 1
            self.updates.append({"update_id": uid, "message": {
                "message_id": mid, "date": int(time.time()), "text": text,
                "chat": {"id": chat, "type": "private"},
                "from": {"id": chat, "is_bot": False, "first_name": "u%d" % chat}}})

    def get_updates(self, offset):
        with self.lock:
            return [u for u in self.updates if u["update_id"] >= offset][:100]

    def send(self, q):
        rp = q.get("reply_parameters") or {}
        with self.lock:
            self.sent.append((q.get("chat_id"), rp.get("message_id"), q.get("text")))
            return {"message_id": len(self.sent), "date": int(time.time()), "text": q.get("text"),
                    "chat": {"id": q.get("chat_id"), "type": "private"}}

    def answers(self):
        with self.lock:
            return list(self.sent)

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def config(root, nats_port, llm_port, bot_url):
    write_config(root, {
        "broker.yaml": ("broker:\n  type: nats\n  url: \"nats://127.0.0.1:%d\"\n"
                        "  reconnect: {initial_backoff: 100ms, max_backoff: 1s}\n") % nats_port,
        "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                    % llm_port,
        "agents.yaml": ("agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                        "    inbound_bindings: [{plugin: telegram, instance: faults}]\n"),
        "plugins/telegram.yaml": ("telegram:\n  - instance: faults\n    token: \"123456:FAULTS\"\n"
                                  "    api_url: %s\n    polling: {enabled: true, interval_ms: 50}\n"
                                  "    typing: false\n    allowlist: {chat_ids: [%s]}\n")
                                 % (bot_url, ", ".join(str(c) for c in CHATS)),
    })


def metric(n, name):
    status, body, _ = n.request("GET", "/metrics", listener="metrics")
    total = 0.0
    for m in re.finditer(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), body.decode(), re.M):
        total += float(m.group(1))
    return total


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


def count(bot, expected_mids):
    """lost, duplicate answers per message id (message ids are 1..N)."""
    per = {}
    for _, mid, _ in bot.answers():
        per[mid] = per.get(mid, 0) + 1
    lost = [m for m in expected_mids if per.get(m, 0) == 0]
    dups = {m: c for m, c in per.items() if c > 1}
    return lost, dups


def outbound_ids(col):
    ids = [env["id"] for subject, env in col.snapshot() if subject.startswith("plugin.outbound.")]
    return set(ids), len(ids) - len(set(ids))


class BusFaults(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nexo-faults-")
        self.fake, self.fport = start_fake("--instant")
        self.bot = FakeBotApi()
        self.nats = NatsServer(self.tmp)
        self.col = None
        self.n = None

    def tearDown(self):
        if self.col:
            self.col.stopping = True
        try:
            code = self.n.stop() if self.n else 0
        finally:  # the servers go even when stop() reports a problem
            if self.n:
                self.n.cleanup()
            self.nats.kill()
            self.fake.kill()
            self.fake.wait()
            self.fake.stdout.close()
            self.bot.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.assertEqual(code, 0)

    def start_nexo(self):
        cfg = os.path.join(self.tmp, "config")
        config(cfg, self.nats.port, self.fport, self.bot.url)
        self.n = Nexo(config_dir=cfg).start()

    def mode(self):
        status, body = self.n.get_json("/readyz")
        return status, body

    def settle(self, mids, timeout=120):
        wait_for(lambda: not count(self.bot, mids)[0], timeout, "every message answered")
        wait_for(lambda: metric(self.n, "nexo_bus_queue_depth") == 0, 60, "the bus queue to drain")
        time.sleep(1.0)  # late repeats, if any, would arrive now

    def test_a_nats_killed_at_30_percent_and_restarted(self):
        total, period = 1000, 0.01
        self.nats.start()
        self.start_nexo()
        wait_for(lambda: self.mode()[1]["bus_mode"] == "nats", 30, "bus_mode nats")
        self.col = Collector(self.nats.port, "plugin.outbound.>")
        self.col.start()
        wait_for(lambda: self.col.connects >= 1, 10, "the other process to connect")
        time.sleep(0.2)  # its SUB has reached the server (it sent PING after it)
        t0 = time.monotonic()
        killed_at = restarted_at = None
        modes = []
        for i in range(total):
            now = time.monotonic()
            target = t0 + i * period
            if target > now:
                time.sleep(target - now)
            if i == int(total * 0.3):
                self.nats.kill()
                killed_at = time.monotonic()
            if killed_at and not restarted_at and time.monotonic() - killed_at >= 5.0:
                self.nats.start()
                restarted_at = time.monotonic()
            self.bot.add(CHATS[i % len(CHATS)], i + 1, "m%d" % (i + 1))
            if i == int(total * 0.6):
                modes.append(self.mode())
        if not restarted_at:
            time.sleep(max(0.0, 5.0 - (time.monotonic() - killed_at)))
            self.nats.start()
        mids = list(range(1, total + 1))
        self.settle(mids)
        wait_for(lambda: self.mode()[1]["bus_mode"] == "nats", 30, "bus_mode back to nats")
        lost, dups = count(self.bot, mids)
        seen, repeats = outbound_ids(self.col)
        replayed = metric(self.n, "nexo_bus_replayed_total")
        print("\n[bus faults a] %d messages, NATS killed at %d, down 5 s: answered %d, lost %d, "
              "duplicate answers %d; other process saw %d distinct replies (%d repeats dropped by id), "
              "%d events replayed by nexo, mode during the outage %s"
              % (total, int(total * 0.3), len(self.bot.answers()), len(lost), len(dups), len(seen),
                 repeats, replayed, [m[1]["bus_mode"] for m in modes]))
        self.assertEqual([m[0] for m in modes], [200] * len(modes))
        self.assertEqual(lost, [])
        self.assertEqual(dups, {})
        self.assertEqual(len(seen), total, "the other process missed replies")
        self.assertGreater(replayed, 0)

    def test_b_started_with_nats_down_then_switches(self):
        self.start_nexo()  # nothing listens on the NATS port yet
        status, body = self.mode()
        self.assertEqual((status, body["status"], body["bus_mode"]), (200, "ready", "fallback"))
        for i in range(100):
            self.bot.add(CHATS[i % len(CHATS)], i + 1, "before %d" % (i + 1))
            time.sleep(0.005)
        wait_for(lambda: not count(self.bot, range(1, 101))[0], 60, "fallback answers")
        self.nats.start()
        self.col = Collector(self.nats.port, "plugin.outbound.>")
        self.col.start()
        wait_for(lambda: self.mode()[1]["bus_mode"] == "nats", 30, "the switch to nats")
        for i in range(100, 200):
            self.bot.add(CHATS[i % len(CHATS)], i + 1, "after %d" % (i + 1))
            time.sleep(0.005)
        mids = list(range(1, 201))
        self.settle(mids)
        wait_for(lambda: len(outbound_ids(self.col)[0]) >= 200, 30, "the other process's replies")
        lost, dups = count(self.bot, mids)
        seen, repeats = outbound_ids(self.col)
        print("\n[bus faults b] started in fallback: 100 answered in-process, switched to nats, "
              "100 more; lost %d, duplicate answers %d; other process saw %d distinct replies"
              % (len(lost), len(dups), len(seen)))
        self.assertEqual(lost, [])
        self.assertEqual(dups, {})
        self.assertEqual(len(seen), 200)


if __name__ == "__main__":
    main()
