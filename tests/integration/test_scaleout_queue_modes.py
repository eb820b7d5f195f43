"""queue_mode collect and interrupt in the scale-out roles (docs/scaling.md), end to end through the
nexo binary: one gateway process (--role gateway) and one agents process (--role agents), each
with its own data dir, on one nats-server.

On core NATS the agents process runs each session's turns in a local session lane, so the
agent's queue_mode applies as in role "all": messages that wait behind a running turn merge into
the next one (collect), or a newer message cancels the running turn (interrupt). Checked, as a
user would see it and as the gateway's ledger records it:
  - collect: 1 message, then 3 while its turn runs -> exactly 2 replies (one for the merged
    three, sent for the first of them), and all 4 events end `answered` in the gateway's ledger;
  - interrupt: the interrupted message gets no reply and ends `cancelled`, the newer one is
    answered;
  - after the gateway restarts (its resume re-publishes every event not settled) nothing is
    answered again.
With JetStream a partition has one item in flight, so nothing waits in the agents process and
queue_mode does not apply: each message is its own turn, answered once, and stays so after a
restart."""
import json
import os
import sqlite3
import tempfile
import time
import unittest

from nexo_harness import Nexo, main, write_config
from peers import (Collector, NatsConn, NatsServer, envelope, fake_requests, release, script,
                   start_fake, stop_many, wait_for)
from test_bus_faults import metric


