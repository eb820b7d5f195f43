"""The WhatsApp Business Cloud API channel end to end: Meta's side is tests/fakes/fake_graph.py
(a protocol-faithful Graph API that also signs and delivers webhooks), the agent is answered by
the fake provider, and nexo runs on a real nats-server so the test can publish outbound
envelopes (templates, buttons) on plugin.outbound.whatsapp.<instance> as any process would."""
import base64
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import unittest
import urllib.request

from nexo_harness import Nexo, main, write_config
from peers import release
from test_api_sdk import SRC, script, start_fake
from test_router_nats import NatsConn, envelope, free_port

FAKE_GRAPH = os.path.join(SRC, "tests", "fakes", "fake_graph.py")
PNID = "106540352242922"
TOKEN = "EAAGfakeWhatsAppAccessToken123"
SECRET = "app-secret-for-tests"
VERIFY = "verify-me-please"
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def http_json(url, obj=None, timeout=15):
    data = json.dumps(obj).encode() if obj is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class WhatsApp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="nexo-wa-")
        cls.nport = free_port()
        cls.nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(cls.nport)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in cls.nats.stderr:
            if "Server is ready" in line:
                break
        cls.graph = subprocess.Popen(["/usr/bin/python3", "-u", FAKE_GRAPH, "--token", TOKEN],
                                     stdout=subprocess.PIPE, text=True)
        line = cls.graph.stdout.readline()
        assert line.startswith("READY "), line
        cls.gport = int(line.split()[1])
        cls.fake, cls.fport = start_fake()
        cls.cfg = os.path.join(cls.tmp, "config")
        write_config(cls.cfg, {
            "broker.yaml": "broker: {type: nats, url: \"nats://127.0.0.1:%d\"}\n" % cls.nport,
            "gateway.yaml": "auth_token: gateway-bearer-token\n",  # webhooks must not need it
            "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                        % cls.fport,
            "agents.yaml": "agents:\n  - id: ana\n    model: {provider: anthropic, model: m}\n"
                           "    inbound_bindings: [{plugin: whatsapp, instance: sales}]\n"
                           "  - id: ivy\n    model: {provider: anthropic, model: m}\n"
                           "    config: {queue_mode: interrupt}\n"
                           "    inbound_bindings: [{plugin: whatsapp, instance: strict}]\n"
                           "  - id: cole\n    model: {provider: anthropic, model: m}\n"
                           "    config: {queue_mode: collect}\n"
                           "    inbound_bindings: [{plugin: whatsapp, instance: pool}]\n",
            "plugins/whatsapp.yaml": (
                "whatsapp:\n"
                "  - instance: sales\n"
                "    phone_number_id: \"%s\"\n"
                "    access_token: \"%s\"\n"
                "    app_secret: \"%s\"\n"
                "    verify_token: \"%s\"\n"
                "    api_url: http://127.0.0.1:%d\n"
                "    graph_version: v21.0\n"
                "    window: {template: {name: hello_world, language: en_US}}\n"
                "  - instance: strict\n"
                "    phone_number_id: \"999\"\n"
                "    access_token: \"%s\"\n"
                "    app_secret: other-secret\n"
                "    verify_token: v2\n"
                "    api_url: http://127.0.0.1:%d\n"
                "  - instance: pool\n"
                "    phone_number_id: \"777\"\n"
                "    access_token: \"%s\"\n"
                "    app_secret: pool-secret\n"
                "    verify_token: v3\n"
                "    api_url: http://127.0.0.1:%d\n"
                "    window: {enforce: false}\n"
            ) % (PNID, TOKEN, SECRET, VERIFY, cls.gport, TOKEN, cls.gport, TOKEN, cls.gport),
        })
        cls.n = Nexo(config_dir=cls.cfg).start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and cls.n.get_json("/readyz")[1].get("bus_mode") != "nats":
            time.sleep(0.05)
        cls.hook = "http://127.0.0.1:%d/webhooks/whatsapp/sales" % cls.n.ports["gateway"]
        cls.user = 15551230000

    @classmethod
    def tearDownClass(cls):
        try:
            code = cls.n.stop()
            cls.n.cleanup()
        finally:  # the peers go even when stop() reports a sanitizer finding
            for p in (cls.fake, cls.graph, cls.nats):
                p.kill()
                p.wait()
            shutil.rmtree(cls.tmp, ignore_errors=True)
        assert code == 0, code

    def setUp(self):
        http_json("http://127.0.0.1:%d/_reset" % self.fport, {})
        http_json("http://127.0.0.1:%d/_reset" % self.gport, {})
        WhatsApp.user += 1
        self.me = str(WhatsApp.user)  # a fresh sender per test

    # --- helpers ---
    def webhook(self, messages=None, statuses=None, **kw):
        req = {"url": self.hook, "app_secret": SECRET, "phone_number_id": PNID,
               "messages": messages, "statuses": statuses}
        req.update(kw)
        return http_json("http://127.0.0.1:%d/_webhook" % self.gport, req)

    def sends(self, to=None):
        reqs = http_json("http://127.0.0.1:%d/_requests" % self.gport)
        return [r for r in reqs if to is None or (r["body"] or {}).get("to") == to]

    def wait_sends(self, to, count, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.sends(to)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        self.fail("%d of %d sends to %s; log:\n%s" % (len(self.sends(to)), count, to, self.n.read_log()[-4000:]))

    def llm_requests(self):
        return http_json("http://127.0.0.1:%d/_requests" % self.fport)

    def publish(self, payload, instance="sales"):
        subject = "plugin.outbound.whatsapp." + instance
        c = NatsConn(self.nport)
        c.pub(subject, envelope(subject, payload))
        c.s.sendall(b"PING\r\n")
        while c.line() != b"PONG":
            pass
        c.s.close()

    def ledger(self, sql, *args):
        """Rows from nexo's ledger (read-only; the store runs in WAL mode)."""
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(self.n.data_dir, "nexo.db"), uri=True,
                             timeout=10)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def wait_ledger(self, sql, *args, want=1, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.ledger(sql, *args)
            if len(rows) >= want:
                return rows
            time.sleep(0.05)
        self.fail("ledger: %r gave %r" % (sql, self.ledger(sql, *args)))

    def metric(self, pattern):
        _, body, _ = self.n.request("GET", "/metrics", listener="metrics",
                                    headers={"Authorization": "Bearer gateway-bearer-token"})
        m = re.search(pattern + r" (\d+)", body.decode())
        return int(m.group(1)) if m else 0

    def quiet(self, seconds=1.0):
        time.sleep(seconds)  # lets a wrong second reply show up before "nothing more" is checked

    # --- tests ---
    def test_verification_handshake(self):
        s, body, _ = self.n.request("GET", "/webhooks/whatsapp/sales?hub.mode=subscribe&hub.verify_token=%s"
                                           "&hub.challenge=1158201444" % VERIFY)
        self.assertEqual((s, body), (200, b"1158201444"))
        s, _, _ = self.n.request("GET", "/webhooks/whatsapp/sales?hub.mode=subscribe&hub.verify_token=nope"
                                        "&hub.challenge=1")
        self.assertEqual(s, 403)
        s, _, _ = self.n.request("GET", "/webhooks/whatsapp/sales?hub.mode=unsubscribe&hub.verify_token=%s"
                                        "&hub.challenge=1" % VERIFY)
        self.assertEqual(s, 403)
        s, _, _ = self.n.request("GET", "/webhooks/whatsapp/sales")
        self.assertEqual(s, 403)
        s, _, _ = self.n.request("GET", "/webhooks/whatsapp/nobody?hub.mode=subscribe")
        self.assertEqual(s, 404)
        s, _, _ = self.n.request("GET", "/webhooks/whatsapp?hub.mode=subscribe")  # no unnamed instance
        self.assertEqual(s, 404)

    def test_webhooks_need_no_bearer_token_but_the_api_does(self):
        self.assertEqual(self.n.request("GET", "/v1/models")[0], 401)
        s, body, _ = self.n.request("GET", "/webhooks/whatsapp/sales?hub.mode=subscribe&hub.verify_token=%s"
                                           "&hub.challenge=7" % VERIFY)
        self.assertEqual((s, body), (200, b"7"))
        # A bearer token does not stand in for the signature.
        s, _, _ = self.n.request("POST", "/webhooks/whatsapp/sales", body=b"{}",
                                 headers={"Authorization": "Bearer gateway-bearer-token"})
        self.assertEqual(s, 401)
        s, _, _ = self.n.request("POST", "/webhooks/whatsapp/sales", body=b"x" * (1024 * 1024 + 1),
                                 headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
        self.assertEqual(s, 413)

    def test_a_signed_webhook_is_answered_exactly_once(self):
        script(self.fport, [{"text": "hello Ana"}])
        r = self.webhook([{"from": self.me, "text": "hola", "name": "Ana"}])
        self.assertEqual(r["status"], 200, r)
        sent = self.wait_sends(self.me, 1)
        self.quiet()
        sent = self.sends(self.me)
        self.assertEqual(len(sent), 1)
        self.assertTrue(sent[0]["auth_ok"])
        self.assertEqual(sent[0]["path"], "/v21.0/%s/messages" % PNID)
        self.assertEqual(sent[0]["status"], 200)
        self.assertEqual(sent[0]["body"], {
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": self.me, "type": "text",
            "text": {"preview_url": False, "body": "hello Ana"}, "context": {"message_id": r["ids"][0]}})
        asked = [q["body"]["messages"][-1]["content"][0]["text"] for q in self.llm_requests()]
        self.assertEqual(asked, ["hola"])
        # The ledger has the event under its wamid, and the reply marked sent with Graph's wamid.
        rows = self.ledger("SELECT instance FROM ledger_inbound WHERE channel = 'whatsapp' AND event_key = ?",
                           "wamid:" + r["ids"][0])
        self.assertEqual(rows, [("sales",)])
        rows = self.wait_ledger("SELECT state, provider_id FROM ledger_outbound WHERE channel = 'whatsapp' "
                                "AND provider_id = ?", sent[0]["wamid"])
        self.assertEqual(rows, [("sent", sent[0]["wamid"])])

    def test_markdown_goes_out_as_whatsapp_formatting(self):
        script(self.fport, [{"text": "**bold**, _it_, ~~gone~~, `x = 1` and [docs](https://ex.com/a)\n"
                                     "- one\n- two"}])
        self.webhook([{"from": self.me, "text": "format please"}])
        sent = self.wait_sends(self.me, 1)
        self.assertEqual(sent[0]["body"]["text"]["body"],
                         "*bold*, _it_, ~gone~, `x = 1` and docs (https://ex.com/a)\n\u2022 one\n\u2022 two")

    def test_a_bad_signature_is_401_and_nothing_happens(self):
        script(self.fport, [{"text": "must not be sent"}])
        r = self.webhook([{"from": self.me, "text": "forged"}], bad_signature=True)
        self.assertEqual(r["status"], 401)
        r = self.webhook([{"from": self.me, "text": "unsigned"}], signature="")
        self.assertEqual(r["status"], 401)
        r = self.webhook([{"from": self.me, "text": "junk"}], signature="sha256=zz")
        self.assertEqual(r["status"], 401)
        r = self.webhook(raw="not json at all", signature="sha256=" + "0" * 64)
        self.assertEqual(r["status"], 401)  # refused before the body is parsed
        self.quiet()
        self.assertEqual(self.sends(self.me), [])
        self.assertEqual(self.llm_requests(), [])
        self.assertEqual(self.ledger("SELECT count(*) FROM ledger_inbound WHERE envelope LIKE ?",
                                     "%" + self.me + "%"), [(0,)])
        self.n.wait_log(r"webhook from 127\.0\.0\.1:\d+ refused: wrong X-Hub-Signature-256")
        self.n.wait_log(r"refused: no X-Hub-Signature-256")

    def test_a_replayed_webhook_makes_no_second_reply(self):
        script(self.fport, [{"text": "only once"}, {"text": "twice!"}])
        wamid = "wamid.HBgLREPLAY%s" % self.me
        first = self.webhook([{"from": self.me, "id": wamid, "text": "once"}])
        self.assertEqual(first["status"], 200)
        self.wait_sends(self.me, 1)
        dups = self.metric(r'nexo_ledger_duplicates_total\{channel="whatsapp[^"]*"\}')
        again = self.webhook(raw=first["payload"])  # Meta delivers the same notification again
        self.assertEqual(again["status"], 200)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and \
                self.metric(r'nexo_ledger_duplicates_total\{channel="whatsapp[^"]*"\}') == dups:
            time.sleep(0.05)
        self.assertEqual(self.metric(r'nexo_ledger_duplicates_total\{channel="whatsapp[^"]*"\}'), dups + 1)
        self.quiet(1.5)
        self.assertEqual([s["body"]["text"]["body"] for s in self.sends(self.me)], ["only once"])
        self.assertEqual(len(self.llm_requests()), 1)

    def test_buttons_and_a_template_go_out_in_the_documented_json(self):
        script(self.fport, [{"text": "hi"}])
        self.webhook([{"from": self.me, "text": "start"}])  # opens the 24-hour window
        self.wait_sends(self.me, 1)
        self.publish({"to": self.me, "text": "Confirm the order?",
                      "buttons": [[{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]]})
        self.publish({"to": self.me, "text": "",
                      "template": {"name": "order_update", "language": {"code": "es"},
                                   "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}]}})
        self.publish({"to": self.me, "text": "Pick a size",
                      "list": {"button": "Sizes", "sections": [{"title": "All", "rows": [
                          {"id": "s", "title": "Small"}, {"id": "l", "title": "Large", "description": "big"}]}]}})
        sent = self.wait_sends(self.me, 4)
        base = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": self.me}
        self.assertEqual(sent[1]["body"], dict(base, type="interactive", interactive={
            "type": "button", "body": {"text": "Confirm the order?"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}},
                                   {"type": "reply", "reply": {"id": "no", "title": "No"}}]}}))
        self.assertEqual(sent[2]["body"], dict(base, type="template", template={
            "name": "order_update", "language": {"code": "es"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}]}))
        self.assertEqual(sent[3]["body"], dict(base, type="interactive", interactive={
            "type": "list", "body": {"text": "Pick a size"},
            "action": {"button": "Sizes", "sections": [{"title": "All", "rows": [
                {"id": "s", "title": "Small"}, {"id": "l", "title": "Large", "description": "big"}]}]}}))
        self.assertTrue(all(s["status"] == 200 for s in sent))
        # A press of a reply button comes back as a "button" message with the id.
        script(self.fport, [{"text": "noted"}])
        self.webhook([{"from": self.me, "kind": "button_reply", "reply_id": "yes", "text": "Yes"}])
        self.wait_sends(self.me, 5)
        asked = self.llm_requests()[-1]["body"]["messages"][-1]["content"][0]["text"]
        self.assertIn("yes", asked)

    def test_outside_the_window_the_template_is_sent(self):
        self.publish({"to": self.me, "text": "a reminder nobody asked for"})
        sent = self.wait_sends(self.me, 1)
        self.assertEqual(sent[0]["body"], {
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": self.me,
            "type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}})
        self.n.wait_log(r"%s is outside the customer service window: sending template \"hello_world\"" % self.me)
        # Without a template configured, the send fails with a clear reason and nothing goes out.
        self.publish({"to": self.me, "text": "no template here"}, instance="strict")
        self.n.wait_log(r"whatsapp\.strict: message to %s not sent: outside the 24-hour customer service window"
                        % self.me)
        self.quiet(0.5)
        self.assertEqual(len(self.sends(self.me)), 1)

    def test_rate_limits_are_retried_and_long_text_is_split(self):
        http_json("http://127.0.0.1:%d/_fail" % self.gport, [{"status": 429, "code": 130429,
                                                               "message": "Rate limit hit"}])
        text = " ".join("word%d" % i for i in range(700))  # ~5.6 KB: two requests
        script(self.fport, [{"text": text}])
        self.webhook([{"from": self.me, "text": "long please"}])
        sent = self.wait_sends(self.me, 3, timeout=30)
        self.assertEqual([s["status"] for s in sent], [429, 200, 200])
        bodies = [s["body"]["text"]["body"] for s in sent[1:]]
        self.assertTrue(all(len(b) <= 4096 for b in bodies))
        self.assertEqual(" ".join(bodies).split(), text.split())
        self.n.wait_log(r"Graph error 130429 .*Rate limit hit.*rate limit reached.*retry 1 in 1000 ms")

    def test_statuses_and_media_are_accepted(self):
        script(self.fport, [{"text": "nice picture"}])
        r = self.webhook([{"from": self.me, "kind": "image", "media_id": "9988", "text": "my cat"}],
                         statuses=[{"id": "wamid.HBgLstatus1", "status": "delivered"},
                                   {"id": "wamid.HBgLstatus2", "status": "failed", "error_code": 131026}])
        self.assertEqual(r["status"], 200)
        self.wait_sends(self.me, 1)
        blocks = self.llm_requests()[-1]["body"]["messages"][-1]["content"]
        # media id 9988 is unknown to Graph: the agent hears of the image, not downloaded
        self.assertEqual([b["type"] for b in blocks], ["text", "text"], blocks)
        self.assertIn("not downloaded", blocks[0]["text"])
        self.assertEqual(blocks[1]["text"], "my cat")
        self.n.wait_log(r"message wamid\.HBgLstatus2 to \d+ failed at WhatsApp: 131026")

    def add_media(self, media_id, data, mime, sha256=None):
        http_json("http://127.0.0.1:%d/_media" % self.gport,
                  {"id": media_id, "mime_type": mime, "data_b64": base64.b64encode(data).decode(),
                   "sha256": sha256})

    def test_an_image_reaches_the_model_as_an_image_block(self):
        png = PNG_1X1
        self.add_media("77001", png, "image/png")
        script(self.fport, [{"text": "a red dot"}])
        r = self.webhook([{"from": self.me, "kind": "image", "media_id": "77001", "text": "what is this?",
                           "mime_type": "image/png"}])
        self.assertEqual(r["status"], 200, r)
        self.wait_sends(self.me, 1)
        user = self.llm_requests()[-1]["body"]["messages"][-1]
        images = [b for b in user["content"] if b["type"] == "image"]
        self.assertEqual(len(images), 1, user)
        self.assertEqual(images[0]["source"]["type"], "base64")
        self.assertEqual(images[0]["source"]["media_type"], "image/png")
        self.assertEqual(base64.b64decode(images[0]["source"]["data"]), png)
        self.assertEqual(user["content"][-1], {"type": "text", "text": "what is this?"})
        # both Graph calls carried the token; the file is kept under the data directory's media/
        got = http_json("http://127.0.0.1:%d/_media_requests" % self.gport)
        self.assertEqual([(g["path"].split("/")[-1], g["auth_ok"], g["status"]) for g in got],
                         [("77001", True, 200), ("77001", True, 200)])
        d = os.path.join(self.n.data_dir, "media", "whatsapp", "sales")
        files = [f for f in os.listdir(d) if f.startswith(r["ids"][0].replace(".", "_")[:10])]
        self.assertEqual(len(files), 1, os.listdir(d))
        with open(os.path.join(d, files[0]), "rb") as f:
            self.assertEqual(f.read(), png)
        self.assertEqual(os.stat(os.path.join(d, files[0])).st_mode & 0o777, 0o600)
        # history keeps the path, not the bytes: a second turn sends the image again from the file
        script(self.fport, [{"text": "still a red dot"}])
        self.webhook([{"from": self.me, "text": "and now?"}])
        self.wait_sends(self.me, 2)
        msgs = self.llm_requests()[-1]["body"]["messages"]
        self.assertTrue(any(b.get("type") == "image" for m in msgs if m["role"] == "user"
                            for b in m["content"] if isinstance(b, dict)), msgs)
        rows = self.ledger("SELECT length(content) FROM messages WHERE content LIKE '%nexo_media%'")
        self.assertTrue(rows and all(n < 4096 for (n,) in rows), rows)

    def test_a_file_with_the_wrong_sha256_is_not_kept(self):
        self.add_media("77002", b"%PDF-1.4 not really", "application/pdf", sha256="0" * 64)
        script(self.fport, [{"text": "ok"}])
        r = self.webhook([{"from": self.me, "kind": "document", "media_id": "77002", "filename": "q3.pdf"}])
        self.assertEqual(r["status"], 200, r)
        self.wait_sends(self.me, 1)
        blocks = self.llm_requests()[-1]["body"]["messages"][-1]["content"]
        self.assertIn("q3.pdf", blocks[0]["text"])
        self.assertIn("not downloaded", blocks[0]["text"])
        self.n.wait_log(r"document 77002 of message \S+ not downloaded: the file's SHA-256 does not match")

    def in_states(self, ids):
        return [self.ledger("SELECT state FROM ledger_inbound WHERE event_key = ?", "wamid:" + i)[0][0]
                for i in ids]

    def wait_llm(self, count, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.llm_requests()) < count:
            time.sleep(0.05)
        self.assertGreaterEqual(len(self.llm_requests()), count)

    def test_an_interrupted_turn_is_settled_cancelled_not_left_routed(self):
        script(self.fport, [{"text": "too late", "hang_ms": 4000}, {"text": "fresh answer"}])
        hook = self.hook.replace("/sales", "/strict")
        a = self.webhook([{"from": self.me, "text": "first"}], url=hook, app_secret="other-secret",
                         phone_number_id="999")
        self.assertEqual(a["status"], 200, a)
        self.wait_llm(1)
        b = self.webhook([{"from": self.me, "text": "never mind"}], url=hook, app_secret="other-secret",
                         phone_number_id="999")
        self.assertEqual(b["status"], 200, b)
        sent = self.wait_sends(self.me, 1)
        self.assertEqual(sent[0]["body"]["text"]["body"], "fresh answer")
        self.wait_ledger("SELECT 1 FROM ledger_inbound WHERE event_key = ? AND state = 'cancelled'",
                         "wamid:" + a["ids"][0])
        self.assertEqual(self.in_states([a["ids"][0], b["ids"][0]]), ["cancelled", "answered"])
        self.quiet()
        self.assertEqual(len(self.sends(self.me)), 1)

    def test_collected_messages_get_one_reply_and_are_all_answered(self):
        script(self.fport, [{"text": "one", "hold": "one"}, {"text": "two and three"}])
        kw = {"url": self.hook.replace("/sales", "/pool"), "app_secret": "pool-secret",
              "phone_number_id": "777"}
        a = self.webhook([{"from": self.me, "text": "one"}], **kw)
        self.wait_llm(1)
        b = self.webhook([{"from": self.me, "text": "two"}, {"from": self.me, "text": "three"}], **kw)
        self.assertEqual((a["status"], b["status"]), (200, 200))
        deadline = time.monotonic() + 20  # "two" and "three" wait behind "one" before it is answered
        while self.metric("nexo_agent_turns_in_flight") < 3:
            self.assertLess(time.monotonic(), deadline, "two and three never queued")
            time.sleep(0.02)
        release(self.fport, "one")
        self.wait_sends(self.me, 2)
        self.quiet()
        self.assertEqual([s["body"]["text"]["body"] for s in self.sends(self.me)], ["one", "two and three"])
        ids = [a["ids"][0]] + b["ids"]
        self.wait_ledger("SELECT 1 FROM ledger_inbound WHERE event_key = ? AND state = 'answered'",
                         "wamid:" + ids[2])
        self.assertEqual(self.in_states(ids), ["answered"] * 3)

    def test_the_access_token_is_never_logged(self):
        self.assertNotIn(TOKEN, self.n.read_log())
        self.assertNotIn(SECRET, self.n.read_log())


if __name__ == "__main__":
    main()
