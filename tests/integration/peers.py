"""The peers integration tests run next to nexo, and the small waits and HTTP calls around them:

 - the Telegram Bot API emulator (telegram-test-api, pinned npm peer, behind tests/tools/tg-server.js):
   TgEmulator starts it on a free port; say() plays a user, replies() collects what the bot sent;
 - the fake LLM provider (tests/fakes/fake_llm.py): start_fake, script, fake_reset,
   fake_requests, stop_fake; llm_yaml writes the provider entry that points at it; FakePeers
   (the fake, a config directory and one nexo shared by a test class) and, for classes that keep
   their own temp directory, start_nexo and stop_all;
 - nats-server (NatsServer, on a free port, killed and restarted at will), a NATS text-protocol
   client (NatsConn) and a subscriber that survives server restarts (Collector); envelope() builds
   a bus event;
 - poll / wait_for: poll a condition with a deadline (no sleeps where a condition can be checked).

Every helper binds or connects to 127.0.0.1 only."""
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("NEXO_SOURCE_DIR") or os.path.join(HERE, "..", "..")
PEERS = os.environ.get("NEXO_NPM_PEERS") or os.path.join(SRC, "build", "npm-peers")
FAKE = os.path.join(SRC, "tests", "fakes", "fake_llm.py")
TG_SERVER = os.path.join(SRC, "tests", "tools", "tg-server.js")
FAKE_KEY = "sk-fake-key"


# --- small things ---------------------------------------------------------------------------------
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post_json(url, obj, timeout=5):
    req = urllib.request.Request(url, data=json.dumps(obj).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def poll(cond, timeout, interval=0.05):
    """Calls cond() every interval seconds until it returns something true and returns that, or
    returns the last (false) value after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def wait_for(cond, timeout, what, detail=None):
    """poll(), failing with "timed out waiting for <what>" (plus detail(), when given, read at the
    time of the failure) instead of returning a false value."""
    v = poll(cond, timeout)
    if not v:
        raise AssertionError("timed out waiting for %s%s" % (what, detail() if detail else ""))
    return v


def stop_process(p, timeout=10):
    """SIGTERM, then SIGKILL if it has not gone after timeout seconds."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- the fake LLM provider ------------------------------------------------------------------------
def start_fake(*args, key=FAKE_KEY):
    """tests/fakes/fake_llm.py (accepting key) with args; returns (process, port) once it is ready."""
    p = subprocess.Popen(["/usr/bin/python3", "-u", FAKE, "--key", key, *args], stdout=subprocess.PIPE,
                         text=True)
    line = p.stdout.readline()
    assert line.startswith("READY "), line
    return p, int(line.split()[1])


def script(port, steps):
    """What the fake answers to its next requests, one step a request (tests/fakes/fake_llm.py)."""
    req = urllib.request.Request("http://127.0.0.1:%d/_script" % port, data=json.dumps(steps).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=5).read()


def release(port, name):
    """The fake's requests held by a {"hold": name} step answer now."""
    req = urllib.request.Request("http://127.0.0.1:%d/_release" % port, data=json.dumps({"name": name}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=5).read()


def llm_yaml(port, extra=""):
    """llm.yaml with the anthropic provider pointing at the fake on port (extra: more lines)."""
    return ("providers:\n  anthropic: {api_key: %s, base_url: http://127.0.0.1:%d}\n" % (FAKE_KEY, port)
            + extra)


def fake_reset(port):
    """Forgets the fake's script and recorded requests."""
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%d/_reset" % port, data=b"{}",
                                                  method="POST"), timeout=5).read()


def fake_requests(port):
    """Every request the fake got since its last reset: [{path, headers, body}, ...]."""
    return get_json("http://127.0.0.1:%d/_requests" % port)


def stop_fake(p):
    p.kill()
    p.wait()
    if p.stdout:
        p.stdout.close()


def start_nexo(n, fake):
    """n.start() for a setUpClass; when nexo does not come up, n and the fake are stopped before
    the error goes on (tearDownClass does not run after a failed setUpClass)."""
    try:
        return n.start()
    except Exception:
        n.cleanup()
        stop_fake(fake)
        raise


def stop_all(n, fake, tmp):
    """tearDownClass for a class with nexo n, the fake and the temp directory tmp: all are stopped
    and removed, and nexo must have exited with 0."""
    try:
        assert n.stop() == 0
    finally:
        n.cleanup()
        stop_fake(fake)
        shutil.rmtree(tmp, ignore_errors=True)


def stop_many(procs, nats, fake, tmp):
    """tearDown of a test with several nexo processes, a nats-server and the fake: every nexo is
    stopped (SIGTERM), the servers go even when a stop reports a problem, tmp is removed. Returns
    the exit codes that were not 0."""
    codes = []
    try:
        for n in procs:
            if n.proc.poll() is None:
                codes.append(n.stop())
    finally:
        for n in procs:
            n.cleanup()
        nats.kill()
        stop_fake(fake)
        shutil.rmtree(tmp, ignore_errors=True)
    return [c for c in codes if c != 0]


