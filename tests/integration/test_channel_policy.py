"""Channel policies end to end against the telegram-test-api emulator (pinned npm peer,
tests/tools/tg-server.js) and the fake provider: an allowlist keeps strangers away from the
agent, pairing answers an unknown sender once with a code that `nexo pairing approve` turns
into access while nexo runs, groups are answered only when the bot is mentioned,
sender_rate_limit cuts a flood (with one notice), and the send_message tool delivers to a
recipient in outbound_allowlist and is refused for another.

Each behaviour has its own bot (instance, token) so the tests do not see each other's traffic."""
import json
import os
import re
import time
import unittest

from nexo_harness import Nexo, main, run_cli, write_config
from peers import TgPeers, fake_requests, llm_yaml, poll, post_json, script

ALICE, BOB, CAROL, DAVE, MALLORY = 1001, 1002, 1003, 1004, 666
GROUP = -100777
TOKENS = {"allow": "111:ALLOW", "pair": "222:PAIR", "group": "333:GROUP", "flood": "444:FLOOD"}
BOT_ID = 666  # the emulator's getMe: {"id": 666, "username": "TestNameBot"}


class ChannelPolicy(TgPeers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_peers()
        cls.tg_url = cls.tg.url
        inst = ("  - instance: %s\n    token: \"%s\"\n    api_url: %s\n    typing: false\n"
                "    polling: {enabled: true, interval_ms: 100}\n")
        write_config(cls.cfg.name, {
            "llm.yaml": llm_yaml(cls.fport),
            "agents.yaml": ("agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                            "    outbound_allowlist: {telegram: [%d]}\n"
                            "    inbound_bindings:\n"
                            "      - {plugin: telegram, instance: allow}\n"
                            "      - {plugin: telegram, instance: pair}\n"
                            "      - {plugin: telegram, instance: group}\n"
                            "      - {plugin: telegram, instance: flood,\n"
                            "         sender_rate_limit: {rps: 0.02, burst: 1}}\n") % CAROL,
            "plugins/telegram.yaml": "telegram:\n"
            + inst % ("allow", TOKENS["allow"], cls.tg_url)
            + "    sender_policy: allowlist\n    allow_from: [%d, %d]\n" % (ALICE, BOB)
            + inst % ("pair", TOKENS["pair"], cls.tg_url)
            + "    sender_policy: pairing\n    pairing_code_ttl: 10m\n"
            + inst % ("group", TOKENS["group"], cls.tg_url)
            + "    mention_keywords: [kate]\n"
            + inst % ("flood", TOKENS["flood"], cls.tg_url),
        })
        cls.n = Nexo(config_dir=cls.cfg.name).start()

    @classmethod
    def tearDownClass(cls):
        cls.stop_peers()

    # --- the user's side of the emulator ---
    def say(self, bot, user, text, chat=None, **extra):
        self.tg.say(TOKENS[bot], user, text, chat=chat, **extra)

    def say_group(self, bot, user, text, **extra):
        self.say(bot, user, text, chat={"id": GROUP, "title": "team", "type": "group"}, **extra)

    def bot_replies(self, bot, chat):
        return [m["text"] for m in self.tg.replies(TOKENS[bot], chat)]

    def wait_replies(self, bot, chat, count, timeout=20):
        got = self.tg.wait_replies(TOKENS[bot], chat, count, timeout, detail=lambda: (
            " (bot %s); LLM saw %r; log:\n%s" % (bot, self.llm_texts(), self.n.read_log()[-4000:])))
        return [m["text"] for m in got]

    def llm_texts(self):
        out = []
        for r in self.llm_requests():
            c = r["body"]["messages"][-1]["content"]
            out.append(c if isinstance(c, str) else c[0].get("text", c[0].get("content")))
        return out

    def llm_seen(self):
        """Every text block of the newest user message of each request (queued messages of one
        session may be merged into one turn)."""
        out = []
        for r in self.llm_requests():
            c = r["body"]["messages"][-1]["content"]
            out += [c] if isinstance(c, str) else [b["text"] for b in c if b.get("type") == "text"]
        return out

    def llm_requests(self):
        return fake_requests(self.fport)

    def metric(self, pattern):
        _, body, _ = self.n.request("GET", "/metrics", listener="metrics")
        m = re.search(pattern + r" (\d+)", body.decode())
        return int(m.group(1)) if m else 0

    def wait_metric(self, pattern, want, timeout=20):
        if not poll(lambda: self.metric(pattern) >= want, timeout):
            self.fail("%s did not reach %d; log:\n%s" % (pattern, want, self.n.read_log()[-4000:]))

    def dropped(self, instance, reason):
        return (r'nexo_channel_dropped_total\{channel="telegram",instance="%s",reason="%s"\}'
                % (instance, reason))

    def pairing_cli(self, *args):
        return run_cli("--data", self.n.data_dir, "pairing", *args)

    # --- tests ---
    def test_a_sender_outside_the_allowlist_gets_nothing(self):
        script(self.fport, [{"text": "hello Alice"}])
        self.say("allow", MALLORY, "let me in")
        self.say("allow", ALICE, "hi kate")  # handled in order: once Alice is answered, so was Mallory
        self.assertEqual(self.wait_replies("allow", ALICE, 1), ["hello Alice"])
        self.wait_metric(self.dropped("allow", "not_allowed"), 1)
        time.sleep(0.5)
        self.assertEqual(self.bot_replies("allow", MALLORY), [])
        self.assertEqual(self.llm_texts(), ["hi kate"])

    def test_a_strangers_document_is_not_downloaded(self):
        post_json(self.tg.url + "/_file", {"file_id": "DOC-MALLORY", "size": 4000,
                                           "file_path": "documents/junk.bin"})
        post_json(self.tg.url + "/_file", {"file_id": "DOC-MALLORY-BIG", "size": 10,
                                           "file_path": "documents/big.bin"})
        before = self.metric(self.dropped("allow", "not_allowed"))
        self.say("allow", MALLORY, None, document={"file_id": "DOC-MALLORY", "file_name": "junk.bin",
                                                   "file_size": 4000})
        self.say("allow", MALLORY, None, document={"file_id": "DOC-MALLORY-BIG", "file_name": "big.bin",
                                                   "file_size": 1 << 30})  # the "too large" path
        self.wait_metric(self.dropped("allow", "not_allowed"), before + 2)
        self.assertEqual(self.tg.calls(TOKENS["allow"], "getFile"), [])
        media = os.path.join(self.n.data_dir, "media")
        files = [os.path.join(r, f) for r, _, fs in os.walk(media) for f in fs]
        self.assertEqual(files, [])
        self.assertEqual(self.bot_replies("allow", MALLORY), [])  # not even the "too large" note

    def test_pairing_code_then_approval_while_running(self):
        self.say("pair", BOB, "hello?")
        first = self.wait_replies("pair", BOB, 1)
        m = re.search(r"pairing code is ([A-Z2-9]{8}) \(valid for 10 minutes\)", first[0])
        self.assertIsNotNone(m, first)
        code = m.group(1)
        self.assertNotRegex(code, "[01IO]")
        self.say("pair", BOB, "anyone there?")  # no second code while the first is valid
        self.wait_metric(self.dropped("pair", "pairing_pending"), 1)
        self.assertEqual(len(self.bot_replies("pair", BOB)), 1)
        self.assertEqual(self.llm_texts(), [])
        self.assertGreaterEqual(self.metric(r'pairing_inbound_challenged_total\{channel="telegram",'
                                            r'instance="pair"\}'), 1)

        listed = self.pairing_cli("list", "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        rows = json.loads(listed.stdout)
        self.assertIn({"state": "pending", "channel": "telegram", "instance": "pair", "sender": str(BOB),
                       "code": code}, [{k: r.get(k) for k in ("state", "channel", "instance", "sender", "code")}
                                       for r in rows])
        bad = self.pairing_cli("approve", "ZZZZ-ZZZZ")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("no such pending code", bad.stderr)
        self.assertEqual(self.pairing_cli("approve", "not a code").returncode, 2)
        ok = self.pairing_cli("approve", code.lower()[:4] + "-" + code.lower()[4:])
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertIn("approved sender %d on telegram.pair" % BOB, ok.stdout)
        self.n.wait_log(r"telegram\.pair: sender %d approved" % BOB)

        script(self.fport, [{"text": "welcome Bob"}])
        self.say("pair", BOB, "and now?")
        self.assertEqual(self.wait_replies("pair", BOB, 2)[1], "welcome Bob")
        self.assertEqual(self.llm_texts(), ["and now?"])
        self.assertEqual(self.pairing_cli("approve", code).returncode, 1)  # used up

        # revoked: the next message gets a new code, not the agent
        rv = self.pairing_cli("revoke", "telegram.pair", str(BOB))
        self.assertEqual(rv.returncode, 0, rv.stderr)
        self.n.wait_log(r"telegram\.pair: sender %d no longer approved" % BOB)
        self.say("pair", BOB, "still me")
        again = self.wait_replies("pair", BOB, 3)[2]
        code2 = re.search(r"pairing code is ([A-Z2-9]{8})", again).group(1)
        self.assertEqual(self.llm_texts(), ["and now?"])

        # the same through the admin API
        status, rows = self.n.get_json("/admin/pairing", listener="admin")
        self.assertEqual(status, 200)
        self.assertIn(code2, [r.get("code") for r in rows])
        status, body, _ = self.n.request("POST", "/admin/pairing/approve", body=b'{"code": "ZZZZZZZZ"}',
                                         listener="admin")
        self.assertEqual(status, 404, body)
        status, body, _ = self.n.request("POST", "/admin/pairing/approve", body=b'{"code": 12}',
                                         listener="admin")
        self.assertEqual(status, 400, body)
        status, body, _ = self.n.request("POST", "/admin/pairing/approve",
                                         body=json.dumps({"code": code2}).encode(), listener="admin")
        self.assertEqual(status, 200, body)
        row = json.loads(body)
        self.assertEqual((row["sender"], row["state"], "code" in row), (str(BOB), "approved", False), row)
        self.assertGreater(row["approved_at"], 0)
        poll(lambda: len(re.findall(r"telegram\.pair: sender %d approved" % BOB, self.n.read_log())) >= 2,
             10)  # the second approval of Bob in the log
        self.assertEqual(len(re.findall(r"telegram\.pair: sender %d approved" % BOB, self.n.read_log())), 2)
        status, body, _ = self.n.request("POST", "/admin/pairing/revoke", listener="admin",
                                         body=json.dumps({"channel": "telegram.pair", "sender": str(BOB)}).encode())
        self.assertEqual(status, 200, body)
        status, body, _ = self.n.request("POST", "/admin/pairing/revoke", listener="admin",
                                         body=json.dumps({"channel": "telegram.pair", "sender": str(BOB)}).encode())
        self.assertEqual(status, 404, body)

    def test_a_group_is_answered_only_when_the_bot_is_mentioned(self):
        script(self.fport, [{"text": "answer 1"}, {"text": "answer 2"}, {"text": "answer 3"},
                            {"text": "answer 4"}])
        self.say_group("group", ALICE, "lunch anyone?")
        self.say_group("group", ALICE, "@TestNameBot what is on the menu?",
                       entities=[{"type": "mention", "offset": 0, "length": 12}])
        self.wait_replies("group", GROUP, 1)
        self.say_group("group", BOB, "thanks", reply_to_message={
            "message_id": 1, "date": int(time.time()), "text": "answer 1",
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Test", "username": "TestNameBot"},
            "chat": {"id": GROUP, "type": "group", "title": "team"}})
        self.wait_replies("group", GROUP, 2)
        self.say_group("group", BOB, "@SomeoneElse hi", entities=[{"type": "mention", "offset": 0, "length": 12}])
        self.say_group("group", CAROL, "Kate, do you agree?")
        self.assertEqual(self.wait_replies("group", GROUP, 3), ["answer 1", "answer 2", "answer 3"])
        # a command addressed to this bot is a mention of it; one to another bot is not
        self.say_group("group", BOB, "/menu@OtherBot", entities=[{"type": "bot_command", "offset": 0, "length": 14}])
        self.say_group("group", BOB, "/menu@TestNameBot today",
                       entities=[{"type": "bot_command", "offset": 0, "length": 17}])
        self.assertEqual(self.wait_replies("group", GROUP, 4), ["answer 1", "answer 2", "answer 3", "answer 4"])
        self.assertEqual(self.llm_texts(), ["@TestNameBot what is on the menu?", "thanks", "Kate, do you agree?",
                                            "/menu@TestNameBot today"])
        self.assertEqual(self.metric(self.dropped("group", "not_mentioned")), 3)
        # a private chat needs no mention
        script(self.fport, [{"text": "private answer"}])
        self.say("group", DAVE, "just us")
        self.assertEqual(self.wait_replies("group", DAVE, 1), ["private answer"])

    def test_a_flood_is_cut_by_sender_rate_limit(self):
        script(self.fport, [{"text": "one"}])
        for i in range(6):
            self.say("flood", DAVE, "message %d" % i)
        # burst 1: the first message passes, the other five are dropped, and the first drop is
        # answered with one notice
        self.wait_metric(self.dropped("flood", "rate_limited"), 5)
        replies = self.wait_replies("flood", DAVE, 2)
        time.sleep(0.5)
        replies = self.bot_replies("flood", DAVE)
        self.assertEqual(len(replies), 2, replies)
        self.assertIn("one", replies)
        self.assertEqual(len([r for r in replies if "faster than" in r]), 1, replies)
        self.assertEqual(self.llm_seen(), ["message 0"])
        self.assertEqual(self.metric(self.dropped("flood", "rate_limited")), 5)
        # another sender has a bucket of its own
        script(self.fport, [{"text": "three"}])
        self.say("flood", CAROL, "hello")
        self.assertEqual(self.wait_replies("flood", CAROL, 1), ["three"])

    def test_send_message_obeys_outbound_allowlist(self):
        script(self.fport, [
            {"tool_use": {"name": "send_message", "input": {
                "channel": "telegram", "instance": "allow", "to": str(CAROL), "text": "hello Carol",
                "buttons": [[{"text": "Yes", "data": "yes"}]]}}},
            {"tool_use": {"name": "send_message", "input": {
                "channel": "telegram", "instance": "allow", "to": str(DAVE), "text": "hello Dave"}}},
            {"tool_use": {"name": "send_message", "input": {
                "channel": "telegram", "instance": "nope", "to": str(CAROL), "text": "x"}}},
            {"text": "done"}])
        self.say("allow", BOB, "greet carol and dave")
        self.assertEqual(self.wait_replies("allow", BOB, 1), ["done"])
        self.assertEqual(self.wait_replies("allow", CAROL, 1), ["hello Carol"])
        reqs = self.llm_requests()
        self.assertEqual(len(reqs), 4)
        self.assertIn("send_message", [t["name"] for t in reqs[0]["body"]["tools"]])
        results = [r["body"]["messages"][-1]["content"][0] for r in reqs[1:]]
        self.assertFalse(results[0].get("is_error", False), results[0])
        self.assertTrue(results[1].get("is_error"), results[1])
        self.assertIn("outbound_allowlist", json.dumps(results[1]["content"]))
        self.assertTrue(results[2].get("is_error"), results[2])
        self.assertIn("no running channel telegram.nope", json.dumps(results[2]["content"]))
        time.sleep(0.5)
        self.assertEqual(self.bot_replies("allow", DAVE), [])


if __name__ == "__main__":
    main()
