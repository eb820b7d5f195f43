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
    session's messages 1..k in order (so the history grew in order, across the takeover).

The gateway role goes through the in-process router's path (match, ledger claim, sender rate
limit gate, then dispatch as routed work): a second test checks that sender_rate_limit cuts a
flood, that replies the agents published while the gateway was killed (-9) are sent by its
Telegram channel once it is back (from the NEXO_OUTBOUND stream), each exactly once, that an
inbound event published again with the same id after that restart is dropped by the ledger, and
that the agents process wrote the turns to its transcripts."""
import base64
import json
import os
import re
import signal
import tempfile
import time
import unittest
import urllib.request

from nexo_harness import Nexo, main, run_cli, write_config
from peers import stop_many
from test_api_sdk import script, start_fake
from test_bus_faults import Collector, FakeBotApi, NatsServer, free_port, metric, wait_for
from test_router_nats import NatsConn, envelope

SESSIONS = 20
PER_SESSION = 10


def metric_of(n, name, label):
    """The value of one labelled series (label: 'agent="tg"'), 0 when absent."""
    status, body, _ = n.request("GET", "/metrics", listener="metrics")
    m = re.search(r"^%s\{[^}]*%s[^}]*\} (\S+)$" % (re.escape(name), re.escape(label)), body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


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
        self.assertEqual(stop_many(self.procs, self.nats, self.fake, self.tmp), [])

    def collect(self):
        """Records plugin.outbound.> in self.col, once its connection is up."""
        self.col = Collector(self.nats.port, "plugin.outbound.>")
        self.col.start()
        wait_for(lambda: self.col.connects >= 1, 10, "the collector")

    def publisher(self):
        """A connection to publish inbound events on, after a round trip (the collector's SUB is
        in by then too)."""
        pub = NatsConn(self.nats.port)
        pub.sub("_nexo_test.none", 99)
        return pub

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
        self.collect()
        pub = self.publisher()
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
        time.sleep(2.5)  # a late duplicate (a redelivery after ack_wait, 2 s) would show now
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

    def test_gateway_keeps_the_router_guarantees(self):
        bot = FakeBotApi()
        self.addCleanup(bot.close)
        chats = [3001, 3002, 3003]
        write_config(self.cfg, {
            "agents.yaml": ("agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                            "    inbound_bindings: [{plugin: scale}]\n"
                            "  - id: tg\n    model: {provider: anthropic, model: m}\n"
                            "    inbound_bindings: [{plugin: telegram, instance: gw}]\n"
                            "  - id: lim\n    model: {provider: anthropic, model: m}\n"
                            "    sender_rate_limit: {rps: 0.02, burst: 2}\n"
                            "    inbound_bindings: [{plugin: flood}]\n"),
            "plugins/telegram.yaml": ("telegram:\n  - instance: gw\n    token: \"123456:GATEWAY\"\n"
                                      "    api_url: %s\n    polling: {enabled: true, interval_ms: 50}\n"
                                      "    typing: false\n    allowlist: {chat_ids: [%s]}\n")
                                     % (bot.url, ", ".join(str(c) for c in chats)),
        })
        gw = self.nexo("--role", "gateway", wait=False)
        a = self.nexo("--role", "agents", wait=False)
        for n in (gw, a):
            n.wait_ready()
        gw.wait_log(r"consuming plugin\.outbound\.telegram\.gw through durable JetStream consumer", 30)
        for agent in ("kate", "tg", "lim"):
            a.wait_log(r"consuming agent\.route\.%s\.\* through 8 durable" % agent, timeout=30)
        self.collect()
        pub = self.publisher()

        def replies(subject):
            per = {}
            for subj, env in self.col.snapshot():
                if subj == subject:
                    per.setdefault(env["payload"].get("reply_to"), set()).add(env["id"])
            return per

        # sender_rate_limit in the gateway: a flood of 6 from one sender, burst 2 -> 2 turns + a notice
        for i in range(6):
            pub.pub("plugin.inbound.flood", envelope("plugin.inbound.flood", {
                "kind": "message", "from": "f1", "chat": "f1", "text": "flood %d" % i, "msg_id": 1001 + i}))
        wait_for(lambda: len([r for r in replies("plugin.outbound.flood") if r]) >= 2, 30, "2 flood answers")
        wait_for(lambda: metric(gw, "nexo_channel_dropped_total") >= 4, 30, "4 flood messages dropped")
        # one answered event, published again (same id) after the gateway's restart below
        again = envelope("plugin.inbound.scale", {"kind": "message", "chat": "r1", "text": "once",
                                                  "msg_id": 2001})
        pub.pub("plugin.inbound.scale", again)
        wait_for(lambda: "2001" in replies("plugin.outbound.scale"), 30, "the answer to 2001")
        # a failed turn is handed back and run again (broker dlq.max_attempts), as the router does
        script(self.fport, [{"error": {"status": 400, "type": "invalid_request_error", "message": "no"}},
                            {"text": "second try"}])
        pub.pub("plugin.inbound.scale", envelope("plugin.inbound.scale", {
            "kind": "message", "chat": "r2", "text": "retry me", "msg_id": 2002}))
        wait_for(lambda: any(s == "plugin.outbound.scale" and e["payload"].get("reply_to") == "2002"
                             for s, e in self.col.snapshot()), 30, "the answer to 2002")
        self.assertEqual([e["payload"]["text"] for s, e in self.col.snapshot()
                          if e["payload"].get("reply_to") == "2002"], ["second try"])
        self.assertGreaterEqual(metric(a, "nexo_bus_work_naks_total"), 1)

        # the gateway is killed while the agents answer: the replies wait in NEXO_OUTBOUND
        total = 8
        script(self.fport, [{"text": "zebra answer", "hang_ms": 1500}] * total)
        for i in range(total):
            bot.add(chats[i % len(chats)], i + 1, "zebra question %d" % (i + 1))
        wait_for(lambda: metric_of(gw, "nexo_route_forwarded_total", 'agent="tg"') >= total, 30,
                 "the telegram messages routed")
        sent_before = len(bot.answers())
        lim_routed = metric_of(gw, "nexo_route_forwarded_total", 'agent="lim"')
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait()
        wait_for(lambda: len(replies("plugin.outbound.telegram.gw")) >= total, 60,
                 "the agents' replies, published while the gateway is down")
        gw2 = Nexo(config_dir=self.cfg, args=["--role", "gateway"])
        gw2.data_dir = gw.data_dir  # the same ledger
        self.procs.append(gw2)
        gw2.start()

        def telegram_sends():
            per = {}
            for _, mid, _ in bot.answers():
                per[mid] = per.get(mid, 0) + 1
            return per

        wait_for(lambda: len(telegram_sends()) >= total, 60, "every reply sent after the restart")
        pub.pub("plugin.inbound.scale", again)  # a redelivery the bus no longer remembers
        wait_for(lambda: metric(gw2, "nexo_router_redeliveries_total") >= 1, 30,
                 "the redelivery dropped by the ledger")
        time.sleep(2.5)  # a late duplicate (a redelivery after ack_wait, 2 s) would show now
        per = telegram_sends()
        pub.s.close()
        self.assertEqual(sorted(per), list(range(1, total + 1)))
        self.assertEqual({m: c for m, c in per.items() if c > 1}, {})
        self.assertEqual(len(replies("plugin.outbound.scale")["2001"]), 1)
        self.assertEqual(lim_routed, 2)
        self.assertEqual(len([r for r in replies("plugin.outbound.flood") if r]), 2)
        notices = [e for s, e in self.col.snapshot()
                   if s == "plugin.outbound.flood" and "faster" in e["payload"].get("text", "")]
        self.assertEqual(len(notices), 1)
        print("\n[gateway] flood 6 -> 2 turns + 1 notice; %d telegram replies sent before the kill, "
              "%d after the restart, %d sent twice; redelivered event dropped by the ledger"
              % (sent_before, len(bot.answers()) - sent_before, sum(c - 1 for c in per.values())))

        # the agents process wrote the turns to its transcripts
        self.assertEqual(a.stop(), 0)
        r = run_cli("--data", a.data_dir, "transcripts", "search", "zebra", "--agent", "tg", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = json.loads(r.stdout)
        self.assertGreaterEqual(len(rows), total, r.stdout)
        self.assertEqual({row["agent_id"] for row in rows}, {"tg"})

    def test_core_nats_without_jetstream_still_routes(self):
        self.nats.kill()
        self.nats = NatsServer(self.tmp, port=self.nats.port).start()  # no -js
        gw = self.nexo("--role", "gateway")
        ag = self.nexo("--role", "agents")
        ag.wait_log(r"core NATS queue group agents", timeout=30)
        self.collect()
        pub = self.publisher()
        for i in range(20):
            pub.pub("plugin.inbound.scale", envelope("plugin.inbound.scale", {
                "kind": "message", "chat": "c%d" % (i % 4), "text": "hello %d" % i, "msg_id": i + 1}))
        pub.s.close()
        wait_for(lambda: len({e["payload"]["reply_to"] for _, e in self.col.snapshot()}) >= 20, 60,
                 "20 answers over core NATS")
        self.assertEqual(gw.get_json("/readyz")[1]["bus_mode"], "nats")

    def test_files_a_user_sent_reach_an_agents_process(self):
        """Each process has its own data dir: the gateway carries the files the model reads in the
        routed work; the agents process writes them under its media root and the model gets the
        image, the text file inline, and a note for what stays behind."""
        gw = self.nexo("--role", "gateway")
        ag = self.nexo("--role", "agents")
        ag.wait_log(r"consuming agent\.route\.kate\.\* through 8 durable", timeout=30)
        self.collect()
        png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJ"
                               "RU5ErkJggg==")
        inbox = os.path.join(gw.data_dir, "media", "scale")
        os.makedirs(inbox)
        files = {"p.png": png, "n.txt": b"milk, eggs\n", "r.pdf": b"%PDF-1.4 not shown"}
        for name, data in files.items():
            with open(os.path.join(inbox, name), "wb") as f:
                f.write(data)
        media = [{"type": "photo", "path": os.path.join(inbox, "p.png"), "size": len(png)},
                 {"type": "document", "path": os.path.join(inbox, "n.txt"), "mime": "text/plain",
                  "file_name": "shopping.txt"},
                 {"type": "document", "path": os.path.join(inbox, "r.pdf"), "mime": "application/pdf",
                  "file_name": "report.pdf"}]
        script(self.fport, [{"text": "seen"}])
        pub = self.publisher()
        pub.pub("plugin.inbound.scale", envelope("plugin.inbound.scale", {
            "kind": "message", "chat": "m1", "text": "look", "msg_id": 1, "media": media}))
        pub.s.close()
        wait_for(lambda: len(self.col.snapshot()) >= 1, 60, "the answer")
        blocks = requests_seen(self.fport)[-1]["body"]["messages"][-1]["content"]
        self.assertEqual(blocks[0]["type"], "image", blocks)
        self.assertEqual(base64.b64decode(blocks[0]["source"]["data"]), png)
        texts = [b["text"] for b in blocks if b["type"] == "text"]
        self.assertTrue(any(t.endswith("its text:]\nmilk, eggs\n") and "shopping.txt" in t for t in texts), texts)
        self.assertTrue(any("report.pdf" in t and "left at the gateway" in t for t in texts), texts)
        self.assertEqual(texts[-1], "look")
        carried = os.listdir(os.path.join(ag.data_dir, "media", "carried"))
        self.assertEqual(len(carried), 2, carried)  # the image and the text file, by content
        self.assertFalse(os.path.exists(os.path.join(gw.data_dir, "media", "carried")))

    def test_files_over_the_servers_max_payload_go_as_notes(self):
        """A server that takes smaller messages than the files carried: the gateway sends the
        work item again without them (the model gets a note), nothing waits behind it."""
        self.nats.kill()
        self.nats = NatsServer(self.tmp, port=self.nats.port, jetstream=True,
                               conf="max_payload: 65536").start()
        gw = self.nexo("--role", "gateway")
        ag = self.nexo("--role", "agents")
        ag.wait_log(r"consuming agent\.route\.kate\.\* through 8 durable", timeout=30)
        self.collect()
        inbox = os.path.join(gw.data_dir, "media", "scale")
        os.makedirs(inbox)
        big = b"\x89PNG\r\n\x1a\n" + os.urandom(100 * 1024)
        with open(os.path.join(inbox, "big.png"), "wb") as f:
            f.write(big)
        script(self.fport, [{"text": "first"}, {"text": "second"}])
        pub = self.publisher()
        pub.pub("plugin.inbound.scale", envelope("plugin.inbound.scale", {
            "kind": "message", "chat": "m1", "text": "look", "msg_id": 1,
            "media": [{"type": "photo", "path": os.path.join(inbox, "big.png"), "size": len(big)}]}))
        pub.pub("plugin.inbound.scale", envelope("plugin.inbound.scale", {
            "kind": "message", "chat": "m2", "text": "next", "msg_id": 2}))
        pub.s.close()
        wait_for(lambda: len(self.col.snapshot()) >= 2, 60, "both answers")
        firsts = [r["body"]["messages"][-1]["content"] for r in requests_seen(self.fport)]
        look = [c for c in firsts if any(b.get("text") == "look" for b in c if isinstance(b, dict))]
        self.assertEqual(len(look), 1, firsts)
        self.assertEqual([b["type"] for b in look[0]], ["text", "text"], look)
        self.assertIn("too large to carry", look[0][0]["text"])
        gw.wait_log(r"too large for the bus with its files; sent without them", timeout=10)

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
