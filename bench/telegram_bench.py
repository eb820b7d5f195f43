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
import subprocess
import sys
import tempfile
import threading
import time

from common import (SRC, build_dir, emit, kill, llm_yaml, pct, ready_line, run, spawn, start_fake_llm,
                    start_nexo)

build = build_dir()
NEXO = os.path.abspath(os.path.join(build, "nexo"))
TG_SERVER = os.path.join(SRC, "tests", "tools", "tg-server.js")
MESSAGES = int(os.environ.get("BENCH_TG_MESSAGES", "300"))
INTERVAL_MS = int(os.environ.get("BENCH_TG_INTERVAL_MS", "20"))
WARMUP = 10
CHATS = 50  # messages rotate over this many chats (sessions stay short)
TMP = tempfile.mkdtemp(prefix="nexo-telegram-bench-")


def note(msg):
    print("telegram_bench: " + msg, file=sys.stderr, flush=True)


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


def start_bench_nexo(tg_url, fake_port, token):
    files = {
        "gateway.yaml": "log: {level: warn}\n",
        "llm.yaml": llm_yaml(fake_port),
        "agents.yaml": "agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                       "    inbound_bindings: [{plugin: telegram, instance: bench}]\n",
        "plugins/telegram.yaml": "telegram:\n  - instance: bench\n    token: \"%s\"\n    api_url: %s\n"
                                 "    typing: false\n    polling: {enabled: true, interval_ms: %d}\n"
                                 % (token, tg_url, INTERVAL_MS),
    }
    return start_nexo(NEXO, os.path.join(TMP, "nexo"), files)


def main():
    modules = peers_dir()
    tg = spawn(["node", TG_SERVER, "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
               env=dict(os.environ, NODE_PATH=modules))
    tg_url = ready_line(tg, "tg-server.js").rstrip("/")
    fake_port = start_fake_llm()

    bot = TrivialBot(tg_url, "100:BASELINE")
    bot.start()
    round_trips(tg_url, "100:BASELINE", WARMUP)
    base = round_trips(tg_url, "100:BASELINE", MESSAGES)
    bot.stop.set()
    bot.join(10)

    n = start_bench_nexo(tg_url, fake_port, "200:NEXO")
    round_trips(tg_url, "200:NEXO", WARMUP)
    lat = round_trips(tg_url, "200:NEXO", MESSAGES)
    kill(n)

    emit(bench="telegram_reply_latency", messages=MESSAGES, poll_interval_ms=INTERVAL_MS,
         p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), max_ms=round(max(lat), 2),
         baseline="emulator round trip with a trivial bot", baseline_p50_ms=pct(base, 50),
         baseline_p99_ms=pct(base, 99), added_p50_ms=round(pct(lat, 50) - pct(base, 50), 2))


if __name__ == "__main__":
    run(main, TMP)
