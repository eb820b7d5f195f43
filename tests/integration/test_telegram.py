"""The Telegram channel end to end: nexo long-polls the telegram-test-api emulator (pinned npm
peer, tests/tools/tg-server.js) for a bot bound to an agent answered by the fake provider.

The emulator ignores getUpdates' offset (it hands out each update once), so the bot reaches it
through OffsetProxy, which keeps what the real Bot API keeps: every update until a getUpdates
with a higher offset confirms it. A bot that forgot its offset over a restart would see its old
updates again there, as it would against api.telegram.org. The proxy can also answer sendMessage
with 429 retry_after, as the real API does under load."""
import base64
import http.server
import json
import os
import re
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

from nexo_harness import Nexo, main, write_config
from peers import TgPeers, fake_requests, fake_reset, post_json, release, script, stop_fake, tg_user, wait_for

ALICE, BOB, CAROL, DAVE, MALLORY = 1001, 1002, 1003, 1004, 666


class OffsetProxy:
    """Forwards to the emulator; getUpdates answers with offset semantics and records offsets."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.pending = {}  # token -> {update_id: update}
        self.offsets = {}  # token -> [offset asked, ...]
        self.seen = {}  # token -> every update_id handed out
        self.freeze_after = set()  # tokens whose polls are held once an update was handed out
        self.held = {}  # token -> Event releasing the held polls
        self.throttle = {}  # token -> how many sendMessage calls to answer 429 first
        self.sends = {}  # token -> monotonic times of sendMessage calls
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):
                pass

            def relay(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                u = urllib.parse.urlsplit(self.path)
                m = re.fullmatch(r"/bot([^/]+)/getUpdates", u.path)
                send = re.fullmatch(r"/bot([^/]+)/sendMessage", u.path)
                if send and proxy.throttled(send.group(1)):
                    status, data = 429, json.dumps({
                        "ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                        "parameters": {"retry_after": 1}}).encode()
                elif m:
                    out = proxy.get_updates(m.group(1), urllib.parse.parse_qs(u.query))
                    status, data = (200, json.dumps(out).encode()) if out else (502, b"{}")
                else:
                    req = urllib.request.Request(proxy.upstream + self.path, data=body, method=method)
                    if self.headers.get("Content-Type"):
                        req.add_header("Content-Type", self.headers["Content-Type"])
                    try:
                        with urllib.request.urlopen(req, timeout=10) as r:
                            status, data = r.status, r.read()
                    except urllib.error.HTTPError as e:
                        status, data = e.code, e.read()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the bot went away (a held poll cancelled by its shutdown)

            def do_GET(self):
                self.relay("GET")

            def do_POST(self):
                self.relay("POST")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def get_updates(self, token, query):
        with self.lock:
            ev = self.held.get(token)
        if ev:  # a poll that never reaches "Telegram": it confirms nothing
            ev.wait(30)
            return None
        offset = int(query.get("offset", ["0"])[0])
        with urllib.request.urlopen("%s/bot%s/getUpdates" % (self.upstream, token), timeout=10) as r:
            fresh = json.loads(r.read())["result"]
        with self.lock:
            box = self.pending.setdefault(token, {})
            for u in fresh:
                box[u["update_id"]] = u
                self.seen.setdefault(token, set()).add(u["update_id"])
            for uid in [k for k in box if k < offset]:  # confirmed: forgotten, as Telegram does
                del box[uid]
            self.offsets.setdefault(token, []).append(offset)
            result = [box[k] for k in sorted(box)]
            if result and token in self.freeze_after:
                self.freeze_after.discard(token)
                self.held[token] = threading.Event()
            return {"ok": True, "result": result}

    def throttled(self, token):
        with self.lock:
            self.sends.setdefault(token, []).append(time.monotonic())
            if self.throttle.get(token, 0) > 0:
                self.throttle[token] -= 1
                return True
            return False

    def release(self, token):
        with self.lock:
            ev = self.held.pop(token, None)
        if ev:
            ev.set()

    def last_seen(self, token):
        with self.lock:
            return max(self.seen.get(token, {0}))

    def offsets_for(self, token):
        with self.lock:
            return list(self.offsets.get(token, []))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Telegram(TgPeers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_peers()
        cls.proxy = OffsetProxy(cls.tg.url)
        cls.token = "123456:MAIN-TOKEN"
        cls.write_config(cls.cfg.name, cls.token)
        cls.n = Nexo(config_dir=cls.cfg.name).start()

    @classmethod
    def write_config(cls, root, token):
        write_config(root, {
            "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                        % cls.fport,
            "agents.yaml": "agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                           "    inbound_bindings: [{plugin: telegram, instance: kate_bot}]\n",
            "plugins/telegram.yaml": ("telegram:\n"
                                      "  - instance: kate_bot\n"
                                      "    token: \"%s\"\n"
                                      "    api_url: %s\n"
                                      "    polling: {enabled: true, interval_ms: 100}\n"
                                      "    allowlist: {chat_ids: [%d, %d, %d, %d]}\n")
                                     % (token, cls.proxy.url, ALICE, BOB, CAROL, DAVE),
        })

    @classmethod
    def tearDownClass(cls):
        try:
            cls.stop_peers()
        finally:
            cls.proxy.close()

    # --- the user's side of the emulator (the main bot unless token is given) ---
    def say(self, chat, text, token=None):
        self.tg.say(token or self.token, chat, text)

    def bot_replies(self, chat, token=None):
        """Every reply the bot sent to chat so far, in the order the emulator stored them."""
        return self.tg.replies(token or self.token, chat)

    def wait_replies(self, chat, count, token=None, timeout=20):
        return self.tg.wait_replies(token or self.token, chat, count, timeout, detail=self.log_tail)

    def log_tail(self):
        return "; log:\n" + self.n.read_log()[-4000:]

    def llm_requests(self):
        return fake_requests(self.fport)

    def metric(self, n, pattern):
        _, body, _ = n.request("GET", "/metrics", listener="metrics")
        m = re.search(pattern + r" (\d+)", body.decode())
        return int(m.group(1)) if m else 0

    def quiet(self, n, seconds=1.0):
        """Lets nexo poll several more times (interval 100 ms) before 'nothing more' is checked."""
        time.sleep(seconds)

    # --- tests ---
    def test_a_message_gets_exactly_one_reply(self):
        script(self.fport, [{"text": "hello Alice"}])
        self.say(ALICE, "hi kate")
        replies = self.wait_replies(ALICE, 1)
        self.assertEqual(replies[0]["text"], "hello Alice")
        self.assertEqual(int(replies[0]["chat_id"]), ALICE)
        self.quiet(self.n)
        self.assertEqual(len(self.bot_replies(ALICE)), 1)
        reqs = self.llm_requests()
        self.assertEqual(len(reqs), 1)
        self.assertEqual(reqs[0]["body"]["messages"][-1]["content"][0]["text"], "hi kate")
        self.assertGreaterEqual(self.metric(self.n, r'nexo_channel_messages_total\{channel="telegram",'
                                                    r'instance="kate_bot",direction="out"\}'), 1)

    def test_a_long_reply_arrives_as_ordered_chunks(self):
        sentences = ["Sentence %d of the long answer says something about item %d." % (i, i * 7)
                     for i in range(400)]
        paras = [" ".join(sentences[i:i + 9]) for i in range(0, len(sentences), 9)]
        text = "\n\n".join(paras)
        text = text[:10000].rstrip()
        self.assertGreaterEqual(len(text), 9990)
        script(self.fport, [{"text": text}])
        self.say(BOB, "tell me everything")
        replies = self.wait_replies(BOB, 3)
        self.quiet(self.n, 0.5)
        chunks = [m["text"] for m in self.bot_replies(BOB)]
        self.assertEqual(len(chunks), 3, [len(c) for c in chunks])
        self.assertTrue(all(0 < len(c) <= 4096 for c in chunks), [len(c) for c in chunks])
        self.assertEqual(" ".join(chunks).split(), text.split())  # order and content, modulo the cuts
        self.assertTrue(text.startswith(chunks[0]))
        for c in chunks[:-1]:  # cut on paragraph boundaries: each chunk ends a paragraph
            self.assertTrue(c.endswith("."), c[-40:])
            self.assertIn(c + "\n\n", text)
        self.assertEqual(len(replies), 3)

    def test_a_sender_outside_the_allowlist_gets_nothing(self):
        self.say(MALLORY, "let me in")
        self.say(CAROL, "hello")  # updates are handled in order: once Carol is answered, so was Mallory
        self.wait_replies(CAROL, 1)
        self.quiet(self.n, 0.5)
        self.assertEqual(self.bot_replies(MALLORY), [])
        self.assertEqual([r["body"]["messages"][-1]["content"][0]["text"] for r in self.llm_requests()],
                         ["hello"])
        self.n.wait_log(r"chat 666 \(not in allowlist\.chat_ids\) ignored")
        self.assertEqual(self.metric(self.n, r'nexo_channel_dropped_total\{channel="telegram",'
                                             r'instance="kate_bot",reason="allowlist"\}'), 1)

    def test_a_429_retry_after_is_honoured(self):
        token = "424242:THROTTLED"
        with tempfile.TemporaryDirectory() as cfg:
            self.write_config(cfg, token)
            n = Nexo(config_dir=cfg).start()
            try:
                self.proxy.throttle[token] = 1
                script(self.fport, [{"text": "slowly"}])
                self.say(DAVE, "hurry", token)
                self.assertEqual([m["text"] for m in self.wait_replies(DAVE, 1, token)], ["slowly"])
                sends = self.proxy.sends[token]
                self.assertEqual(len(sends), 2)  # the refused one, then the retry
                self.assertGreaterEqual(sends[1] - sends[0], 0.95)
                n.wait_log(r"sendMessage rate limited: retrying in 1s")
                self.quiet(n, 0.5)
                self.assertEqual(len(self.bot_replies(DAVE, token)), 1)
                self.assertEqual(n.stop(), 0)
            finally:
                n.cleanup()

    def test_a_restart_does_not_answer_an_old_update_again(self):
        token = "777000:RESTART-TOKEN"
        with tempfile.TemporaryDirectory() as cfg:
            self.write_config(cfg, token)
            first = Nexo(config_dir=cfg).start()
            second = None
            try:
                script(self.fport, [{"text": "first answer"}])
                # The bot's polls after it got the update are held: they never reach "Telegram",
                # so the update stays unconfirmed there, as when nexo stops (or dies) right after
                # handling it. A bot that lost its offset would get it again after the restart.
                self.proxy.freeze_after.add(token)
                self.say(ALICE, "before the restart", token)
                self.assertEqual([m["text"] for m in self.wait_replies(ALICE, 1, token)], ["first answer"])
                old_id = self.proxy.last_seen(token)
                self.assertEqual(first.stop(), 0)
                self.proxy.release(token)
                self.assertIn(old_id, self.proxy.pending[token])  # still unconfirmed
                second = Nexo(config_dir=cfg)
                second.data_dir = first.data_dir
                asked_before = len(self.proxy.offsets_for(token))
                second.start()
                script(self.fport, [{"text": "second answer"}])
                self.say(ALICE, "after the restart", token)
                replies = self.wait_replies(ALICE, 2, token)
                self.quiet(second)
                replies = self.bot_replies(ALICE, token)
                self.assertEqual([m["text"] for m in replies], ["first answer", "second answer"])
                asked = [r["body"]["messages"][-1]["content"][0]["text"] for r in self.llm_requests()]
                self.assertEqual(asked, ["before the restart", "after the restart"])
                after = self.proxy.offsets_for(token)[asked_before:]
                self.assertTrue(after, "the restarted bot never polled")
                self.assertEqual(after[0], old_id + 1)  # resumed past the handled update
                self.assertEqual(second.stop(), 0)
            finally:
                first.cleanup()
                if second:
                    second.cleanup()


class TelegramStopMidTurn(TgPeers, unittest.TestCase):
    """A turn cut by the shutdown grace stays routed and runs again after the restart: its
    message reaches the model once, not once from the history and once again as new."""
    TOKEN = "777001:STOP-TOKEN"

    @classmethod
    def setUpClass(cls):
        cls.start_peers()

    @classmethod
    def tearDownClass(cls):  # (no class-wide nexo: each test starts its own)
        try:
            stop_fake(cls.fake)
            cls.cfg.cleanup()
        finally:
            cls.tg.stop()

    def test_a_turn_cut_by_the_shutdown_runs_again_once(self):
        with tempfile.TemporaryDirectory() as cfg:
            write_config(cfg, {
                "gateway.yaml": "shutdown_grace: 500ms\n",
                "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                            % self.fport,
                "agents.yaml": "agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                               "    inbound_bindings: [{plugin: telegram, instance: stop_bot}]\n",
                "plugins/telegram.yaml": "telegram:\n  - instance: stop_bot\n    token: \"%s\"\n"
                                         "    api_url: %s\n    polling: {enabled: true, interval_ms: 100}\n"
                                         % (self.TOKEN, self.tg.url),
            })
            first = Nexo(config_dir=cfg).start()
            second = None
            try:
                script(self.fport, [{"hang_ms": 20000, "text": "too late"}])
                self.tg.say(self.TOKEN, ALICE, "cut short")
                wait_for(lambda: len(fake_requests(self.fport)) >= 1, 20, "the model call")
                self.assertEqual(first.stop(), 0)
                fake_reset(self.fport)
                script(self.fport, [{"text": "answered after the restart"}])
                second = Nexo(config_dir=cfg)
                second.data_dir = first.data_dir
                second.start()
                replies = self.tg.wait_replies(self.TOKEN, ALICE, 1, 20)
                self.assertEqual([m["text"] for m in replies], ["answered after the restart"])
                sent = json.dumps(fake_requests(self.fport)[0]["body"]["messages"])
                self.assertEqual(sent.count("cut short"), 1, sent)
                self.assertEqual(second.stop(), 0)
            finally:
                first.cleanup()
                if second:
                    second.cleanup()


class TelegramFeatures(TgPeers, unittest.TestCase):
    """Buttons, media, Markdown, typing and the poll watchdog, against the emulator directly
    (tests/tools/tg-server.js adds what telegram-test-api lacks: a record of every Bot API call,
    Telegram's HTML checks, sendPhoto/sendDocument, getFile and file downloads, held polls)."""
    UI, DOG = "555001:UI-TOKEN", "555002:DOG-TOKEN"

    @classmethod
    def setUpClass(cls):
        cls.start_peers()
        cls.tg_url = cls.tg.url
        inst = ("  - instance: %s\n    token: \"%s\"\n    api_url: %s\n"
                "    polling: {enabled: true, interval_ms: 100, watchdog_ms: %s}\n")
        write_config(cls.cfg.name, {
            "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                        % cls.fport,
            "agents.yaml": "agents:\n  - id: kate\n    model: {provider: anthropic, model: m}\n"
                           "    inbound_bindings: [{plugin: telegram, instance: ui},"
                           " {plugin: telegram, instance: dog}]\n",
            "plugins/telegram.yaml": "telegram:\n"
            + inst % ("ui", cls.UI, cls.tg_url, "15s") + "    max_media_bytes: 1000\n"
            + inst % ("dog", cls.DOG, cls.tg_url, "2s") + "    typing: false\n",
        })
        cls.n = Nexo(config_dir=cls.cfg.name).start()

    @classmethod
    def tearDownClass(cls):
        cls.stop_peers()

    # --- the user's side of the emulator (the UI bot unless token is given) ---
    def say(self, chat, token=None, **message):
        """A user message: text=..., or photo/document/caption=..."""
        self.tg.say(token or self.UI, chat, **message)

    def replies(self, chat, token=None):
        return self.tg.replies(token or self.UI, chat)

    def wait_replies(self, chat, count, token=None, timeout=20):
        return self.tg.wait_replies(token or self.UI, chat, count, timeout,
                                    detail=lambda: "; log:\n" + self.n.read_log()[-4000:])

    def calls(self, method, token=None):
        return self.tg.calls(token or self.UI, method)

    def llm_requests(self):
        return fake_requests(self.fport)

    def llm_texts(self):
        out = []
        for r in fake_requests(self.fport):
            content = r["body"]["messages"][-1]["content"]
            out.append(content[-1].get("text") if isinstance(content, list) else content)  # the text
        return out

    def metric(self, pattern):
        _, body, _ = self.n.request("GET", "/metrics", listener="metrics")
        m = re.search(pattern + r" (\d+)", body.decode())
        return int(m.group(1)) if m else 0

    # --- tests ---
    def test_buttons_go_out_and_a_press_reaches_the_agent(self):
        chat = 2001
        script(self.fport, [
            {"tool_use": {"name": "send_message", "input": {
                "channel": "telegram", "instance": "ui", "to": str(chat), "text": "Pick one",
                "buttons": [[{"text": "Yes", "data": "yes"}, {"text": "No", "data": "no"}]]}}},
            {"text": "asked"}])
        self.say(chat, text="ask me")
        got = self.wait_replies(chat, 2)
        pick = [m for m in got if m["text"] == "Pick one"]
        self.assertEqual(len(pick), 1, got)
        self.assertEqual(pick[0]["reply_markup"]["inline_keyboard"],
                         [[{"text": "Yes", "callback_data": "yes"}, {"text": "No", "callback_data": "no"}]])
        script(self.fport, [{"text": "you said yes"}])
        post_json(self.tg_url + "/sendCallback", {
            "botToken": self.UI, "from": tg_user(chat), "data": "yes",
            "message": {"message_id": 1, "chat": {"id": chat, "type": "private"}, "date": int(time.time())}})
        self.assertEqual(self.wait_replies(chat, 3)[-1]["text"], "you said yes")
        self.assertEqual(self.llm_texts()[-1], "[button] yes")
        answers = self.calls("answerCallbackQuery")
        self.assertEqual(len(answers), 1)
        self.assertTrue(answers[0]["body"]["callback_query_id"])

    def test_markdown_is_sent_as_telegram_html(self):
        chat = 2002
        script(self.fport, [{"text": "# Plan\n\n**Bold** and `a<b` and [docs](https://example.org/?a=1&b=2)"
                                     "\n- one\n\n```py\nprint(1 < 2)\n```"}])
        self.say(chat, text="plan?")
        got = self.wait_replies(chat, 1)
        self.assertEqual(got[0]["parse_mode"], "HTML")
        self.assertEqual(got[0]["text"],
                         "<b>Plan</b>\n\n<b>Bold</b> and <code>a&lt;b</code> and "
                         "<a href=\"https://example.org/?a=1&amp;b=2\">docs</a>\n\u2022 one\n\n"
                         "<pre><code class=\"language-py\">print(1 &lt; 2)</code></pre>")

    def test_html_telegram_cannot_parse_is_resent_as_plain_text(self):
        chat = 2003
        post_json(self.tg_url + "/_control", {"token": self.UI, "reject_html": 1})
        script(self.fport, [{"text": "**stubborn** text"}])
        self.say(chat, text="hi")
        got = self.wait_replies(chat, 1)
        self.assertEqual(got[0]["text"], "stubborn text")
        self.assertNotIn("parse_mode", got[0])
        sends = [c["body"] for c in self.calls("sendMessage") if str(c["body"]["chat_id"]) == str(chat)]
        self.assertEqual([b.get("parse_mode") for b in sends], ["HTML", None])
        self.n.wait_log(r"cannot parse the HTML of a message to chat 2003")

    def test_typing_shows_until_the_reply_is_sent(self):
        chat = 2004
        script(self.fport, [{"text": "slow answer", "hold": "typing"}])
        self.say(chat, text="take your time")

        def typing_calls():
            return [c for c in self.calls("sendChatAction") if str(c["body"]["chat_id"]) == str(chat)]
        wait_for(lambda: len(typing_calls()) >= 2, 20, "typing twice: at once, then every 4 s")
        release(self.fport, "typing")
        self.wait_replies(chat, 1)
        acts = typing_calls()
        self.assertTrue(all(c["body"]["action"] == "typing" for c in acts))
        time.sleep(4.5)  # and no more once the reply went out
        self.assertEqual(len(typing_calls()), len(acts))

    def test_a_photo_with_a_caption_reaches_the_agent(self):
        chat = 2005
        post_json(self.tg_url + "/_file", {"file_id": "PHOTO-BIG", "size": 700})
        script(self.fport, [{"text": "nice photo"}])
        self.say(chat, caption="look at this", photo=[
            {"file_id": "PHOTO-SMALL", "width": 90, "height": 60, "file_size": 100},
            {"file_id": "PHOTO-BIG", "width": 900, "height": 600, "file_size": 700}])
        self.assertEqual(self.wait_replies(chat, 1)[0]["text"], "nice photo")
        self.assertEqual(self.llm_texts(), ["look at this"])
        # 700 bytes of 'x' are no image: the agent gets a note with the file, not an image block
        blocks = self.llm_requests()[-1]["body"]["messages"][-1]["content"]
        self.assertEqual([b["type"] for b in blocks], ["text", "text"])
        self.assertIn("not a JPEG, PNG, GIF or WebP image", blocks[0]["text"])
        self.assertEqual([c["body"]["file_id"] for c in self.calls("getFile")][-1:], ["PHOTO-BIG"])
        d = os.path.join(self.n.data_dir, "media", "telegram", "ui")
        saved = [f for f in os.listdir(d) if f.endswith("-photo.jpg")]
        self.assertEqual(len(saved), 1, os.listdir(d))
        self.assertEqual(os.path.getsize(os.path.join(d, saved[0])), 700)
        self.assertEqual(os.stat(os.path.join(d, saved[0])).st_mode & 0o777, 0o600)

    def test_a_photo_reaches_the_model_as_an_image_and_a_text_file_inline(self):
        chat = 2008
        png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5E"
                               "rkJggg==")
        post_json(self.tg_url + "/_file", {"file_id": "PHOTO-PNG", "data_b64": base64.b64encode(png).decode(),
                                           "file_path": "photos/p.png"})
        post_json(self.tg_url + "/_file", {"file_id": "DOC-TXT", "file_path": "documents/n.txt",
                                           "data_b64": base64.b64encode(b"milk, eggs\n").decode()})
        script(self.fport, [{"text": "a dot"}, {"text": "a list"}])
        self.say(chat, photo=[{"file_id": "PHOTO-PNG", "width": 1, "height": 1, "file_size": len(png)}])
        self.assertEqual(self.wait_replies(chat, 1)[0]["text"], "a dot")
        blocks = self.llm_requests()[-1]["body"]["messages"][-1]["content"]
        self.assertEqual(blocks[0]["type"], "image")
        self.assertEqual(blocks[0]["source"]["media_type"], "image/png")
        self.assertEqual(base64.b64decode(blocks[0]["source"]["data"]), png)
        self.assertEqual(blocks[-1], {"type": "text", "text": "[photo]"})
        self.say(chat, document={"file_id": "DOC-TXT", "file_name": "shopping.txt", "file_size": 11,
                                 "mime_type": "text/plain"})
        self.assertEqual(self.wait_replies(chat, 2)[1]["text"], "a list")
        note = self.llm_requests()[-1]["body"]["messages"][-1]["content"][0]["text"]
        self.assertIn("shopping.txt", note)
        self.assertTrue(note.endswith("its text:]\nmilk, eggs\n"), note)

    def test_an_oversized_document_is_refused_with_a_note(self):
        chat = 2006
        post_json(self.tg_url + "/_file", {"file_id": "DOC-BIG", "size": 5000, "file_path": "documents/x.pdf"})
        post_json(self.tg_url + "/_file", {"file_id": "DOC-SNEAKY", "size": 5000,
                                           "file_path": "documents/y.pdf"})
        self.say(chat, document={"file_id": "DOC-BIG", "file_name": "big.pdf", "file_size": 5000})
        # announced small, is big: the download's cap catches it
        self.say(chat, document={"file_id": "DOC-SNEAKY", "file_name": "y.pdf", "file_size": 10})
        got = self.wait_replies(chat, 2)
        self.assertTrue(all("too large" in m["text"] for m in got), got)
        time.sleep(0.5)
        self.assertEqual(self.llm_texts(), [])
        self.assertEqual(self.metric(r'nexo_telegram_media_total\{instance="ui",result="too_large"\}'), 2)
        self.assertEqual(self.metric(r'nexo_channel_dropped_total\{channel="telegram",instance="ui",'
                                     r'reason="media_too_large"\}'), 2)

    def test_media_goes_out_as_photo_and_document(self):
        chat = 2007
        media = os.path.join(self.n.data_dir, "media", "outbox")
        os.makedirs(media, exist_ok=True)
        with open(os.path.join(media, "report.txt"), "w") as f:
            f.write("quarterly numbers\n")
        outside = os.path.join(self.n.tmp, "secret.txt")
        with open(outside, "w") as f:
            f.write("not for telegram\n")
        # another user's inbound file: under data/media, but not in the outbox
        inbound_dir = os.path.join(self.n.data_dir, "media", "telegram", "ui")
        os.makedirs(inbound_dir, exist_ok=True)
        inbound = os.path.join(inbound_dir, "someone-else.txt")
        with open(inbound, "w") as f:
            f.write("private\n")
        script(self.fport, [
            {"tool_use": {"name": "send_message", "input": {
                "channel": "telegram", "instance": "ui", "to": str(chat), "text": "see the file",
                "media": {"type": "document", "path": os.path.join(media, "report.txt"),
                          "caption": "**Q3** report"}}}},
            {"tool_use": {"name": "send_message", "input": {
                "channel": "telegram", "instance": "ui", "to": str(chat), "text": "a picture",
                "media": {"type": "photo", "url": "https://example.org/cat.jpg"}}}},
            {"tool_use": {"name": "send_message", "input": {
                "channel": "telegram", "instance": "ui", "to": str(chat), "text": "sneaky",
                "media": {"type": "document", "path": outside}}}},
            {"tool_use": {"name": "send_message", "input": {
                "channel": "telegram", "instance": "ui", "to": str(chat), "text": "stolen",
                "media": {"type": "document", "path": inbound}}}},
            {"text": "sent"}])
        self.say(chat, text="send me things")
        got = self.wait_replies(chat, 7)
        docs = [c["body"] for c in self.calls("sendDocument") if str(c["body"]["chat_id"]) == str(chat)]
        self.assertEqual(len(docs), 1, docs)  # the files outside data/media/outbox were refused
        self.assertEqual(docs[0]["document"]["filename"], "report.txt")
        self.assertEqual(docs[0]["document"]["size"], len("quarterly numbers\n"))
        self.assertEqual(docs[0]["caption"], "<b>Q3</b> report")
        self.assertEqual(docs[0]["parse_mode"], "HTML")
        photos = [c["body"] for c in self.calls("sendPhoto") if str(c["body"]["chat_id"]) == str(chat)]
        self.assertEqual([p["photo"] for p in photos], ["https://example.org/cat.jpg"])
        self.assertEqual([m["text"] for m in got],
                         ["<b>Q3</b> report", "see the file", "", "a picture", "sneaky", "stolen", "sent"])
        self.n.wait_log(r"outside the data directory's media/ \(refused\)")
        self.n.wait_log(r"files to send must be under \S*media/outbox/")

    def test_the_watchdog_restarts_a_silent_long_poll(self):
        chat = 2008
        before = self.metric(r'nexo_telegram_poll_restarts_total\{instance="dog"\}')
        post_json(self.tg_url + "/_control", {"token": self.DOG, "hang_polls": 1})
        self.n.wait_log(r"telegram\.dog: getUpdates unanswered for \d+ ms: restarting the long poll")
        self.assertGreaterEqual(self.metric(r'nexo_telegram_poll_restarts_total\{instance="dog"\}'),
                                before + 1)
        script(self.fport, [{"text": "still here"}])
        self.say(chat, token=self.DOG, text="anyone?")
        self.assertEqual(self.wait_replies(chat, 1, token=self.DOG)[0]["text"], "still here")


if __name__ == "__main__":
    main()
