"""Telegram channel latency: a user's message in, the bot's reply out, through the Bot API
emulator (telegram-test-api behind tests/tools/tg-server.js) with nexo long-polling it and an
instant fake model (tests/fakes/fake_llm.py --instant). Messages go one at a time; the time is
from the user's sendMessage to the moment the reply can be read on the user's side.

Baseline, in the same run and against the same emulator: a trivial bot (a Python loop calling
getUpdates then sendMessage at the same polling interval) in place of nexo and the model, so the
difference is what nexo adds (routing, the turn, the model call, Markdown, the send queue).

One JSON line per figure. Usage: telegram_bench.py BUILD_DIR. Environment: BENCH_TG_MESSAGES
(default 300), BENCH_TG_INTERVAL_MS (the bots' polling interval, default 20). Every child process
is killed at the end, also on error."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

build = sys.argv[1] if len(sys.argv) > 1 else "build"
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, ".."))
NEXO = os.path.abspath(os.path.join(build, "nexo"))
FAKE = os.path.join(SRC, "tests", "fakes", "fake_llm.py")
TG_SERVER = os.path.join(SRC, "tests", "tools", "tg-server.js")
MESSAGES = int(os.environ.get("BENCH_TG_MESSAGES", "300"))
INTERVAL_MS = int(os.environ.get("BENCH_TG_INTERVAL_MS", "20"))
WARMUP = 10
CHATS = 50  # messages rotate over this many chats (sessions stay short)
KEY = "sk-fake-key"
CHILDREN = []
TMP = tempfile.mkdtemp(prefix="nexo-telegram-bench-")


def emit(**kw):
    print(json.dumps(kw), flush=True)


def note(msg):
    print("telegram_bench: " + msg, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    CHILDREN.append(p)
    return p


def kill(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def ready_line(p, what):
    line = p.stdout.readline()
    if not line.startswith("READY "):
        raise RuntimeError("%s did not start: %r" % (what, line))
    return line.split()[1]


def peers_dir():
    for d in (os.path.join(os.path.abspath(build), "npm-peers"), os.path.join(SRC, "build", "npm-peers")):
        if os.path.isdir(os.path.join(d, "node_modules", "telegram-test-api")):
            return os.path.join(d, "node_modules")
    raise RuntimeError("npm peers missing: run scripts/install-npm-peers.sh")


class Conn:
    """One keep-alive connection to the emulator, JSON in and out."""

    def __init__(self, url):
        host, port = url.split("//", 1)[1].split(":")
        self.c = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, path, obj):
        body = json.dumps(obj).encode()
        self.c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = self.c.getresponse()
        return json.loads(r.read())


class TrivialBot(threading.Thread):
    """The baseline: getUpdates, answer each message with sendMessage, sleep the interval."""

    def __init__(self, url, token):
        super().__init__(daemon=True)
        self.conn = Conn(url)
        self.token = token
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            ups = self.conn.post("/bot%s/getUpdates" % self.token, {"timeout": 0})["result"]
            for u in ups:
                m = u.get("message") or {}
                self.conn.post("/bot%s/sendMessage" % self.token, {"chat_id": m["chat"]["id"], "text": "pong"})
            spent = time.monotonic() - started
            if spent < INTERVAL_MS / 1000.0:
                time.sleep(INTERVAL_MS / 1000.0 - spent)


def round_trips(url, token, count):
    """Sends count messages one at a time; the latency of each, in ms."""
    conn = Conn(url)
    out = []
    for i in range(count):
        chat = 5000 + i % CHATS
        user = {"id": chat, "first_name": "U", "username": "u%d" % chat, "is_bot": False}
        t0 = time.monotonic()
        conn.post("/sendMessage", {"botToken": token, "from": user, "date": int(time.time()), "text": "ping %d" % i,
                                   "chat": {"id": chat, "first_name": "U", "type": "private"}})
        deadline = t0 + 30
        while True:
            got = conn.post("/getUpdates", {"token": token, "chatId": chat})["result"]
            if got:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("no reply to message %d within 30 s" % i)
            time.sleep(0.0005)
        out.append((time.monotonic() - t0) * 1000.0)
    return out


def pct(v, p):
    s = sorted(v)
    return round(s[min(len(s) - 1, int(len(s) * p / 100.0))], 2)


def start_nexo(tg_url, fake_port, token):
    d = os.path.join(TMP, "nexo")
    cfg = os.path.join(d, "config")
    os.makedirs(os.path.join(cfg, "plugins"))
    files = {
        "gateway.yaml": "log: {level: warn}\n",
        "llm.yaml": "providers:\n  anthropic: {api_key: %s, base_url: http://127.0.0.1:%d}\n" % (KEY, fake_port),
        "agents.yaml": "agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                       "    inbound_bindings: [{plugin: telegram, instance: bench}]\n",
        "plugins/telegram.yaml": "telegram:\n  - instance: bench\n    token: \"%s\"\n    api_url: %s\n"
                                 "    typing: false\n    polling: {enabled: true, interval_ms: %d}\n"
                                 % (token, tg_url, INTERVAL_MS),
    }
    for rel, text in files.items():
        with open(os.path.join(cfg, rel), "w") as f:
            f.write(text)
    sock_path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "NEXO_CONFIG")}
    env["NOTIFY_SOCKET"] = sock_path
    log = open(os.path.join(d, "log"), "w")
    p = spawn([NEXO, "run", "--config", cfg, "--data", os.path.join(d, "data"),
               "--listen", "127.0.0.1:%d" % free_port(), "--metrics-listen", "127.0.0.1:%d" % free_port(),
               "--admin-listen", "127.0.0.1:%d" % free_port(), "--log-level", "warn"],
              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=d)
    sock.settimeout(20)
    try:
        if b"READY=1" not in sock.recv(256):
            raise RuntimeError("nexo not ready")
    finally:
        sock.close()
    return p


def main():
    modules = peers_dir()
    tg = spawn(["node", TG_SERVER, "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
               env=dict(os.environ, NODE_PATH=modules))
    tg_url = ready_line(tg, "tg-server.js").rstrip("/")
    boot = ("import sys; sys.path.insert(0, %r); import fake_llm; "
            "fake_llm.Handler.disable_nagle_algorithm = True; fake_llm.main()" % os.path.dirname(FAKE))
    fake = spawn(["/usr/bin/python3", "-u", "-c", boot, "--key", KEY, "--instant"], stdout=subprocess.PIPE,
                 stderr=subprocess.DEVNULL, text=True)
    fake_port = int(ready_line(fake, "fake_llm.py"))

    bot = TrivialBot(tg_url, "100:BASELINE")
    bot.start()
    round_trips(tg_url, "100:BASELINE", WARMUP)
    base = round_trips(tg_url, "100:BASELINE", MESSAGES)
    bot.stop.set()
    bot.join(10)

    n = start_nexo(tg_url, fake_port, "200:NEXO")
    round_trips(tg_url, "200:NEXO", WARMUP)
    lat = round_trips(tg_url, "200:NEXO", MESSAGES)
    kill(n)

    emit(bench="telegram_reply_latency", messages=MESSAGES, poll_interval_ms=INTERVAL_MS,
         p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), max_ms=round(max(lat), 2),
         baseline="emulator round trip with a trivial bot", baseline_p50_ms=pct(base, 50),
         baseline_p99_ms=pct(base, 99), added_p50_ms=round(pct(lat, 50) - pct(base, 50), 2))


if __name__ == "__main__":
    try:
        main()
    finally:
        for c in reversed(CHILDREN):
            kill(c)
        shutil.rmtree(TMP, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
