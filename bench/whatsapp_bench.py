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
import sys
import tempfile
import threading
import time

from common import FAKES, build_dir, emit, free_port, kill, llm_yaml, pct, run, start_fake_llm, start_nexo

build = build_dir()
NEXO = os.path.abspath(os.path.join(build, "nexo"))
MESSAGES = int(os.environ.get("BENCH_WA_MESSAGES", "300"))
WARMUP = 10
USERS = 50  # senders rotate over this many numbers (sessions stay short)
TOKEN = "EAAGbenchToken"
SECRET = "bench-app-secret"
PNID = "100200300"
TMP = tempfile.mkdtemp(prefix="nexo-whatsapp-bench-")

sys.path.insert(0, FAKES)
import fake_graph  # noqa: E402


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


def start_bench_nexo(graph_port, fake_port, gw_port):
    files = {
        "gateway.yaml": "log: {level: warn}\n",
        "llm.yaml": llm_yaml(fake_port),
        "agents.yaml": "agents:\n  - id: ana\n    model: {provider: anthropic, model: m}\n"
                       "    inbound_bindings: [{plugin: whatsapp, instance: bench}]\n",
        "plugins/whatsapp.yaml": "whatsapp:\n  - instance: bench\n    phone_number_id: \"%s\"\n"
                                 "    access_token: %s\n    app_secret: %s\n    verify_token: v\n"
                                 "    api_url: http://127.0.0.1:%d\n" % (PNID, TOKEN, SECRET, graph_port),
    }
    return start_nexo(NEXO, os.path.join(TMP, "nexo"), files, gw_port)


def main():
    graph, arrivals = start_graph()
    gport = graph.server_address[1]
    fake_port = start_fake_llm()

    base_srv = trivial_receiver(gport)
    bport = base_srv.server_address[1]
    round_trips(bport, "/", arrivals, WARMUP, 0)
    base = round_trips(bport, "/", arrivals, MESSAGES, WARMUP)
    base_srv.shutdown()

    gw = free_port()
    n = start_bench_nexo(gport, fake_port, gw)
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
    run(main, TMP)