class QueueModesScaledOut(unittest.TestCase):
    jetstream = False

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nexo-qmode-")
        self.nats = NatsServer(self.tmp, jetstream=self.jetstream).start()
        self.fake, self.fport = start_fake()
        self.cfg = os.path.join(self.tmp, "config")
        write_config(self.cfg, {
            "broker.yaml": ("broker:\n  type: nats\n  url: \"nats://127.0.0.1:%d\"\n"
                            "  jetstream: {partitions: 2, ack_wait: 5s, storage: file}\n") % self.nats.port,
            "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                        % self.fport,
            "agents.yaml": ("agents:\n"
                            "  - id: col\n    model: {provider: anthropic, model: m}\n"
                            "    config: {queue_mode: collect}\n    inbound_bindings: [{plugin: col}]\n"
                            "  - id: intr\n    model: {provider: anthropic, model: m}\n"
                            "    config: {queue_mode: interrupt}\n    inbound_bindings: [{plugin: intr}]\n"),
        })
        self.procs = []
        self.col = None
        self.gw = self.nexo("--role", "gateway")
        self.agents = self.nexo("--role", "agents")
        if self.jetstream:
            self.agents.wait_log(r"consuming agent\.route\.intr\.\* through 2 durable", timeout=30)
        else:
            self.agents.wait_log(r"core NATS queue group agents", timeout=30)
        self.col = Collector(self.nats.port, "plugin.outbound.>")
        self.col.start()
        wait_for(lambda: self.col.connects >= 1, 10, "the collector")
        self.pub = NatsConn(self.nats.port)
        self.pub.sub("_nexo_test.none", 99)  # a round trip: the collector's SUB is in by now too
        self.ids = {}  # msg_id -> the inbound envelope id (the gateway's ledger key)

    def tearDown(self):
        if self.col:
            self.col.stopping = True
        self.pub.close()
        self.assertEqual(stop_many(self.procs, self.nats, self.fake, self.tmp), [])

    def nexo(self, *args, data_dir=None):
        n = Nexo(config_dir=self.cfg, args=list(args))
        if data_dir:
            n.data_dir = data_dir
        self.procs.append(n.start())
        return n

    # --- what the user and the gateway's ledger see ---
    def say(self, plugin, chat, msg_id, text):
        subject = "plugin.inbound." + plugin
        data = envelope(subject, {"kind": "message", "chat": chat, "text": text, "msg_id": msg_id})
        self.ids[msg_id] = json.loads(data)["id"]
        self.pub.pub(subject, data)

    def replies(self, plugin):
        """[(reply_to, text)] in the order the collector saw them."""
        return [(e["payload"].get("reply_to"), e["payload"]["text"]) for s, e in self.col.snapshot()
                if s == "plugin.outbound." + plugin]

    def llm_calls(self):
        return [r for r in fake_requests(self.fport) if r.get("path", "").endswith("/v1/messages")]

    def states(self, msg_ids):
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(self.gw.data_dir, "nexo.db"), uri=True,
                             timeout=10)
        try:
            return [(db.execute("SELECT state FROM ledger_inbound WHERE id = ?", (self.ids[m],)).fetchone()
                     or ("missing",))[0] for m in msg_ids]
        finally:
            db.close()

    def wait_states(self, msg_ids, want):
        wait_for(lambda: self.states(msg_ids) == want, 20, "ledger states %r" % want,
                 lambda: ", have %r" % self.states(msg_ids))

    def restart_gateway_and_check_nothing_is_answered_again(self, plugin, chat, last_id):
        """The gateway's resume re-publishes every event its ledger has not settled: none may come
        back. A new message's answer is the readiness signal: a resumed event goes out before it."""
        before = self.replies(plugin)
        calls = len(self.llm_calls())
        self.assertEqual(self.gw.stop(), 0)
        self.gw = self.nexo("--role", "gateway", data_dir=self.gw.data_dir)
        script(self.fport, [{"text": "after the restart"}])
        # Core NATS keeps nothing for a subscriber that is not there yet, and the restarted
        # gateway's subscriptions reach the server a moment after it is ready (or it is still in
        # fallback): the same event (one id) goes again each second until answered; the ledger
        # drops the repeats (checked below: one answer, one model call)
        subject = "plugin.inbound." + plugin
        data = envelope(subject, {"kind": "message", "chat": chat, "text": "one more", "msg_id": last_id})
        self.ids[last_id] = json.loads(data)["id"]
        want, deadline = (str(last_id), "after the restart"), time.monotonic() + 30
        while want not in self.replies(plugin):
            self.assertLess(time.monotonic(), deadline, "no answer after the restart: %r" % self.replies(plugin))
            self.pub.pub(subject, data)
            again = time.monotonic() + 1.0
            while want not in self.replies(plugin) and time.monotonic() < again:
                time.sleep(0.02)
        time.sleep(0.5)  # a second answer to a repeat, were there one, would come now
        self.assertEqual(self.replies(plugin), before + [(str(last_id), "after the restart")])
        self.assertEqual(len(self.llm_calls()), calls + 1)

    # --- the cases ---
    def test_collect_answers_a_merged_group_once_and_settles_every_message(self):
        # core NATS: the first turn, then one for the three merged; JetStream: a turn per message
        answers = ["A", "B", "C", "D"] if self.jetstream else ["A", "B"]
        # core NATS: "A" is held at the fake until the three others wait behind it; JetStream
        # (a turn per message, in order) only slows it down
        first = {"hang_ms": 3000} if self.jetstream else {"hold": "A"}
        script(self.fport, [dict(first, text="A")] + [{"text": t} for t in answers[1:]])
        self.say("col", "c1", 1, "m1")
        wait_for(lambda: len(self.llm_calls()) >= 1, 20, "the first turn")
        for m in (2, 3, 4):
            self.say("col", "c1", m, "m%d" % m)
        if not self.jetstream:  # all four turns in the agents process: three wait behind the first
            wait_for(lambda: metric(self.agents, "nexo_agent_turns_in_flight") >= 4, 20, "4 turns queued")
            release(self.fport, "A")
        want = [(str(i + 1), t) for i, t in enumerate(answers)]
        self.wait_states([1, 2, 3, 4], ["answered"] * 4)
        wait_for(lambda: len(self.replies("col")) >= len(want), 20, "the replies")
        self.assertEqual(self.replies("col"), want)
        if not self.jetstream:  # the model saw the three merged messages in the second turn
            texts = [b.get("text") for b in self.llm_calls()[1]["body"]["messages"][-1]["content"]]
            self.assertEqual(texts, ["m2", "m3", "m4"])
        self.restart_gateway_and_check_nothing_is_answered_again("col", "c1", 5)
        self.assertEqual(self.states([1, 2, 3, 4, 5]), ["answered"] * 5)

    def test_interrupt_answers_the_newer_message_only_and_settles_the_interrupted_one(self):
        if self.jetstream:
            script(self.fport, [{"text": "slow answer", "hang_ms": 1500}, {"text": "fresh answer"}])
            want_states, want = ["answered", "answered"], [("1", "slow answer"), ("2", "fresh answer")]
        else:
            script(self.fport, [{"text": "too late", "hold": "late"}, {"text": "fresh answer"}])
            want_states, want = ["cancelled", "answered"], [("2", "fresh answer")]
        self.say("intr", "i1", 1, "first")
        wait_for(lambda: len(self.llm_calls()) >= 1, 20, "the first turn")
        self.say("intr", "i1", 2, "never mind")
        self.wait_states([1, 2], want_states)
        release(self.fport, "late")  # (core NATS: the interrupted call, held until now)
        wait_for(lambda: len(self.replies("intr")) >= len(want), 20, "the replies")
        self.assertEqual(self.replies("intr"), want)
        self.restart_gateway_and_check_nothing_is_answered_again("intr", "i1", 3)
        self.assertEqual(self.states([1, 2, 3]), want_states + ["answered"])


class QueueModesScaledOutJetStream(QueueModesScaledOut):
    jetstream = True


if __name__ == "__main__":
    main()