class FakePeers:
    """Mixin for a unittest.TestCase class whose tests share the fake LLM (cls.fake on cls.fport),
    a config directory (cls.cfg.name) and one nexo (cls.n, which the class starts on cls.cfg.name).
    setUp resets the fake."""

    @classmethod
    def start_peers(cls):
        cls.fake, cls.fport = start_fake()
        cls.cfg = tempfile.TemporaryDirectory()

    @classmethod
    def stop_peers(cls):
        """Stops nexo, then the peers; nexo must have exited with 0 (checked last)."""
        try:
            code = cls.n.stop()
        finally:
            cls.n.cleanup()
            stop_fake(cls.fake)
            cls.cfg.cleanup()
        assert code == 0, code

    def setUp(self):
        fake_reset(self.fport)

    # --- for the tests' own use ---
    def send_raw(self, agent, text, session=None, stream=False, close=False):
        """A chat completion sent on a socket of its own (returned, for the test to read from or
        hang up): the caller that leaves. close asks nexo to close it after the answer."""
        s = self.n.connect()
        body = json.dumps({"model": agent, "stream": stream,
                           "messages": [{"role": "user", "content": text}]}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  + (b"Connection: close\r\n" if close else b"")
                  + (b"X-Nexo-Session: %s\r\n" % session.encode() if session else b"")
                  + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return s

    def wait_requests(self, n, limit=10.0):
        """Until the fake has had n requests."""
        deadline = time.monotonic() + limit
        while len(fake_requests(self.fport)) < n:
            self.assertLess(time.monotonic(), deadline, "the fake never got request %d" % n)
            time.sleep(0.01)

    def wait_in_flight(self, n, limit=10.0):
        """Until nexo_agent_turns_in_flight is n."""
        deadline = time.monotonic() + limit
        while True:
            _, m, _ = self.n.request("GET", "/metrics", listener="metrics")
            if "nexo_agent_turns_in_flight %d\n" % n in m.decode():
                return
            self.assertLess(time.monotonic(), deadline, "turns in flight never reached %d" % n)
            time.sleep(0.01)


# --- the Telegram Bot API emulator ----------------------------------------------------------------
def tg_user(uid):
    return {"id": uid, "first_name": "U%d" % uid, "username": "u%d" % uid, "is_bot": False}


def tg_private_chat(uid):
    u = tg_user(uid)
    return {"id": uid, "first_name": u["first_name"], "username": u["username"], "type": "private"}


class TgEmulator:
    """tests/tools/tg-server.js on a free port (url: its base URL). The user's side: say() sends a
    message to a bot as user `uid`; replies() is every message the bot sent to a chat so far (the
    emulator hands each reply out once, so they are kept here)."""

    def __init__(self):
        modules = os.path.join(PEERS, "node_modules")
        if not os.path.isdir(os.path.join(modules, "telegram-test-api")):
            raise AssertionError("npm peers missing in %s: run scripts/install-npm-peers.sh" % PEERS)
        self.proc = subprocess.Popen(["node", TG_SERVER, "0"], stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, NODE_PATH=modules))
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            stop_process(self.proc)
            raise AssertionError("tg-server.js did not start: %r" % line)
        self.url = line.split()[1].rstrip("/")
        self.boxes = {}  # (token, chat) -> every update with a reply, in the emulator's order

    def say(self, token, uid, text=None, chat=None, **extra):
        """A user message to the bot with token: text (or e.g. photo=... in extra), in the user's
        private chat unless chat is given."""
        msg = {"botToken": token, "from": tg_user(uid), "date": int(time.time())}
        if text is not None:
            msg["text"] = text
        msg["chat"] = chat or tg_private_chat(uid)
        msg.update(extra)
        post_json(self.url + "/sendMessage", msg)

    def replies(self, token, chat):
        """Every message the bot sent to chat so far."""
        box = self.boxes.setdefault((token, chat), [])
        got = post_json(self.url + "/getUpdates", {"token": token, "chatId": chat})
        box.extend(sorted(got["result"], key=lambda u: u["updateId"]))
        return [u["message"] for u in box]

    def wait_replies(self, token, chat, count, timeout=20, detail=None):
        """replies() once there are count of them or more; fails after timeout seconds (adding
        detail(), when given, e.g. nexo's log)."""
        def enough():
            r = self.replies(token, chat)
            return r if len(r) >= count else None

        r = poll(enough, timeout)
        if r is None:
            r = self.replies(token, chat)
            raise AssertionError("chat %d: %d of %d replies after %ds: %r%s"
                                 % (chat, len(r), count, timeout, [m.get("text") for m in r],
                                    detail() if detail else ""))
        return r

    def calls(self, token, method):
        """Every Bot API call of method the bot made: [{method, body, t}, ...]."""
        q = urllib.parse.urlencode({"token": token, "method": method})
        return get_json("%s/_calls?%s" % (self.url, q))

    def stop(self):
        stop_process(self.proc)
        self.proc.stdout.close()


