"""Scale-out on JetStream (docs/scaling.md), end to end through the nexo binary: one gateway
process (--role gateway) and two agent processes (--role agents), each with its own data dir,
sharing one nats-server started with JetStream (-js -sd <tmp>).

Inbound channel events are published on plugin.inbound.scale from here (the NATS text
protocol), across ~20 sessions; the gateway matches the binding and publishes routed work on
agent.route.kate.<p>; the agent processes serve it (history from the NEXO_SESSIONS bucket) and
answer on plugin.outbound.scale, recorded here. Halfway through, one agent process is killed
(SIGKILL): its sessions continue on the other one with their history. Checked:
  - every message answered exactly once (lost / duplicate counts printed);
  - each session's turns in order: every request the fake LLM saw for a session carries that
    session's messages 1..k in order (so the history grew in order, across the takeover)."""
import json
import os
import shutil
import signal
import tempfile
import time
import unittest
import urllib.request

from nexo_harness import Nexo, main, run_cli, write_config
from test_api_sdk import script, start_fake
from test_bus_faults import Collector, NatsServer, free_port, metric, wait_for
from test_router_nats import NatsConn, envelope

SESSIONS = 20
PER_SESSION = 10


def requests_seen(port):
    return json.loads(urllib.request.urlopen("http://127.0.0.1:%d/_requests" % port, timeout=10).read())


def user_texts(body):
    out = []
    for m in body.get("messages", []):
        if m.get("role") != "user":
            continue
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        else:
            out.extend(b.get("text", "") for b in c if b.get("type") == "text")
    return out


