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
            "llm.yaml": ("retry: {max_attempts: 2, initial_backoff_ms: 10, max_backoff_ms: 50}\n"
                         "providers:\n"
                         "  anthropic: {api_key: sk-fake-key, base_url: %s}\n"
                         "  openai: {api_key: sk-fake-key, base_url: %s/v1}\n") % (base, base),
            "agents.yaml": ("agents:\n"
                            "  - {id: kate, model: {provider: anthropic, model: claude-haiku-4-5}}\n"
                            "  - {id: gpt, model: {provider: openai, model: gpt-4o-mini}}\n"
                            "  - id: tutor\n    model: {provider: anthropic, model: claude-haiku-4-5}\n"
                            "    allowed_tools: [time_now, file_read]\n"
                            "    system_prompt: %s\n" % ("Explain each step, slowly and kindly. " * 30)),
        })
        cls.n = Nexo(config_dir=cls.cfg.name).start()
        cls.url = "http://127.0.0.1:%d" % cls.n.ports["gateway"]

    @classmethod
    def tearDownClass(cls):
        cls.stop_peers()

    def test_openai_sdk_lists_agents_as_models(self):
        r = node("openai_chat.cjs", self.url + "/v1", TOKEN, "", "models")
        self.assertEqual(sorted(r["ids"]), ["gpt", "kate", "tutor"])

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
            self.assertGreater(r["usage"]["completion_tokens"], 0, r)
            self.assertEqual(r["nullUsage"], r["chunks"] - 1, r)  # all but the last, as OpenAI's

    def test_a_refused_model_list_has_a_request_id_and_its_sdks_shape(self):
        for headers, id_header in (({}, "x-request-id"), ({"anthropic-version": "2023-06-01"}, "request-id")):
            status, data, h = self.n.request("GET", "/v1/models", headers=dict(headers, **{
                "Authorization": "Bearer wrong"}))
            self.assertEqual(status, 401)
            self.assertRegex(h.get(id_header, ""), r"^req_", h)
            body = json.loads(data)
            if id_header == "request-id":
                self.assertEqual((body["type"], body["error"]["type"]), ("error", "authentication_error"))
            else:
                self.assertEqual(body["error"]["code"], "invalid_api_key")

    def test_a_path_or_method_the_api_lacks_has_a_request_id(self):
        for method, path, want in (("POST", "/v1/embeddings", 404), ("GET", "/v1/messages", 405),
                                   ("GET", "/v1/chat/completions", 405)):
            status, _, h = self.n.request(method, path, headers={"Authorization": "Bearer " + TOKEN})
            self.assertEqual(status, want, path)
            self.assertRegex(h.get("x-request-id", ""), r"^req_", (path, h))
            self.assertEqual(h.get("request-id"), h.get("x-request-id"))

    def test_either_credential_is_enough(self):
        body = json.dumps({"model": "kate", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
        for headers, want in (({"x-api-key": TOKEN, "Authorization": "Bearer proxy-token"}, 200),
                              ({"x-api-key": "nope", "Authorization": "Bearer " + TOKEN}, 200),
                              ({"x-api-key": "nope", "Authorization": "Bearer proxy-token"}, 401),
                              ({"x-api-key": TOKEN + "x"}, 401), ({"Authorization": "Bearer"}, 401)):
            script(self.fport, [{"text": "ok"}])
            status, data, _ = self.n.request("POST", "/v1/messages", body=body.encode(),
                                             headers=dict(headers, **{"Content-Type": "application/json"}))
            self.assertEqual(status, want, (headers, data))

    def test_openai_sdk_sees_errors(self):
        r = node("openai_chat.cjs", self.url + "/v1", "wrong-token", "kate", "chat")
        self.assertEqual(r["error"]["status"], 401)
        self.assertEqual(r["error"]["name"], "AuthenticationError")
        r = node("openai_chat.cjs", self.url + "/v1", TOKEN, "nobody", "chat")
        self.assertEqual(r["error"]["status"], 404)
        self.assertEqual(r["error"]["code"], "model_not_found")
        # the provider not knowing the agent's model is the gateway's failure (502), not the
        # caller's unknown model
        for path, hdrs in (("/v1/chat/completions", {"Authorization": "Bearer " + TOKEN}),
                           ("/v1/messages", {"x-api-key": TOKEN})):
            script(self.fport, [{"error": {"status": 404, "type": "not_found_error", "message": "model: x"}}])
            status, data, _ = self.n.request("POST", path, body=json.dumps(
                {"model": "kate", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).encode(),
                headers=dict(hdrs, **{"Content-Type": "application/json"}))
            self.assertEqual(status, 502, (path, data))
            self.assertNotIn("model_not_found", data.decode())
        # the provider refusing the request is the caller's 400, not a gateway 502 (which the
        # SDKs would retry), and nexo does not retry it either
        script(self.fport, [{"error": {"status": 400, "type": "invalid_request_error",
                                       "message": "bad things"}}])
        r = node("openai_chat.cjs", self.url + "/v1", TOKEN, "kate", "chat")
        self.assertEqual(r["error"]["status"], 400, r)
        self.assertEqual(r["error"]["name"], "BadRequestError")
        self.assertEqual(len(fake_requests(self.fport)), 3)  # (the two 404s, each asked once)
        # what nexo cannot honour is refused, not ignored
        for extra, param in (({"n": 2}, "n:"), ({"temperature": 7}, "temperature:"),
                             ({"response_format": {"type": "json_object"}}, "response_format:"),
                             ({"logprobs": True}, "logprobs:"),
                             # tools of the client's own would be dropped: the agent's run inside
                             ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools:"),
                             ({"functions": [{"name": "f"}]}, "functions:"),
                             ({"tool_choice": "required"}, "tool_choice:"),
                             ({"stream": "yes"}, "stream:"),
                             ({"stream_options": {"include_usage": True}}, "stream_options:"),
                             ({"modalities": ["text", "audio"]}, "modalities:"),
                             ({"audio": {"voice": "alloy", "format": "wav"}}, "audio:"),
                             ({"max_completion_tokens": 0}, "max_completion_tokens:"),
                             ({"max_tokens": 2000000}, "max_tokens:"),
                             ({"user": 123}, "user:")):
            body = dict({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}, **extra)
            status, data, _ = self.n.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": "Bearer " + TOKEN})
            self.assertEqual(status, 400, (extra, data))
            err = json.loads(data)["error"]
            self.assertEqual(err["type"], "invalid_request_error")
            self.assertTrue(err["message"].startswith(param), err)
            self.assertEqual(err["param"], param[:-1], err)  # the field at fault, as OpenAI names it
        body = {"model": "kate", "max_tokens": 10, "temperature": 3,
                "messages": [{"role": "user", "content": "hi"}]}
        status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "x-api-key": TOKEN})
        self.assertEqual(status, 400, data)
        self.assertEqual(json.loads(data)["error"]["type"], "invalid_request_error")
        for extra, param in (({"tools": [{"name": "f", "input_schema": {"type": "object"}}]}, "tools:"),
                             ({"tool_choice": {"type": "any"}}, "tool_choice:"),
                             ({"stream": "true"}, "stream:"), ({"system": 5}, "system:"),
                             ({"system": [{"type": "image", "source": {"type": "base64",
                                                                      "media_type": "image/png",
                                                                      "data": "iVBORw0KGgo="}}]},
                              "system:"),
                             ({"metadata": {"user_id": 7}}, "metadata.user_id:"), ({"metadata": 7}, "metadata:"),
                             ({"max_tokens": 2000000}, "max_tokens:")):
            body = dict({"model": "kate", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
                        **extra)
            status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json", "x-api-key": TOKEN})
            self.assertEqual(status, 400, (extra, data))
            self.assertTrue(json.loads(data)["error"]["message"].startswith(param), data)
        # a conversation of blank messages is the caller's mistake (400), which the SDKs do not retry
        for content in ("", "   ", [], [{"type": "thinking", "thinking": "x", "signature": "s"}]):
            for stream in (False, True):
                body = {"model": "kate", "max_tokens": 10, "stream": stream,
                        "messages": [{"role": "user", "content": content}]}
                status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(body).encode(),
                                                 headers={"Content-Type": "application/json", "x-api-key": TOKEN})
                self.assertEqual(status, 400, (content, data))
                self.assertEqual(json.loads(data)["error"]["type"], "invalid_request_error", data)
        # an answer with no text has no text block (the API refuses an empty one sent back), and an
        # empty text block a client sends back (an older nexo's answer) is left out
        script(self.fport, [{"text": ""}, {"text": "fine"}])
        body = {"model": "kate", "max_tokens": 10, "messages": [{"role": "user", "content": "say nothing"}]}
        status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "x-api-key": TOKEN})
        self.assertEqual((status, json.loads(data)["content"]), (200, []), data)
        body["messages"] += [{"role": "assistant", "content": [{"type": "text", "text": ""}]},
                             {"role": "user", "content": "and now?"}]
        status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "x-api-key": TOKEN})
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(data)["content"], [{"type": "text", "text": "fine"}])
        # an empty list and "auto" ask for nothing nexo cannot do
        for body in ({"model": "kate", "tools": [], "tool_choice": "auto",
                      "messages": [{"role": "user", "content": "hi"}]},):
            script(self.fport, [{"text": "fine"}])
            status, data, _ = self.n.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": "Bearer " + TOKEN})
            self.assertEqual(status, 200, data)

    def test_upstream_limits_reach_each_api_in_its_own_terms(self):
        # an OpenAI-compatible provider's 429 ("requests") and an Anthropic one's 529: each
        # client gets its API's status and type, and the wait (a retry-after over max_backoff
        # ends the chain at once with it)
        limited = {"error": {"status": 429, "type": "rate_limit_error", "message": "Rate limit reached",
                             "retry_after": 3}}
        overloaded = {"error": {"status": 529, "type": "overloaded_error", "message": "Overloaded",
                                "retry_after": 3}}
        cases = (("gpt", limited, "/v1/chat/completions", 429, "requests"),
                 ("gpt", limited, "/v1/messages", 429, "rate_limit_error"),
                 ("kate", overloaded, "/v1/chat/completions", 503, "server_error"),
                 ("kate", overloaded, "/v1/messages", 529, "overloaded_error"))
        for agent, step, path, want_status, want_type in cases:
            script(self.fport, [step])
            n = len(fake_requests(self.fport))
            body = {"model": agent, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
            status, data, headers = self.n.request("POST", path, body=json.dumps(body).encode(),
                                                   headers={"Content-Type": "application/json",
                                                            "Authorization": "Bearer " + TOKEN})
            err = json.loads(data)["error"]
            self.assertEqual((status, err["type"]), (want_status, want_type), (agent, path, data))
            self.assertEqual(headers.get("retry-after"), "3", (agent, path))
            self.assertEqual(len(fake_requests(self.fport)), n + 1)
            if path == "/v1/chat/completions" and status == 429:
                self.assertEqual(err["code"], "rate_limit_exceeded")
        script(self.fport, [limited])
        r = node("openai_chat.cjs", self.url + "/v1", TOKEN, "gpt", "chat")
        self.assertEqual((r["error"]["status"], r["error"]["name"]), (429, "RateLimitError"), r)

    def test_an_unknown_model_with_a_long_non_ascii_name_gets_a_json_error(self):
        # the message names the model, cut to fit: never mid-character (the body was `null`)
        for path in ("/v1/chat/completions", "/v1/messages"):
            body = {"model": "é" * 100, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
            status, data, _ = self.n.request("POST", path, body=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": "Bearer " + TOKEN})
            self.assertEqual(status, 404, data)
            self.assertIn("no agent", json.loads(data)["error"]["message"])
        # no metric series of its own: a client cannot grow the exposition without bound
        _, metrics, _ = self.n.request("GET", "/metrics", listener="metrics",
                                       headers={"Authorization": "Bearer " + TOKEN})
        self.assertNotIn("é" * 10, metrics.decode())
        self.assertIn('nexo_agent_turns_total{agent="(unknown)",outcome="error"}', metrics.decode())

    def test_blank_text_from_an_openai_client_does_not_reach_a_claude_model(self):
        # "" and white space are fine to OpenAI and refused by the Messages API: dropped, and
        # the user messages on either side of an emptied assistant one become one
        script(self.fport, [{"text": "fine"}])
        body = {"model": "kate", "messages": [
            {"role": "user", "content": "Q1"}, {"role": "assistant", "content": ""},
            {"role": "user", "content": [{"type": "text", "text": " \n"}, {"type": "text", "text": "Q2"}]}]}
        status, data, _ = self.n.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": "Bearer " + TOKEN})
        self.assertEqual(status, 200, data)
        sent = fake_requests(self.fport)[-1]["body"]["messages"]
        self.assertEqual(sent, [{"role": "user", "content": [{"type": "text", "text": "Q1"},
                                                             {"type": "text", "text": "Q2"}]}])

    def test_a_session_message_that_is_blank_is_refused(self):
        # dropped as blank, it must not leave the client's last assistant message as the new input
        n = len(fake_requests(self.fport))
        for path in ("/v1/chat/completions", "/v1/messages"):
            for blank in (" ", ""):
                body = {"model": "kate", "max_tokens": 10, "messages": [{"role": "user", "content": "q1"},
                                                                        {"role": "assistant", "content": "a1"},
                                                                        {"role": "user", "content": blank}]}
                status, data, _ = self.n.request("POST", path, body=json.dumps(body).encode(),
                                                 headers={"Content-Type": "application/json",
                                                          "X-Nexo-Session": "blank", "Authorization": "Bearer " + TOKEN})
                self.assertEqual(status, 400, (path, data))
                self.assertIn("must be the user's", json.loads(data)["error"]["message"])
        self.assertEqual(len(fake_requests(self.fport)), n)

    def test_a_clients_cache_marks_stay_within_anthropics_four(self):
        # the agent marks its system prompt and tools (2 of the API's 4): a stateless request keeps
        # its last 2 marks (a tool_result's inner block counts), a session's message none, so that
        # stored turns do not pile them up (the fake refuses a 5th, as the API does)
        cc = {"type": "ephemeral"}

        def marks(body):
            def count(blocks):
                return sum(("cache_control" in b) + count(b["content"] if isinstance(b.get("content"), list) else [])
                           for b in blocks if isinstance(b, dict))
            n = sum(count(m["content"]) for m in body["messages"] if isinstance(m["content"], list))
            n += sum("cache_control" in b for b in body.get("system") or [] if isinstance(b, dict))
            return n + sum("cache_control" in t for t in body.get("tools") or [])

        hdrs = {"Content-Type": "application/json", "x-api-key": TOKEN}
        msgs = [{"role": "user", "content": [{"type": "text", "text": "look", "cache_control": cc}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "time_now",
                                                   "input": {}, "cache_control": cc}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "noon", "cache_control": cc}]},
                    {"type": "text", "text": "and now?", "cache_control": cc}]}]
        script(self.fport, [{"text": "ok"}])
        status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(
            {"model": "tutor", "max_tokens": 10, "messages": msgs}).encode(), headers=hdrs)
        self.assertEqual(status, 200, data)
        sent = fake_requests(self.fport)[-1]["body"]
        self.assertEqual(marks(sent), 4)
        last = sent["messages"][-1]["content"]
        self.assertEqual(("cache_control" in last[0]["content"][0], "cache_control" in last[1]), (True, True))
        self.assertNotIn("cache_control", sent["messages"][0]["content"][0])
        for i in range(3):
            script(self.fport, [{"text": "turn %d" % i}])
            status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(
                {"model": "tutor", "max_tokens": 10, "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "q%d" % i, "cache_control": cc}]}]}).encode(),
                headers=dict(hdrs, **{"X-Nexo-Session": "marks"}))
            self.assertEqual(status, 200, data)
            self.assertEqual(marks(fake_requests(self.fport)[-1]["body"]), 2, i)

    def test_a_body_that_is_json_but_not_an_object(self):
        for path, headers in (("/v1/chat/completions", {"Authorization": "Bearer " + TOKEN}),
                              ("/v1/messages", {"x-api-key": TOKEN})):
            status, data, _ = self.n.request("POST", path, body=b"[1, 2]",
                                             headers=dict(headers, **{"Content-Type": "application/json"}))
            self.assertEqual(status, 400, data)
            self.assertIn("must be a JSON object", data.decode())

    def test_models_one_by_one_and_in_anthropics_shape(self):
        auth = {"Authorization": "Bearer " + TOKEN}
        status, data, _ = self.n.request("GET", "/v1/models/kate", headers=auth)
        self.assertEqual(status, 200, data)
        one = json.loads(data)
        self.assertEqual((one["id"], one["object"], one["owned_by"]), ("kate", "model", "nexo"))
        status, data, _ = self.n.request("GET", "/v1/models", headers=auth)
        listed = [m for m in json.loads(data)["data"] if m["id"] == "kate"]
        self.assertEqual(listed, [one])  # the same, "created" included
        status, data, _ = self.n.request("GET", "/v1/models/nobody", headers=auth)
        self.assertEqual(status, 404, data)
        self.assertEqual(json.loads(data)["error"]["code"], "model_not_found")
        # the Anthropic SDK's models.list(): its own shape
        status, data, _ = self.n.request("GET", "/v1/models", headers={"x-api-key": TOKEN,
                                                                        "anthropic-version": "2023-06-01"})
        self.assertEqual(status, 200, data)
        page = json.loads(data)
        self.assertFalse(page["has_more"])
        kate = [m for m in page["data"] if m["id"] == "kate"][0]
        self.assertEqual((kate["type"], kate["display_name"]), ("model", "kate"))
        self.assertRegex(kate["created_at"], r"^\d{4}-\d\d-\d\dT")
        self.assertEqual((page["first_id"], page["last_id"]), (page["data"][0]["id"], page["data"][-1]["id"]))
        status, data, headers = self.n.request("GET", "/v1/models/nobody",
                                               headers={"x-api-key": TOKEN, "anthropic-version": "2023-06-01"})
        self.assertEqual(status, 404, data)
        self.assertEqual(json.loads(data)["error"]["type"], "not_found_error")
        self.assertRegex(dict(headers).get("request-id", ""), r"^req_")

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
                # message_start went out before the model's usage was known: the final counts
                # come with message_delta, input included
                self.assertGreater(r["usage"]["input_tokens"], 0, (mod, agent, r))
                self.assertGreater(r["usage"]["output_tokens"], 0, (mod, agent, r))
            r = node("anthropic_messages.cjs", mod, self.url, "wrong", "kate", "chat")
            self.assertEqual(r["error"]["status"], 401, (mod, r))

    def test_anthropic_sdks_count_tokens(self):
        for mod in ("@anthropic-ai/sdk", "anthropic-sdk-0"):
            hi = node("anthropic_messages.cjs", mod, self.url, TOKEN, "kate", "count", "hi")
            self.assertEqual(list(hi), ["input_tokens"], (mod, hi))
            self.assertGreater(hi["input_tokens"], 0)
            long = node("anthropic_messages.cjs", mod, self.url, TOKEN, "kate", "count", "word " * 400)
            self.assertGreater(long["input_tokens"], hi["input_tokens"] + 300, (mod, long))
            told = node("anthropic_messages.cjs", mod, self.url, TOKEN, "kate", "count", "hi",
                        "Answer in French, briefly, and never mention the weather. " * 10)
            self.assertGreater(told["input_tokens"], hi["input_tokens"] + 50, (mod, told))
            # the agent's own prompt and tools count (the message alone is a few tokens): kate
            # offers every built-in tool (~680 tokens of schemas), tutor two of them (~150) and a
            # prompt of ~230 tokens
            self.assertGreater(hi["input_tokens"], 500, (mod, hi))
            tutor = node("anthropic_messages.cjs", mod, self.url, TOKEN, "tutor", "count", "hi")
            self.assertGreater(tutor["input_tokens"], 350, (mod, tutor))
            self.assertLess(tutor["input_tokens"], hi["input_tokens"], (mod, tutor, hi))
            r = node("anthropic_messages.cjs", mod, self.url, TOKEN, "nobody", "count", "hi")
            self.assertEqual((r["error"]["status"], r["error"]["type"]), (404, "not_found_error"), (mod, r))
            r = node("anthropic_messages.cjs", mod, self.url, "wrong", "kate", "count", "hi")
            self.assertEqual(r["error"]["status"], 401, (mod, r))
        self.assertEqual(fake_requests(self.fport), [])  # counted here, no model called

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
        self.assertEqual(reqs[-1]["body"].get("metadata"), {"user_id": "alice"})  # the end user, upstream

    def test_the_end_user_reaches_the_provider(self):
        # as the caller names it; a long name shortened as a session name is (the APIs cap it)
        long_name = "u" * 300
        for user, want in (("bob", "bob"), (long_name, None)):
            script(self.fport, [{"text": "hi"}])
            status, data, _ = self.n.request("POST", "/v1/chat/completions", body=json.dumps(
                {"model": "gpt", "user": user, "messages": [{"role": "user", "content": "q"}]}).encode(),
                headers={"Content-Type": "application/json", "Authorization": "Bearer " + TOKEN})
            self.assertEqual(status, 200, data)
            sent = fake_requests(self.fport)[-1]["body"]["user"]
            if want:
                self.assertEqual(sent, want)
            else:
                self.assertTrue(sent.startswith("u" * 200 + "~") and len(sent) == 225, sent)


if __name__ == "__main__":
    main()
