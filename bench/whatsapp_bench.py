"""WhatsApp channel latency: a signed webhook in, the reply's Graph API request out. nexo receives
Meta-shaped notifications (signed with X-Hub-Signature-256) on /webhooks/whatsapp/bench, an
instant fake model answers (tests/fakes/fake_llm.py --instant), and the reply reaches the fake
Graph API (tests/fakes/fake_graph.py, run in this process so the arrival is seen at once; it
still validates every request). Messages go one at a time; the time is from the start of the
webhook POST to the moment the Graph fake has accepted the reply.

Baseline, in the same run: a trivial receiver (a Python HTTP server that checks the signature,
answers 200 and posts "pong" to the same Graph fake) in place of nexo and the model, so the
difference is what nexo adds (signature check, ledger commit, routing, the turn, the model call,
the send queue).

One JSON line per figure. Usage: whatsapp_bench.py BUILD_DIR. Environment: BENCH_WA_MESSAGES
(default 300). Every child process is killed at the end, also on error."""
import hashlib
import hmac
import http.client
import http.server
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
FAKES = os.path.join(SRC, "tests", "fakes")
MESSAGES = int(os.environ.get("BENCH_WA_MESSAGES", "300"))
WARMUP = 10
USERS = 50  # senders rotate over this many numbers (sessions stay short)
KEY = "sk-fake-key"
TOKEN = "EAAGbenchToken"
SECRET = "bench-app-secret"
PNID = "100200300"
CHILDREN = []
TMP = tempfile.mkdtemp(prefix="nexo-whatsapp-bench-")

sys.path.insert(0, FAKES)
import fake_graph  # noqa: E402


def emit(**kw):
    print(json.dumps(kw), flush=True)


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


class Arrivals(list):
    """fake_graph's request log; wakes the waiter on each accepted send."""

    def __init__(self):
        super().__init__()
        self.cond = threading.Condition()
        self.seen = {}  # to -> count of accepted sends

    def append(self, rec):
        super().append(rec)
        with self.cond:
            if rec.get("status") == 200:
                to = rec["body"]["to"]
                self.seen[to] = self.seen.get(to, 0) + 1
            self.cond.notify_all()

    def wait_for(self, to, count, timeout=30):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.seen.get(to, 0) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("no reply for %s within %d s" % (to, timeout))
                self.cond.wait(left)


def start_graph():
    state = fake_graph.State(TOKEN)
    state.requests = Arrivals()
    handler = fake_graph.make_handler(state)
    handler.disable_nagle_algorithm = True
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, state.requests


def notification(frm, i):
    payload, _ = fake_graph.webhook_payload(PNID, [{"from": frm, "text": "ping %d" % i, "id": "wamid.bench%d" % i}],
                                            None)
    body = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, sig


def round_trips(port, path, arrivals, count, offset):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for k in range(count):
        i = offset + k
        frm = str(15550000000 + i % USERS)
        body, sig = notification(frm, i)
        before = arrivals.seen.get(frm, 0)
        t0 = time.monotonic()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                       "X-Hub-Signature-256": sig})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError("webhook answered %d" % r.status)
        arrivals.wait_for(frm, before + 1)
        out.append((time.monotonic() - t0) * 1000.0)
    conn.close()
    return out


def pct(v, p):
    s = sorted(v)
    return round(s[min(len(s) - 1, int(len(s) * p / 100.0))], 2)


def trivial_receiver(graph_port):
    """The baseline: verify, answer 200, then post the reply to the Graph fake."""
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(want, self.headers.get("X-Hub-Signature-256", ""))
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if not ok:
                return
            m = json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]
            req = json.dumps({"messaging_product": "whatsapp", "recipient_type": "individual", "to": m["from"],
                              "type": "text", "text": {"preview_url": False, "body": "pong"}}).encode()
            c = http.client.HTTPConnection("127.0.0.1", graph_port, timeout=10)
            c.request("POST", "/v21.0/%s/messages" % PNID, body=req,
                      headers={"Content-Type": "application/json", "Authorization": "Bearer " + TOKEN})
            c.getresponse().read()
            c.close()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def start_nexo(graph_port, fake_port, gw_port):
    d = os.path.join(TMP, "nexo")
    cfg = os.path.join(d, "config")
    os.makedirs(os.path.join(cfg, "plugins"))
    files = {
        "gateway.yaml": "log: {level: warn}\n",
        "llm.yaml": "providers:\n  anthropic: {api_key: %s, base_url: http://127.0.0.1:%d}\n" % (KEY, fake_port),
        "agents.yaml": "agents:\n  - id: ana\n    model: {provider: anthropic, model: m}\n"
                       "    inbound_bindings: [{plugin: whatsapp, instance: bench}]\n",
        "plugins/whatsapp.yaml": "whatsapp:\n  - instance: bench\n    phone_number_id: \"%s\"\n"
                                 "    access_token: %s\n    app_secret: %s\n    verify_token: v\n"
                                 "    api_url: http://127.0.0.1:%d\n" % (PNID, TOKEN, SECRET, graph_port),
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
               "--listen", "127.0.0.1:%d" % gw_port, "--metrics-listen", "127.0.0.1:%d" % free_port(),
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
    graph, arrivals = start_graph()
    gport = graph.server_address[1]
    boot = ("import sys; sys.path.insert(0, %r); import fake_llm; "
            "fake_llm.Handler.disable_nagle_algorithm = True; fake_llm.main()" % FAKES)
    fake = spawn(["/usr/bin/python3", "-u", "-c", boot, "--key", KEY, "--instant"], stdout=subprocess.PIPE,
                 stderr=subprocess.DEVNULL, text=True)
    line = fake.stdout.readline()
    if not line.startswith("READY "):
        raise RuntimeError("fake_llm.py did not start: %r" % line)
    fake_port = int(line.split()[1])

    base_srv = trivial_receiver(gport)
    bport = base_srv.server_address[1]
    round_trips(bport, "/", arrivals, WARMUP, 0)
    base = round_trips(bport, "/", arrivals, MESSAGES, WARMUP)
    base_srv.shutdown()

    gw = free_port()
    n = start_nexo(gport, fake_port, gw)
    off = WARMUP + MESSAGES
    round_trips(gw, "/webhooks/whatsapp/bench", arrivals, WARMUP, off)
    lat = round_trips(gw, "/webhooks/whatsapp/bench", arrivals, MESSAGES, off + WARMUP)
    kill(n)
    graph.shutdown()

    emit(bench="whatsapp_reply_latency", messages=MESSAGES, p50_ms=pct(lat, 50), p99_ms=pct(lat, 99),
         max_ms=round(max(lat), 2), baseline="signed webhook to a trivial receiver that posts to the Graph fake",
         baseline_p50_ms=pct(base, 50), baseline_p99_ms=pct(base, 99),
         added_p50_ms=round(pct(lat, 50) - pct(base, 50), 2))


if __name__ == "__main__":
    try:
        main()
    finally:
        for c in reversed(CHILDREN):
            kill(c)
        shutil.rmtree(TMP, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
