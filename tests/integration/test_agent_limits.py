"""Agent limits and prompt sources end to end, against the fake provider: the daily token budget
(refused with each API's error shape, through the official SDKs too, kept across a restart),
workspace identity files in the system prompt (order, headings, an edit picked up, a symlink out
of the workspace refused), and a provider's circuit breaker from llm.yaml opening, failing over,
and closing again after a half-open probe."""
import concurrent.futures
import json
import os
import re
import tempfile
import time
import unittest

from nexo_harness import Nexo, main, write_config
from peers import PEERS, FakePeers, fake_requests, release, script
from test_api_sdk import node

AGENTS = """\
agents:
  - id: thrifty
    model: {provider: anthropic, model: claude-haiku-4-5}
    limits: {daily_token_budget: 1000}
  - id: pair
    model: {provider: anthropic, model: claude-haiku-4-5}
    limits: {daily_token_budget: 1000, max_tokens: 600}
  - id: silent
    model: {provider: anthropic, model: claude-haiku-4-5}
    limits: {daily_token_budget: 100000}
  - id: kate
    model: {provider: anthropic, model: claude-haiku-4-5}
    system_prompt: You are Kate.
    workspace: ws
  - id: fresh
    model: {provider: anthropic, model: claude-haiku-4-5}
    workspace: not-there-yet/ws
  - id: lonely
    model: {provider: flaky, model: claude-haiku-4-5}
  - id: brk
    model:
      provider: flaky
      model: claude-haiku-4-5
      fallbacks: [{provider: openai, model: gpt-4o-mini}]
  - id: nosy
    model: {provider: anthropic, model: claude-haiku-4-5}
    workspace: .
    allowed_tools: [file_read]
  - id: tight
    model: {provider: anthropic, model: claude-haiku-4-5, context_window: 3000}
    allowed_tools: [time_now]
    limits: {max_tokens: 500}
  - id: tightfb
    model:
      provider: anthropic
      model: claude-haiku-4-5
      fallbacks: [{provider: openai, model: gpt-4o-mini, context_window: 3000}]
    allowed_tools: [time_now]
    limits: {max_tokens: 500}
"""


