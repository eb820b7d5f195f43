"""`nexo chat` in a terminal session (stdin piped) against the fake provider, and the embedded
default agent's clear message when no LLM key is set."""
import json
import os
import subprocess
import tempfile
import unittest
import urllib.request

from nexo_harness import NEXO_BIN, Nexo, main, write_config
from test_api_sdk import script, start_fake


class ChatCli(unittest.TestCase):
    def test_chat_streams_answers_and_keeps_the_session(self):
        fake, port = start_fake()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = write_config(os.path.join(tmp, "config"), {
                    "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                                % port,
                    "agents.yaml": "agents:\n  - {id: kate, model: {provider: anthropic, model: m}}\n",
                })
                data = os.path.join(tmp, "data")
                script(port, [{"text": "Hello Ana", "chunks": 3}, {"text": "You are Ana"}])
                r = subprocess.run([NEXO_BIN, "chat", "--agent", "kate", "--config", cfg, "--data", data,
                                    "--log-level", "warn"], input="I am Ana\nwho am I?\n",
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout.split(), ["Hello", "Ana", "You", "are", "Ana"])
                reqs = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/_requests" % port).read())
                second = [m["content"][0]["text"] for m in reqs[1]["body"]["messages"]]
                self.assertEqual(second, ["I am Ana", "Hello Ana", "who am I?"])
                r = subprocess.run([NEXO_BIN, "chat", "--agent", "nobody", "--config", cfg, "--data", data],
                                   input="", capture_output=True, text=True, timeout=30)
                self.assertEqual(r.returncode, 2)
                self.assertIn('no agent "nobody"', r.stderr)
        finally:
            fake.kill()
            fake.wait()

    def test_embedded_default_agent_from_the_environment(self):
        fake, port = start_fake()
        try:
            for env, endpoint in (({"ANTHROPIC_API_KEY": "sk-fake-key",
                                    "ANTHROPIC_BASE_URL": "http://127.0.0.1:%d" % port}, "anthropic"),
                                  ({"ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": "sk-fake-key",
                                    "OPENAI_BASE_URL": "http://127.0.0.1:%d/v1" % port}, "openai")):
                n = Nexo(env=env)
                try:
                    n.start()
                    script(port, [{"text": "hello from the default agent"}])
                    body = json.dumps({"model": "main", "messages": [{"role": "user", "content": "hi"}]})
                    status, data, _ = n.request("POST", "/v1/chat/completions", body=body.encode())
                    self.assertEqual(status, 200, data)
                    self.assertEqual(json.loads(data)["choices"][0]["message"]["content"],
                                     "hello from the default agent")
                    req = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/_requests" % port).read())[-1]
                    self.assertEqual(req["endpoint"], endpoint)
                    size = len(json.dumps(req["body"], separators=(",", ":"))) + \
                        sum(len(k) + len(v) + 4 for k, v in req["headers"].items())
                    self.assertLessEqual(size, 4096, "upstream request for \"hi\" is %d bytes" % size)
                    self.assertEqual(n.stop(), 0)
                finally:
                    n.cleanup()
        finally:
            fake.kill()
            fake.wait()

    def test_no_key_gives_a_clear_message_not_an_error(self):
        env = {"ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "ANTHROPIC_BASE_URL": ""}
        n = Nexo(env=env)
        try:
            n.start()
            body = json.dumps({"model": "main", "messages": [{"role": "user", "content": "hi"}]})
            status, data, _ = n.request("POST", "/v1/chat/completions", body=body.encode())
            self.assertEqual(status, 200, data)
            text = json.loads(data)["choices"][0]["message"]["content"]
            self.assertIn("ANTHROPIC_API_KEY", text)
            self.assertIn("OPENAI_API_KEY", text)
            self.assertEqual(n.stop(), 0)
        finally:
            n.cleanup()


if __name__ == "__main__":
    main()