class ScaleOut(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nexo-scale-")
        self.nats = NatsServer(self.tmp, port=free_port(), jetstream=True).start()
        self.fake, self.fport = start_fake()
        self.cfg = os.path.join(self.tmp, "config")
        write_config(self.cfg, {
            "broker.yaml": ("broker:\n  type: nats\n  url: \"nats://127.0.0.1:%d\"\n"
                            "  reconnect: {initial_backoff: 100ms, max_backoff: 1s}\n"
                            "  jetstream: {partitions: 8, ack_wait: 2s, storage: file}\n") % self.nats.port,
            "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                        % self.fport,
            "agents.yaml": ("agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                            "    inbound_bindings: [{plugin: scale}]\n"),
        })
        self.procs = []
        self.col = None

    def tearDown(self):
        if self.col:
            self.col.stopping = True
        codes = []
        try:
            for n in self.procs:
                if n.proc.poll() is None:
                    codes.append(n.stop())
        finally:  # the servers go even when stop() reports a problem
            for n in self.procs:
                if n.proc.poll() is None:
                    n.proc.kill()
                    n.proc.wait()
                n.cleanup()
            self.nats.kill()
            self.fake.kill()
            self.fake.wait()
            self.fake.stdout.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.assertEqual([c for c in codes if c != 0], [])

    def nexo(self, *args, wait=True):
        n = Nexo(config_dir=self.cfg, args=list(args)).start(wait=wait)
        self.procs.append(n)
        return n

    def test_two_agent_processes_one_killed_halfway(self):
        # all three at once: they race to create the streams, the bucket and the consumers
        gw = self.nexo("--role", "gateway", wait=False)
        a = self.nexo("--role", "agents", wait=False)
        b = self.nexo("--role", "agents", "--agents", "kate", wait=False)
        for n in (gw, a, b):
            n.wait_ready()
        for n in (gw, a, b):
            n.wait_log(r"JetStream: streams", timeout=30)
        for n in (a, b):
            n.wait_log(r"consuming agent\.route\.kate\.\* through 8 durable", timeout=30)
        self.assertEqual(gw.get_json("/readyz")[1]["bus_mode"], "nats")
        self.col = Collector(self.nats.port, "plugin.outbound.>")
        self.col.start()
        wait_for(lambda: self.col.connects >= 1, 10, "the collector")
        pub = NatsConn(self.nats.port)
        pub.sub("_nexo_test.none", 99)  # a round trip: the collector's SUB is in by now too
        total = SESSIONS * PER_SESSION
        # Slow answers, so the killed process has turns in flight: they are served again elsewhere.
        script(self.fport, [{"text": "ok", "hang_ms": 150}] * (total + 50))
        served_a = 0
        for i in range(total):
            s, k = i % SESSIONS, i // SESSIONS + 1
            pub.pub("plugin.inbound.scale", envelope("plugin.inbound.scale", {
                "kind": "message", "from": "u%02d" % s, "chat": "s%02d" % s, "text": "s%02d m%d" % (s, k),
                "msg_id": i + 1}))
            time.sleep(0.03)
            if i == total // 2:
                served_a = metric(a, "nexo_route_served_total")
                a.proc.send_signal(signal.SIGKILL)
                a.proc.wait()
        pub.s.close()

        def answers():
            per = {}
            for subject, env in self.col.snapshot():
                per.setdefault(env["payload"].get("reply_to"), set()).add(env["id"])
            return per

        wait_for(lambda: len(answers()) >= total, 180, "every message answered")
        time.sleep(1.5)  # a late duplicate would show now
        per = answers()
        lost = [m for m in range(1, total + 1) if str(m) not in per]
        dups = {m: len(ids) for m, ids in per.items() if len(ids) > 1}
        served_b = metric(b, "nexo_route_served_total")

        # Order: each request for a session carries its messages 1..k, in order.
        reqs = [r for r in requests_seen(self.fport) if r.get("path", "").endswith("/v1/messages")]
        last_k, bad, reruns = {}, [], 0
        for r in reqs:
            texts = user_texts(r["body"] if isinstance(r["body"], dict) else json.loads(r["body"]))
            if not texts:
                continue
            sess = texts[0].split()[0]
            want = ["%s m%d" % (sess, j) for j in range(1, len(texts) + 1)]
            if texts != want:
                bad.append(texts)
                continue
            k = len(texts)
            if k <= last_k.get(sess, 0):
                reruns += 1  # the killed process's turn, served again from the recorded state
            elif k != last_k.get(sess, 0) + 1:
                bad.append(texts)
            last_k[sess] = max(k, last_k.get(sess, 0))
        print("\n[scale-out] %d messages over %d sessions, 2 agent processes, one SIGKILLed at 50%%: "
              "answered %d, lost %d, duplicate answers %d; served before the kill by the killed one %d, "
              "by the survivor in all %d; %d model requests, %d turns run again after the kill, "
              "%d out of order" % (total, SESSIONS, len(per), len(lost), len(dups), served_a, served_b,
                                    len(reqs), reruns, len(bad)))
        self.assertEqual(lost, [])
        self.assertEqual(dups, {})
        self.assertEqual(bad, [])
        self.assertEqual(sorted(last_k.values()), [PER_SESSION] * SESSIONS)
        self.assertGreater(served_a, 0, "the killed process never served anything")
        self.assertGreater(served_b, 0)

    def test_core_nats_without_jetstream_still_routes(self):
        self.nats.kill()
        self.nats = NatsServer(self.tmp, port=self.nats.port).start()  # no -js
        gw = self.nexo("--role", "gateway")
        ag = self.nexo("--role", "agents")
        ag.wait_log(r"core NATS queue group agents", timeout=30)
        self.col = Collector(self.nats.port, "plugin.outbound.>")
        self.col.start()
        wait_for(lambda: self.col.connects >= 1, 10, "the collector")
        pub = NatsConn(self.nats.port)
        pub.sub("_nexo_test.none", 99)
        for i in range(20):
            pub.pub("plugin.inbound.scale", envelope("plugin.inbound.scale", {
                "kind": "message", "chat": "c%d" % (i % 4), "text": "hello %d" % i, "msg_id": i + 1}))
        pub.s.close()
        wait_for(lambda: len({e["payload"]["reply_to"] for _, e in self.col.snapshot()}) >= 20, 60,
                 "20 answers over core NATS")
        self.assertEqual(gw.get_json("/readyz")[1]["bus_mode"], "nats")

    def test_role_errors(self):
        no_nats = os.path.join(self.tmp, "local")
        write_config(no_nats, {"agents.yaml": "agents:\n  - id: kate\n    model: {provider: anthropic, "
                                              "model: m}\n"})
        r = run_cli("run", "--role", "gateway", "--config", no_nats, "--data", os.path.join(self.tmp, "d1"))
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("needs NATS", r.stderr + r.stdout)
        r = run_cli("run", "--role", "bogus")
        self.assertEqual(r.returncode, 2)
        self.assertIn("expected all, gateway or agents", r.stderr)
        r = run_cli("run", "--role", "agents", "--agents", "kate,nobody", "--config", self.cfg,
                    "--data", os.path.join(self.tmp, "d2"), "--listen", "127.0.0.1:0",
                    "--metrics-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn('no agent "nobody"', r.stderr + r.stdout)
        self.assertIn("--role all|gateway|agents", run_cli("help", "run").stdout)


if __name__ == "__main__":
    main()