class Limits(FakePeers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_peers()
        cls.outside = tempfile.TemporaryDirectory()
        base = "http://127.0.0.1:%d" % cls.fport
        out = cls.outside.name
        os.makedirs(os.path.join(out, "team", "inner"))
        os.makedirs(os.path.join(out, "keys"))
        os.makedirs(os.path.join(out, "prompter"))
        with open(os.path.join(out, "prompter", "PROMPT.md"), "w") as f:
            f.write("You write short poems.\n")
        with open(os.path.join(out, "keys", "prov.key"), "w") as f:
            f.write("sk-file-key-from-disk\n")
        write_config(cls.cfg.name, {
            "llm.yaml": ("providers:\n"
                         "  anthropic: {api_key: sk-fake-key, base_url: %s}\n"
                         "  openai: {api_key: sk-fake-key, base_url: %s/v1}\n"
                         "  flaky:\n"
                         "    kind: anthropic\n    api_key: sk-fake-key\n    base_url: %s\n"
                         "    circuit_breaker: {failure_threshold: 2, open_secs: 3}\n"
                         "  filekey: {kind: anthropic, api_key: \"${file:%s/keys/prov.key}\", base_url: %s}\n"
                         "circuit_breaker: {failure_threshold: 50, open_secs: 30}\n"
                         "retry: {max_attempts: 1, initial_backoff_ms: 10, max_backoff_ms: 50}\n")
                        % (base, base, base, out, base),
            "agents.yaml": AGENTS,
        })
        ws = os.path.join(cls.cfg.name, "ws")
        os.makedirs(ws)
        cls.ws = ws
        with open(os.path.join(ws, "IDENTITY.md"), "w") as f:
            f.write("I am the identity file.\n")
        with open(os.path.join(ws, "SOUL.md"), "w") as f:
            f.write("Calm and kind.\n")
        secret = os.path.join(cls.outside.name, "secret.md")
        with open(secret, "w") as f:
            f.write("TOP SECRET OUTSIDE\n")
        os.symlink(secret, os.path.join(ws, "MEMORY.md"))
        cls.n = Nexo(config_dir=cls.cfg.name)
        # an agent whose workspace holds the data directory (not made yet: nexo makes it)
        with open(os.path.join(cls.cfg.name, "agents.yaml"), "a") as f:
            f.write("  - id: nosy_data\n    model: {provider: anthropic, model: claude-haiku-4-5}\n"
                    "    workspace: %s\n    allowed_tools: [file_read]\n" % cls.n.tmp)
            # one agent's workspace inside another's; one that holds a ${file:} key
            for aid, ws in (("outer", "team"), ("inner", "team/inner"), ("keyholder", "keys")):
                f.write("  - id: %s\n    model: {provider: anthropic, model: claude-haiku-4-5}\n"
                        "    workspace: %s\n    allowed_tools: [file_read, file_write]\n"
                        % (aid, os.path.join(out, ws)))
            # a prompt kept in a file of the agent's own workspace is no secret: file tools stay
            f.write("  - id: prompter\n    model: {provider: anthropic, model: claude-haiku-4-5}\n"
                    "    workspace: %s\n    allowed_tools: [file_read]\n"
                    "    system_prompt: \"${file:%s}\"\n"
                    % (os.path.join(out, "prompter"), os.path.join(out, "prompter", "PROMPT.md")))
        cls.n.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.stop_peers()
        finally:
            cls.outside.cleanup()

    def requests(self):
        return fake_requests(self.fport)

    def post(self, path, agent, text="hi"):
        if path == "/v1/messages":
            body = {"model": agent, "max_tokens": 100, "messages": [{"role": "user", "content": text}]}
        else:
            body = {"model": agent, "messages": [{"role": "user", "content": text}]}
        status, data, headers = self.n.request("POST", path, body=json.dumps(body).encode(),
                                               headers={"Content-Type": "application/json"}, timeout=30)
        return status, json.loads(data), {k.lower(): v for k, v in dict(headers).items()}

    def metrics(self):
        _, body, _ = self.n.request("GET", "/metrics", listener="metrics")
        return body.decode()

    def system_text(self, req):
        s = req["body"]["system"]
        return s if isinstance(s, str) else "".join(b["text"] for b in s)

    # --- daily token budget ---
    def test_a_workspace_that_does_not_exist_is_created(self):
        ws = os.path.join(self.cfg.name, "not-there-yet", "ws")
        self.assertTrue(os.path.isdir(ws))
        self.assertEqual(os.stat(ws).st_mode & 0o777, 0o700)

    def test_daily_token_budget(self):
        self.assertRegex(self.metrics(), r'nexo_agent_tokens_budget_remaining\{agent="thrifty"\} 1000')
        script(self.fport, [{"text": "spent", "usage": {"input_tokens": 700, "output_tokens": 400}}])
        status, r, _ = self.post("/v1/chat/completions", "thrifty")
        self.assertEqual(status, 200, r)
        self.assertRegex(self.metrics(), r'nexo_agent_tokens_budget_remaining\{agent="thrifty"\} 0')

        status, r, h = self.post("/v1/chat/completions", "thrifty")
        self.assertEqual(status, 429, r)
        self.assertEqual((r["error"]["type"], r["error"]["code"]), ("insufficient_quota", "insufficient_quota"))
        self.assertIn("daily token budget", r["error"]["message"])
        self.assertEqual(h.get("x-should-retry"), "false")
        self.assertTrue(0 < int(h["retry-after"]) <= 86400, h)
        status, r, h = self.post("/v1/messages", "thrifty")
        self.assertEqual(status, 429, r)
        self.assertEqual((r["type"], r["error"]["type"]), ("error", "rate_limit_error"))
        self.assertIn("resets at 00:00 UTC", r["error"]["message"])
        self.assertEqual(len(self.requests()), 1)  # refused turns never reach the provider

        if os.path.isdir(os.path.join(PEERS, "node_modules", "openai")):
            url = "http://127.0.0.1:%d" % self.n.ports["gateway"]
            e = node("openai_chat.cjs", url + "/v1", "any", "thrifty", "chat")["error"]
            self.assertEqual((e["status"], e["name"], e["code"]), (429, "RateLimitError", "insufficient_quota"))
            e = node("anthropic_messages.cjs", "@anthropic-ai/sdk", url, "any", "thrifty", "chat")["error"]
            self.assertEqual((e["status"], e["name"], e["type"]), (429, "RateLimitError", "rate_limit_error"))

        # the day's count is in the store: a restart still refuses
        self.assertEqual(self.n.restart(), 0)
        status, r, _ = self.post("/v1/chat/completions", "thrifty")
        self.assertEqual(status, 429, r)
        self.assertRegex(self.metrics(), r'nexo_agent_tokens_budget_remaining\{agent="thrifty"\} 0')
        status, r, _ = self.post("/v1/chat/completions", "kate")  # other agents are not limited
        self.assertEqual(status, 200, r)

    def test_turns_at_the_same_time_cannot_overrun_the_budget(self):
        """Each running turn sets aside up to its max_tokens (600) of what is left: with 1000 a
        second turn at the same time gets 400 of it (and asks for no longer an answer), a third is
        asked to come back in a second."""
        script(self.fport, [{"text": "a", "hold": "pair", "usage": {"input_tokens": 300, "output_tokens": 300}},
                            {"text": "b", "hold": "pair", "usage": {"input_tokens": 200, "output_tokens": 200}}])
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            a = ex.submit(self.post, "/v1/chat/completions", "pair")
            self.wait_upstream(1)
            b = ex.submit(self.post, "/v1/chat/completions", "pair")
            self.wait_upstream(2)
            status, r, h = self.post("/v1/chat/completions", "pair")
            release(self.fport, "pair")  # the two turns were held at the fake until now
            self.assertEqual((status, r["error"]["type"], r["error"]["code"]), (429, "requests", "rate_limit_exceeded"),
                             r)
            self.assertIn("set aside for the turns in progress", r["error"]["message"])
            self.assertEqual(h.get("retry-after"), "1")
            self.assertEqual(a.result()[0], 200)
            self.assertEqual(b.result()[0], 200)
        self.assertEqual(len(self.requests()), 2)
        # each answer is held to what was set aside for it
        self.assertEqual([q["body"]["max_tokens"] for q in self.requests()], [600, 400])
        self.assertRegex(self.metrics(), r'nexo_agent_tokens_budget_remaining\{agent="pair"\} 0')
        status, r, _ = self.post("/v1/chat/completions", "pair")
        self.assertEqual((status, r["error"]["type"]), (429, "insufficient_quota"), r)

    def test_a_provider_that_reports_no_usage_is_charged_by_estimate(self):
        script(self.fport, [{"text": "x" * 4000, "usage": {"input_tokens": 0, "output_tokens": 0}}])
        status, r, _ = self.post("/v1/chat/completions", "silent", text="y" * 4000)
        self.assertEqual(status, 200, r)
        m = re.search(r'nexo_agent_tokens_budget_remaining\{agent="silent"\} (\S+)', self.metrics())
        self.assertRegex(self.metrics(), r'nexo_agent_tokens_total\{agent="silent",direction="cache_read"\} 0')
        self.assertLessEqual(float(m.group(1)), 100000 - 1500)  # ~8000 characters / 4

    def wait_upstream(self, n):
        deadline = time.monotonic() + 10
        while len(self.requests()) < n:
            self.assertLess(time.monotonic(), deadline, "the fake never got request %d" % n)
            time.sleep(0.01)

    # --- workspace identity files ---
    def test_identity_files_join_the_system_prompt_and_edits_are_picked_up(self):
        status, r, _ = self.post("/v1/chat/completions", "kate")
        self.assertEqual(status, 200, r)
        system = self.system_text(self.requests()[0])
        self.assertEqual(system, "You are Kate.\n\n# IDENTITY.md\n\nI am the identity file.\n\n"
                                 "# SOUL.md\n\nCalm and kind.")
        self.assertNotIn("TOP SECRET", system)
        self.assertRegex(self.n.read_log(), r"MEMORY\.md not loaded: .*outside the workspace")

        with open(os.path.join(self.ws, "SOUL.md"), "w") as f:
            f.write("Bold and curious, after the edit.\n")
        with open(os.path.join(self.ws, "USER.md"), "w") as f:
            f.write("The user likes tea.\n")
        status, r, _ = self.post("/v1/chat/completions", "kate")
        self.assertEqual(status, 200, r)
        system = self.system_text(self.requests()[1])
        self.assertIn("# SOUL.md\n\nBold and curious, after the edit.\n\n# USER.md\n\nThe user likes tea.",
                      system)
        self.assertNotIn("Calm and kind", system)
        os.unlink(os.path.join(self.ws, "USER.md"))

    def test_a_used_up_quota_fails_over_to_the_fallback(self):
        """A quota or bill tied to the primary's account: the fallback answers (a retry would not
        mend it, and it says nothing against the provider's health)."""
        script(self.fport, [{"error": {"status": 400, "type": "billing_error", "message": "no credit"}},
                            {"text": "fallback ok"}])
        status, r, _ = self.post("/v1/chat/completions", "brk")
        self.assertEqual((status, r["choices"][0]["message"]["content"]), (200, "fallback ok"), r)
        self.assertEqual([q["endpoint"] for q in self.requests()], ["anthropic", "openai"])
        self.assertRegex(self.metrics(), r'nexo_llm_breaker_state\{provider="flaky"\} 0')

    # --- provider circuit breaker from llm.yaml ---
    def test_breaker_opens_fails_over_and_closes_after_a_probe(self):
        fail = {"error": {"status": 500, "type": "api_error", "message": "boom"}}
        script(self.fport, [fail, {"text": "fb1"}, fail, {"text": "fb2"}])
        for want in ("fb1", "fb2"):
            status, r, _ = self.post("/v1/chat/completions", "brk")
            self.assertEqual((status, r["choices"][0]["message"]["content"]), (200, want), r)
        self.assertRegex(self.metrics(), r'nexo_llm_breaker_state\{provider="flaky"\} 1')
        opened = time.monotonic()

        # open, and no fallback: 503 at once, with when to try again (the SDKs wait that long)
        n = len(self.requests())
        status, r, headers = self.post("/v1/chat/completions", "lonely")
        self.assertEqual((status, r["error"]["type"]), (503, "circuit_open"), r)
        self.assertIn(headers.get("retry-after"), ("1", "2", "3"))  # what is left of open_secs, rounded up
        self.assertEqual(len(self.requests()), n)  # nothing reached the provider
        self.assertRegex(self.metrics(), r'nexo_llm_requests_total\{provider="flaky",model="claude-haiku-4-5",'
                                         r'outcome="circuit_open"\} [1-9]')

        # open: the provider is skipped, the fallback answers at once
        script(self.fport, [{"text": "fb3"}])
        status, r, _ = self.post("/v1/chat/completions", "brk")
        self.assertEqual((status, r["choices"][0]["message"]["content"]), (200, "fb3"), r)
        self.assertEqual([q["endpoint"] for q in self.requests()[4:]], ["openai"])

        # after open_secs (3 s: room for the requests above on a slow machine) one probe goes to
        # the provider; it succeeds and closes the breaker
        time.sleep(max(0.0, 3.3 - (time.monotonic() - opened)))
        script(self.fport, [{"text": "probe ok"}])
        status, r, _ = self.post("/v1/chat/completions", "brk")
        self.assertEqual((status, r["choices"][0]["message"]["content"]), (200, "probe ok"), r)
        self.assertEqual(self.requests()[-1]["endpoint"], "anthropic")
        self.assertRegex(self.metrics(), r'nexo_llm_breaker_state\{provider="flaky"\} 0')

    def test_a_workspace_that_holds_the_configuration_gets_no_file_tools(self):
        # workspace "." is the configuration directory: llm.yaml's keys would be one file_read
        # away (and agents.yaml one file_write); the agent's file tools are off, and the log says so
        self.assertIn("agent nosy: workspace", self.n.read_log())
        self.assertRegex(self.n.read_log(), r"agent nosy_data: workspace \S+ holds \S+ \(the data directory\)")
        script(self.fport, [{"tool_use": {"name": "file_read", "input": {"path": "llm.yaml"}}},
                            {"text": "done"}])
        status, r, _ = self.post("/v1/chat/completions", "nosy")
        self.assertEqual(status, 200, r)
        sent = json.dumps(self.requests()[-1]["body"]["messages"])
        self.assertNotIn("sk-fake-key", sent)
        self.assertIn("file tools are disabled", sent)

    def test_agents_are_isolated_and_keys_read_from_files_stay_out_of_reach(self):
        # outer's workspace holds inner's (its identity files, its memory), keyholder's a file
        # llm.yaml reads through ${file:}: their file tools are off, and the log says why; inner's
        # are on
        log = self.n.read_log()
        self.assertRegex(log, r"agent outer: workspace \S+ holds agent inner's")
        self.assertRegex(log, r"agent keyholder: workspace \S+ holds \S+prov\.key, which the configuration "
                              r"reads through \$\{file:\}")
        self.assertNotRegex(log, r"agent inner: workspace")
        self.assertNotRegex(log, r"agent prompter: workspace")
        for agent, call in (("outer", {"name": "file_write", "input": {"path": "inner/IDENTITY.md",
                                                                         "content": "obey me"}}),
                            ("keyholder", {"name": "file_read", "input": {"path": "prov.key"}})):
            script(self.fport, [{"tool_use": call}, {"text": "done"}])
            status, r, _ = self.post("/v1/chat/completions", agent)
            self.assertEqual(status, 200, r)
            sent = json.dumps(self.requests()[-1]["body"]["messages"])
            self.assertIn("file tools are disabled", sent, agent)
            self.assertNotIn("sk-file-key-from-disk", sent)
        self.assertFalse(os.path.exists(os.path.join(self.outside.name, "team", "inner", "IDENTITY.md")))
        script(self.fport, [{"tool_use": {"name": "file_write", "input": {"path": "notes.md", "content": "ok"}}},
                            {"text": "done"}])
        status, r, _ = self.post("/v1/chat/completions", "inner")
        self.assertEqual(status, 200, r)
        self.assertTrue(os.path.exists(os.path.join(self.outside.name, "team", "inner", "notes.md")))

    # --- the context window ---
    def test_a_sessions_history_is_trimmed_to_the_models_context_window(self):
        # Six messages of ~500 estimated tokens each in one session. The window is 3,000 tokens,
        # of which max_tokens (500), the tool list and a tenth for the estimate's error are not
        # the history's: the last requests leave the oldest messages out, keep the newest, start
        # on a user message and stay inside the window. With a fallback of that window and a
        # primary of 200,000 the same holds: the request must fit whichever target answers.
        for agent in ("tight", "tightfb"):
            with self.subTest(agent=agent):
                before = len(self.requests())
                for i in range(8):
                    text = ("msg-%d " % i) + "x" * 1990
                    body = {"model": agent, "user": "window-" + agent,
                            "messages": [{"role": "user", "content": text}]}
                    status, data, _ = self.n.request("POST", "/v1/chat/completions",
                                                     body=json.dumps(body).encode(),
                                                     headers={"Content-Type": "application/json"}, timeout=30)
                    self.assertEqual(status, 200, data)
                sent = [q["body"] for q in self.requests()[before:]]
                self.assertEqual(len(sent), 8)
                first, last = json.dumps(sent[0]["messages"]), sent[-1]["messages"]
                self.assertIn("msg-0", first)
                text = json.dumps(last)
                self.assertNotIn("msg-0", text)
                self.assertIn("msg-6", text)
                self.assertIn("msg-7", json.dumps(last[-1]))
                self.assertEqual(last[0]["role"], "user")
                self.assertLess(len(text) / 4 + sent[-1]["max_tokens"], 3000)
                # the first requests, inside the window, were sent whole
                self.assertIn("msg-0", json.dumps(sent[2]["messages"]))
                # a cut goes to three quarters of the room, so the next turn starts where the
                # one that cut did (the provider's prompt cache holds), not a message later
                starts = [re.search(r"msg-\d", json.dumps(q["messages"][0])).group(0) for q in sent]
                cuts = [i for i in range(1, 8) if starts[i] != starts[i - 1]]
                self.assertTrue(cuts, starts)
                for i in cuts:
                    self.assertTrue(i + 1 >= 8 or starts[i + 1] == starts[i], starts)


if __name__ == "__main__":
    main()
