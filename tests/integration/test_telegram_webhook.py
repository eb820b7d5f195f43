"""Telegram in webhook mode: updates are POSTed to /webhooks/telegram/<instance> on the gateway
listener with X-Telegram-Bot-Api-Secret-Token, as Telegram does after setWebhook; replies go out
through the telegram-test-api emulator (pinned npm peer), which records them. nexo must not poll
getUpdates in this mode."""
import http.server
import json
import threading
import tempfile
import time
import unittest

from nexo_harness import Nexo, main, write_config
from peers import TgPeers, fake_requests, llm_yaml, poll, script

TOKEN = "5550001:WEBHOOK-TOKEN"
SECRET = "s3cr3t_Token-for-webhooks"
ALICE = 2001


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

    def bot_replies(self, chat):
        """Every reply the bot sent to chat so far (the emulator hands each out once)."""
        return self.tg.replies(TOKEN, chat)

    def llm_requests(self):
        return fake_requests(self.fport)

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

    def test_bad_bodies_and_methods(self):
        self.assertEqual(self.post(b"[1,2]")[0], 400)
        self.assertEqual(self.post({"no_update_id": 1})[0], 400)
        self.assertEqual(self.n.request("GET", self.path)[0], 405)
        self.assertEqual(self.n.request("POST", "/webhooks/telegram/other_bot", body=b"{}")[0], 404)

    def test_set_webhook_is_called_and_get_updates_never(self):
        calls = []

        class BotApi(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                calls.append((self.path, json.loads(body or b"null")))
                data = b'{"ok":true,"result":true,"description":"Webhook was set"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

        api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BotApi)
        threading.Thread(target=api.serve_forever, daemon=True).start()
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
                self.assertEqual(calls, [("/bot%s/setWebhook" % TOKEN, {
                    "url": "https://bots.example/webhooks/telegram/seturl", "secret_token": SECRET,
                    "allowed_updates": ["message", "callback_query"]})])
                self.assertEqual(n.stop(), 0)
            finally:
                n.cleanup()
                api.shutdown()
                api.server_close()

    def test_no_polling_in_webhook_mode(self):
        log = self.n.read_log()
        self.assertIn("webhook mode (no polling)", log)
        self.assertNotIn("polling from update", log)
        self.assertNotIn(TOKEN, log)
        self.assertNotIn(SECRET, log)


if __name__ == "__main__":
    main()
