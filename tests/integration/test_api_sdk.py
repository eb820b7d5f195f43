"""The official OpenAI and Anthropic SDKs (pinned; Anthropic both 1.x and 0.x) drive nexo's
/v1/chat/completions, /v1/models and /v1/messages, streaming and not, against the protocol-faithful
fake provider in tests/fakes/fake_llm.py."""
import json
import os
import subprocess
import unittest

from nexo_harness import Nexo, main, write_config
from peers import HERE, PEERS, SRC, FakePeers, fake_requests, script, start_fake  # noqa: F401 (re-exported)

TOKEN = "nexo-sdk-test-token"


def node(*args, env=None):
    e = dict(os.environ, NODE_PATH=os.path.join(PEERS, "node_modules"))
    if env:
        e.update(env)
    r = subprocess.run(["node", os.path.join(HERE, "sdk", args[0]), *args[1:]], capture_output=True,
                       text=True, env=e, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


class Sdk(FakePeers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.isdir(os.path.join(PEERS, "node_modules", "openai")):
            raise AssertionError("npm peers missing in %s: run scripts/install-npm-peers.sh" % PEERS)
        cls.start_peers()
        base = "http://127.0.0.1:%d" % cls.fport
        write_config(cls.cfg.name, {
            "gateway.yaml": "auth_token: %s\n" % TOKEN,
            "llm.yaml": ("providers:\n"
                         "  anthropic: {api_key: sk-fake-key, base_url: %s}\n"
                         "  openai: {api_key: sk-fake-key, base_url: %s/v1}\n") % (base, base),
            "agents.yaml": ("agents:\n"
                            "  - {id: kate, model: {provider: anthropic, model: claude-haiku-4-5}}\n"
                            "  - {id: gpt, model: {provider: openai, model: gpt-4o-mini}}\n"),
        })
        cls.n = Nexo(config_dir=cls.cfg.name).start()
        cls.url = "http://127.0.0.1:%d" % cls.n.ports["gateway"]

    @classmethod
    def tearDownClass(cls):
        cls.stop_peers()

    def test_openai_sdk_lists_agents_as_models(self):
        r = node("openai_chat.cjs", self.url + "/v1", TOKEN, "", "models")
        self.assertEqual(sorted(r["ids"]), ["gpt", "kate"])

    def test_openai_sdk_chat_and_stream_through_both_providers(self):
        for agent in ("kate", "gpt"):
            script(self.fport, [{"text": "hello from fake"}])
            r = node("openai_chat.cjs", self.url + "/v1", TOKEN, agent, "chat")
            self.assertEqual(r.get("text"), "hello from fake", r)
            self.assertEqual(r["finish"], "stop")
            self.assertEqual(r["object"], "chat.completion")
            self.assertEqual(r["model"], agent)
            script(self.fport, [{"text": "streamed words arrive in order", "chunks": 4}])
            r = node("openai_chat.cjs", self.url + "/v1", TOKEN, agent, "stream")
            self.assertEqual(r.get("text"), "streamed words arrive in order", r)
            self.assertEqual(r["finish"], "stop")
            self.assertGreaterEqual(r["chunks"], 3)

    def test_openai_sdk_sees_errors(self):
        r = node("openai_chat.cjs", self.url + "/v1", "wrong-token", "kate", "chat")
        self.assertEqual(r["error"]["status"], 401)
        self.assertEqual(r["error"]["name"], "AuthenticationError")
        r = node("openai_chat.cjs", self.url + "/v1", TOKEN, "nobody", "chat")
        self.assertEqual(r["error"]["status"], 404)
        self.assertEqual(r["error"]["code"], "model_not_found")
        script(self.fport, [{"error": {"status": 400, "type": "invalid_request_error",
                                       "message": "bad things"}}])
        r = node("openai_chat.cjs", self.url + "/v1", TOKEN, "kate", "chat")
        self.assertGreaterEqual(r["error"]["status"], 400)

    def test_anthropic_sdks_new_and_old(self):
        for mod in ("@anthropic-ai/sdk", "anthropic-sdk-0"):
            for agent in ("kate", "gpt"):
                script(self.fport, [{"text": "hi from the fake"}])
                r = node("anthropic_messages.cjs", mod, self.url, TOKEN, agent, "chat")
                self.assertEqual(r.get("text"), "hi from the fake", (mod, r))
                self.assertEqual((r["type"], r["role"], r["stop_reason"]),
                                 ("message", "assistant", "end_turn"))
                script(self.fport, [{"text": "one two three four", "chunks": 4}])
                r = node("anthropic_messages.cjs", mod, self.url, TOKEN, agent, "stream")
                self.assertEqual(r.get("text"), "one two three four", (mod, r))
                self.assertEqual(r["types"][0], "message_start")
                self.assertEqual(r["types"][-1], "message_stop")
            r = node("anthropic_messages.cjs", mod, self.url, "wrong", "kate", "chat")
            self.assertEqual(r["error"]["status"], 401, (mod, r))

    def test_session_keeps_history_across_requests(self):
        script(self.fport, [{"text": "first answer"}, {"text": "second answer"}])
        env = {"NEXO_USER": "alice"}
        self.assertEqual(node("openai_chat.cjs", self.url + "/v1", TOKEN, "kate", "chat", "one",
                              env=env)["text"], "first answer")
        self.assertEqual(node("openai_chat.cjs", self.url + "/v1", TOKEN, "kate", "chat", "two",
                              env=env)["text"], "second answer")
        reqs = fake_requests(self.fport)
        last = reqs[-1]["body"]["messages"]
        texts = [b.get("text") for m in last for b in (m["content"] if isinstance(m["content"], list)
                                                       else [{"text": m["content"]}])]
        self.assertEqual(texts, ["one", "first answer", "two"])


if __name__ == "__main__":
    main()
