"""Telegram in webhook mode: updates are POSTed to /webhooks/telegram/<instance> on the gateway
listener with X-Telegram-Bot-Api-Secret-Token, as Telegram does after setWebhook; replies go out
through the telegram-test-api emulator (pinned npm peer), which records them. nexo must not poll
getUpdates in this mode."""
import http.client
import http.server
import json
import os
import sqlite3
import threading
import tempfile
import time
import unittest

from nexo_harness import Nexo, main, write_config
from peers import TgPeers, fake_requests, llm_yaml, poll, post_json, script

TOKEN = "5550001:WEBHOOK-TOKEN"
SECRET = "s3cr3t_Token-for-webhooks"
ALICE = 2001


def bot_api(answer):
    """A Bot API on a free port: answer(path, body) gives the JSON to send for each call (GET or
    POST). Returns the server (serving in a thread; shutdown() and server_close() when done)."""
    class BotApi(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            data = json.dumps(answer(self.path, json.loads(body or b"null"))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST

    api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BotApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    return api


class TelegramWebhook(TgPeers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_peers()
        write_config(cls.cfg.name, {
            "llm.yaml": llm_yaml(cls.fport),
            "agents.yaml": "agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                           "    inbound_bindings: [{plugin: telegram, instance: hook_bot}]\n",
            "plugins/telegram.yaml": ("telegram:\n"
                                      "  - instance: hook_bot\n"
                                      "    token: \"%s\"\n"
                                      "    api_url: %s\n"
                                      "    typing: false\n"
                                      "    polling: {enabled: true, interval_ms: 100}\n"
                                      "    webhook: {enabled: true, secret_token: %s}\n")
                                     % (TOKEN, cls.tg.url, SECRET),
        })
        cls.n = Nexo(config_dir=cls.cfg.name).start()
        cls.path = "/webhooks/telegram/hook_bot"
        cls.update_id = 900000

    @classmethod
    def tearDownClass(cls):
        cls.stop_peers()

    def update(self, chat, text):
        TelegramWebhook.update_id += 1
        return {"update_id": self.update_id, "message": {
            "message_id": self.update_id - 899000, "date": int(time.time()), "text": text,
            "from": {"id": chat, "is_bot": False, "first_name": "A"},
            "chat": {"id": chat, "type": "private", "first_name": "A"}}}

    def post(self, body, secret=SECRET):
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.n.request("POST", self.path, body=data, headers=headers)

    def photo_update(self, chat, file_id):
        u = self.update(chat, None)
        del u["message"]["text"]
        u["message"]["photo"] = [{"file_id": file_id, "file_unique_id": "u" + file_id,
                                  "width": 90, "height": 60, "file_size": 700}]
        return u

    def post_in_thread(self, body, nexo=None):
        """POSTs body to nexo's webhook from a thread; returns (thread, result list) where the
        result is (status, body) or the exception the connection ended with."""
        out = []

        def run():
            try:
                headers = {"Content-Type": "application/json",
                           "X-Telegram-Bot-Api-Secret-Token": SECRET}
                st, data, _ = (nexo or self.n).request("POST", self.path, body=json.dumps(body).encode(),
                                                       headers=headers, timeout=30)
                out.append((st, data))
            except (OSError, http.client.HTTPException) as e:
                out.append(e)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t, out

    def control(self, **kw):
        """POST /_control to the emulator (hold_files, release_files, hold_text); returns its
        answer, with files_held and sends_held."""
        return post_json(self.tg.url + "/_control", dict(kw, token=TOKEN))

    def files(self, **kw):
        return self.control(**kw)["files_held"]

    def own_nexo(self, cfg):
        """A nexo of this test's own on config dir cfg, as the class's (typing off, no polling)."""
        write_config(cfg, {
            "llm.yaml": llm_yaml(self.fport),
            "agents.yaml": "agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                           "    inbound_bindings: [{plugin: telegram, instance: hook_bot}]\n",
            "plugins/telegram.yaml": ("telegram:\n  - instance: hook_bot\n    token: \"%s\"\n"
                                      "    api_url: %s\n    typing: false\n"
                                      "    webhook: {enabled: true, secret_token: %s}\n")
                                     % (TOKEN, self.tg.url, SECRET)})
        return Nexo(config_dir=cfg).start()

    @staticmethod
    def kill_and_restart(n):
        """kill -9, then start again on the same data directory."""
        n.proc.kill()
        n.proc.wait()
        n.log.close()
        n.notify.close()
        os.unlink(os.path.join(n.tmp, "notify.sock"))
        n.start()

    def bot_replies(self, chat):
        """Every reply the bot sent to chat so far (the emulator hands each out once)."""
        return self.tg.replies(TOKEN, chat)

    def llm_requests(self):
        return fake_requests(self.fport)

    def test_a_group_is_answered_when_the_bot_is_mentioned_or_replied_to(self):
        """As by polling: the bot's @username (getMe, at start), a reply to one of its messages or
        a command naming no bot addresses it in a group; other group messages are not answered."""
        self.n.wait_log(r"hook_bot: the bot is @TestNameBot")
        script(self.fport, [{"text": "the menu"}, {"text": "you are welcome"}, {"text": "soup, bread"}])
        group = -100777

        def say(user, text, **extra):
            u = self.update(user, text)
            u["message"]["chat"] = {"id": group, "type": "supergroup", "title": "team"}
            u["message"].update(extra)
            status, _, _ = self.post(u)
            self.assertEqual(status, 200)

        say(ALICE + 50, "lunch anyone?")
        say(ALICE + 50, "@TestNameBot what is on the menu?",
            entities=[{"type": "mention", "offset": 0, "length": 12}])
        self.tg.wait_replies(TOKEN, group, 1)
        say(ALICE + 51, "thanks", reply_to_message={
            "message_id": 1, "date": int(time.time()), "text": "the menu",
            "from": {"id": 666, "is_bot": True, "first_name": "Test", "username": "TestNameBot"},
            "chat": {"id": group, "type": "supergroup", "title": "team"}})
        self.tg.wait_replies(TOKEN, group, 2)
        # a command that names another bot is not for this one; one that names none is
        say(ALICE + 52, "/menu@OtherBot", entities=[{"type": "bot_command", "offset": 0, "length": 14}])
        say(ALICE + 52, "/menu", entities=[{"type": "bot_command", "offset": 0, "length": 5}])
        replies = self.tg.wait_replies(TOKEN, group, 3)
        self.assertEqual([m["text"] for m in replies], ["the menu", "you are welcome", "soup, bread"])
        asked = [r["body"]["messages"][-1]["content"][0]["text"] for r in self.llm_requests()]
        self.assertEqual(asked, ["@TestNameBot what is on the menu?", "thanks", "/menu"])

    def test_a_file_too_large_is_noted_once_when_delivered_again(self):
        u = self.update(ALICE + 40, None)
        del u["message"]["text"]
        u["message"]["document"] = {"file_id": "big1", "file_unique_id": "ubig1", "file_name": "a.pdf",
                                    "file_size": 50 * 1024 * 1024}
        for _ in range(3):  # Telegram delivers the same update again
            status, _, _ = self.post(u)
            self.assertEqual(status, 200)
        self.tg.wait_replies(TOKEN, ALICE + 40, 1)
        u2 = self.update(ALICE + 40, "and this?")  # then a message after it, answered
        script(self.fport, [{"text": "ok"}])
        self.assertEqual(self.post(u2)[0], 200)
        texts = [m["text"] for m in self.tg.wait_replies(TOKEN, ALICE + 40, 2)]
        self.assertEqual(len(texts), 2, texts)
        self.assertIn("too large", texts[0])
        self.assertEqual(texts[1], "ok")

    def test_wrong_or_missing_secret_is_401_and_nothing_happens(self):
        script(self.fport, [{"text": "must not be sent"}])
        for secret in (None, "", "wrong", SECRET + "x", SECRET[:-1]):
            status, _, _ = self.post(self.update(ALICE + 1, "forged"), secret=secret)
            self.assertEqual(status, 401, secret)
        status, _, _ = self.post(b"not json", secret="nope")
        self.assertEqual(status, 401)  # refused before parsing
        time.sleep(1.0)  # a wrong reply would have shown up by now
        self.assertEqual(self.llm_requests(), [])
        self.assertEqual(self.bot_replies(ALICE + 1), [])
        self.n.wait_log(r"hook_bot: webhook from 127\.0\.0\.1:\d+ refused: "
                        r"wrong X-Telegram-Bot-Api-Secret-Token")
        self.n.wait_log(r"refused: no X-Telegram-Bot-Api-Secret-Token")

    def test_right_secret_is_answered_once(self):
        script(self.fport, [{"text": "hello from the webhook"}])
        u = self.update(ALICE, "hi by webhook")
        status, body, _ = self.post(u)
        self.assertEqual((status, json.loads(body)), (200, {"ok": True}))
        poll(lambda: self.bot_replies(ALICE), 20)
        status, _, _ = self.post(u)  # Telegram delivers the same update again
        self.assertEqual(status, 200)
        time.sleep(1.0)
        self.assertEqual([m["text"] for m in self.bot_replies(ALICE)], ["hello from the webhook"])
        asked = [r["body"]["messages"][-1]["content"][0]["text"] for r in self.llm_requests()]
        self.assertEqual(asked, ["hi by webhook"])

    def test_a_photo_is_answered_after_its_download_and_others_wait_without_503(self):
        chat_photo, chat_text = ALICE + 10, ALICE + 11
        post_json(self.tg.url + "/_file", {"file_id": "WH-PHOTO", "size": 700})
        script(self.fport, [{"text": "seen"}, {"text": "seen"}])
        self.files(hold_files=1)
        photo, ptxt = self.post_in_thread(self.photo_update(chat_photo, "WH-PHOTO"))
        self.assertTrue(poll(lambda: self.files() == 1, 10), "the download never started")
        text, ttxt = self.post_in_thread(self.update(chat_text, "meanwhile"))
        time.sleep(0.5)  # a premature answer would have come by now
        self.assertEqual((ptxt, ttxt), ([], []), "answered while the photo was still downloading")
        self.files(release_files=True)
        photo.join(20)
        text.join(20)
        self.assertEqual(ptxt, [(200, b'{"ok":true}')])
        self.assertEqual(ttxt, [(200, b'{"ok":true}')])
        self.assertEqual([m["text"] for m in self.tg.wait_replies(TOKEN, chat_photo, 1)], ["seen"])
        self.assertEqual([m["text"] for m in self.tg.wait_replies(TOKEN, chat_text, 1)], ["seen"])
        d = os.path.join(self.n.data_dir, "media", "telegram", "hook_bot")
        self.assertEqual([f for f in os.listdir(d) if f.endswith("-photo.jpg")],
                         ["%d-photo.jpg" % (self.update_id - 1)])

    def test_a_crash_during_the_download_leaves_the_update_unanswered_then_it_is_handled_once(self):
        chat = ALICE + 20
        post_json(self.tg.url + "/_file", {"file_id": "WH-CRASH", "size": 700})
        with tempfile.TemporaryDirectory() as cfg:
            n = self.own_nexo(cfg)
            try:
                u = self.photo_update(chat, "WH-CRASH")
                self.files(hold_files=1)
                t, res = self.post_in_thread(u, nexo=n)
                self.assertTrue(poll(lambda: self.files() == 1, 10), "the download never started")
                script(self.fport, [{"text": "once"}])
                n.proc.kill()  # kill -9 in the middle of the download
                t.join(10)
                self.assertEqual(len(res), 1)
                self.assertIsInstance(res[0], Exception, "answered before the update was recorded")
                self.assertTrue(poll(lambda: self.files() == 0, 10))
                # the same data directory again; Telegram delivers the unanswered update again
                self.kill_and_restart(n)
                for _ in range(2):  # and once more, as if our 200 had been lost
                    t, res = self.post_in_thread(u, nexo=n)
                    t.join(20)
                    self.assertEqual(res, [(200, b'{"ok":true}')])
                self.assertEqual([m["text"] for m in self.tg.wait_replies(TOKEN, chat, 1)], ["once"])
                time.sleep(1.0)  # a second reply would have come by now
                self.assertEqual([m["text"] for m in self.bot_replies(chat)], ["once"])
                self.assertEqual(len(self.llm_requests()), 1)
                self.assertEqual(n.stop(), 0)
            finally:
                n.cleanup()

    def test_a_crash_between_chunks_sends_only_the_chunks_not_delivered(self):
        chat = ALICE + 30
        parts = ["PART-%s %s." % (c, c.lower() * 3000) for c in "ABC"]  # 3 chunks of one reply
        script(self.fport, [{"text": "\n\n".join(parts)}])
        with tempfile.TemporaryDirectory() as cfg:
            n = self.own_nexo(cfg)
            try:
                self.control(hold_text="PART-B")
                t, res = self.post_in_thread(self.update(chat, "tell me a long story"), nexo=n)
                t.join(20)
                self.assertEqual(res, [(200, b'{"ok":true}')])
                self.assertTrue(poll(lambda: self.control()["sends_held"] == 1, 20), "no second chunk")
                db = sqlite3.connect(os.path.join(n.data_dir, "nexo.db"))
                try:  # the first chunk's delivery is recorded (a few ms of group commit)
                    self.assertTrue(poll(lambda: db.execute(
                        "SELECT steps_sent FROM ledger_outbound WHERE state = 'pending'").fetchall()
                        == [(1,)], 10))
                finally:
                    db.close()
                self.kill_and_restart(n)  # kill -9 while the second chunk is being sent
                got = self.tg.wait_replies(TOKEN, chat, 3)
                time.sleep(1.0)  # a repeated chunk would have come by now
                texts = [m["text"] for m in self.bot_replies(chat)]
                self.assertEqual([x.split()[0] for x in texts], ["PART-A", "PART-B", "PART-C"], texts)
                self.assertEqual(texts, parts)
                self.assertEqual(len(got), 3)
                self.assertEqual(len(self.llm_requests()), 1)
                n.wait_log(r"reply \S+ resumes after its 1 delivered step")
                self.assertEqual(n.stop(), 0)
            finally:
                n.cleanup()

    def test_bad_bodies_and_methods(self):
        self.assertEqual(self.post(b"[1,2]")[0], 400)
        self.assertEqual(self.post({"no_update_id": 1})[0], 400)
        self.assertEqual(self.n.request("GET", self.path)[0], 405)
        self.assertEqual(self.n.request("POST", "/webhooks/telegram/other_bot", body=b"{}")[0], 404)

    def test_set_webhook_is_called_and_get_updates_never(self):
        calls = []

        def answer(path, body):
            calls.append((path, body))
            return {"ok": True, "result": True, "description": "Webhook was set"}

        api = bot_api(answer)
        with tempfile.TemporaryDirectory() as cfg:
            write_config(cfg, {"plugins/telegram.yaml": (
                "telegram:\n  - instance: seturl\n    token: \"%s\"\n    api_url: http://127.0.0.1:%d\n"
                "    polling: {interval_ms: 100}\n"
                "    webhook: {enabled: true, secret_token: %s,\n"
                "              url: \"https://bots.example/webhooks/telegram/seturl\"}\n"
            ) % (TOKEN, api.server_address[1], SECRET)})
            n = Nexo(config_dir=cfg).start()
            try:
                n.wait_log(r"seturl: setWebhook accepted")
                time.sleep(0.5)  # several polling intervals: none may happen
                calls.sort(key=lambda c: c[0])  # getMe (the bot's name, for group mentions) too
                self.assertEqual(calls, [("/bot%s/getMe" % TOKEN, None), ("/bot%s/setWebhook" % TOKEN, {
                    "url": "https://bots.example/webhooks/telegram/seturl", "secret_token": SECRET,
                    "allowed_updates": ["message", "callback_query"]})])
                self.assertEqual(n.stop(), 0)
            finally:
                n.cleanup()
                api.shutdown()
                api.server_close()

    def test_a_group_update_before_get_me_answers_waits_for_the_bots_name(self):
        """A webhook update can come before getMe answers at start: it waits for the bot's name
        instead of being gated without it (a mention of the bot dropped as "not mentioned")."""
        release, sent = threading.Event(), []

        def answer(path, body):
            if path.endswith("/getMe"):
                release.wait(20)
                return {"ok": True, "result": {"id": 777, "is_bot": True, "first_name": "Held",
                                               "username": "HeldBot"}}
            sent.append((path.rsplit("/", 1)[-1], body))
            return {"ok": True, "result": {"message_id": len(sent), "date": 0, "chat": {"id": 1, "type": "private"}}}

        api = bot_api(answer)
        script(self.fport, [{"text": "held answer"}])
        with tempfile.TemporaryDirectory() as cfg:
            write_config(cfg, {
                "llm.yaml": llm_yaml(self.fport),
                "agents.yaml": "agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                               "    inbound_bindings: [{plugin: telegram, instance: held}]\n",
                "plugins/telegram.yaml": (
                    "telegram:\n  - instance: held\n    token: \"%s\"\n    api_url: http://127.0.0.1:%d\n"
                    "    typing: false\n    webhook: {enabled: true, secret_token: %s}\n"
                ) % (TOKEN, api.server_address[1], SECRET)})
            n = Nexo(config_dir=cfg).start()
            try:
                u = self.update(ALICE + 60, "@HeldBot are you there?")
                u["message"]["chat"] = {"id": -100888, "type": "supergroup", "title": "t"}
                u["message"]["entities"] = [{"type": "mention", "offset": 0, "length": 8}]
                result = {}
                t = threading.Thread(target=lambda: result.update(r=n.request(
                    "POST", "/webhooks/telegram/held", body=json.dumps(u).encode(),
                    headers={"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET})))
                t.start()
                n.wait_log(r"held: webhook update \d+ waits for the bot's name")
                release.set()
                t.join(20)
                self.assertEqual(result["r"][0], 200)
                n.wait_log(r"held: the bot is @HeldBot")
                poll(lambda: [c for c in sent if c[0] == "sendMessage"], 20)
                self.assertEqual([c[1]["text"] for c in sent if c[0] == "sendMessage"], ["held answer"])
                self.assertEqual(n.stop(), 0)
            finally:
                release.set()
                n.cleanup()
                api.shutdown()
                api.server_close()

    def test_the_outbox_is_made_at_start(self):
        d = os.path.join(self.n.data_dir, "media", "outbox")
        self.assertTrue(os.path.isdir(d))
        self.assertEqual(os.stat(d).st_mode & 0o777, 0o700)

    def test_no_polling_in_webhook_mode(self):
        log = self.n.read_log()
        self.assertIn("webhook mode (no polling)", log)
        self.assertNotIn("polling from update", log)
        self.assertNotIn(TOKEN, log)
        self.assertNotIn(SECRET, log)


if __name__ == "__main__":
    main()