class TgPeers(FakePeers):
    """FakePeers with the emulator (cls.tg) too."""

    @classmethod
    def start_peers(cls):
        cls.tg = TgEmulator()
        super().start_peers()

    @classmethod
    def stop_peers(cls):
        try:
            super().stop_peers()
        finally:
            cls.tg.stop()


# --- NATS -----------------------------------------------------------------------------------------
class NatsServer:
    """nats-server on a fixed free port with a temp store dir; killed and restarted at will."""

    def __init__(self, tmp, port=None, jetstream=False, conf=None):
        self.port = port or free_port()
        self.store = os.path.join(tmp, "nats-store")
        self.jetstream = jetstream
        self.conf = None
        if conf:  # server settings no flag sets (e.g. "max_payload: 65536")
            self.conf = os.path.join(tmp, "nats.conf")
            with open(self.conf, "w") as f:
                f.write(conf + "\n")
        self.proc = None

    def start(self, timeout=20):
        cmd = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.store]
        if self.conf:
            cmd += ["-c", self.conf]
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


class NatsConn:
    """The NATS text protocol, just enough for a test: CONNECT, SUB, PUB, MSG/HMSG, PING/PONG.
    stopping: when given, a read that times out asks it and gives up (ConnectionError) once it
    returns true, instead of raising socket.timeout."""

    def __init__(self, port, name="test-channel", headers=False, timeout=10, stopping=None):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.stopping = stopping
        try:
            assert self.line().startswith(b"INFO ")
            opts = '"verbose":false,"pedantic":false,%s"name":"%s"' % (
                '"headers":true,"no_responders":false,' if headers else "", name)
            self.s.sendall(b"CONNECT {%s}\r\nPING\r\n" % opts.encode())
            while self.line() != b"PONG":
                pass
        except BaseException:
            self.s.close()
            raise

    def close(self):
        self.s.close()

    def fill(self):
        while True:
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                if self.stopping is None:
                    raise
                if self.stopping():
                    raise ConnectionError("stopping")
                continue
            if not chunk:
                raise ConnectionError("nats closed")
            self.buf += chunk
            return

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def sub(self, subject, sid, wait=True):
        """Subscribes; wait: until the server has it (its PONG), dropping what comes before."""
        self.s.sendall(b"SUB %s %d\r\nPING\r\n" % (subject.encode(), sid))
        while wait and self.line() != b"PONG":
            pass

    def pub(self, subject, data):
        self.s.sendall(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data))

    def next_msg(self, timeout=15):
        """The next message as (subject, JSON payload); answers the server's PINGs meanwhile."""
        self.s.settimeout(timeout)
        while True:
            line = self.line()
            if line == b"PING":
                self.s.sendall(b"PONG\r\n")
                continue
            if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                parts = line.split()
                n = int(parts[-1])
                hdr = int(parts[-2]) if line.startswith(b"HMSG ") else 0
                while len(self.buf) < n + 2:
                    self.fill()
                data, self.buf = self.buf[hdr:n], self.buf[n + 2:]
                return parts[1].decode(), json.loads(data)


class Collector(threading.Thread):
    """Another process on NATS: subscribes to a subject, reconnects whenever the server comes
    back (polling its port), records every message as (subject, envelope). connects counts the
    subscriptions the server has confirmed."""

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
                c = NatsConn(self.port, name="test-other-process", headers=True, timeout=1,
                             stopping=lambda: self.stopping)
            except (OSError, ConnectionError, AssertionError):
                time.sleep(0.02)
                continue
            try:
                self.session(c)
            except (OSError, ConnectionError, ValueError):
                pass
            finally:
                c.close()

    def session(self, c):
        c.s.settimeout(0.5)
        c.sub(self.subject, 1)  # connects counts a subscription the server has (its PONG came)
        with self.lock:
            self.connects += 1
        while True:
            msg = c.next_msg(timeout=0.5)
            with self.lock:
                self.msgs.append(msg)

    def snapshot(self):
        with self.lock:
            return list(self.msgs)


def envelope(topic, payload, source="test-channel"):
    """A bus event as another process would publish it (docs/bus.md)."""
    ts = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    return json.dumps({"id": str(uuid.uuid4()), "timestamp": ts, "topic": topic, "source": source,
                       "session_id": None, "payload": payload}).encode()
