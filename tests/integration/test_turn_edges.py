"""Turns at their edges, end to end against the fake provider: a caller of a merged (collect)
turn hanging up, a turn cancelled mid-stream still charged to the daily budget, sessions left
valid after the tool-iteration limit, an answer cut off inside a tool call and an empty answer,
tool arguments that are not JSON never running the tool, and answers to callers that do not
stream, which stream upstream all the same (timeouts on silence, retries after a break)."""
import concurrent.futures
import json
import re
import time
import unittest

from nexo_harness import Nexo, main, recv_all, write_config
from peers import FAKE_KEY, FakePeers, fake_requests, llm_yaml, release, script

CONFIG = """\
agents:
  - id: coll
    model: {provider: anthropic, model: m}
    config: {queue_mode: collect}
  - id: budgeted
    model: {provider: anthropic, model: m}
    limits: {daily_token_budget: 1000000}
  - id: limited
    model: {provider: anthropic, model: m}
    allowed_tools: [time_now]
    limits: {max_tool_iterations: 1}
  - id: oai
    model: {provider: openai, model: gpt-4o-mini}
    allowed_tools: [time_now]
"""


class TurnEdges(FakePeers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_peers()
        write_config(cls.cfg.name, {
            "llm.yaml": llm_yaml(cls.fport, "  openai: {api_key: %s, base_url: http://127.0.0.1:%d/v1}\n"
                                 % (FAKE_KEY, cls.fport)),
            "agents.yaml": CONFIG,
            "gateway.yaml": "limits: {stream_keepalive: 200ms}\n",
        })
        cls.n = Nexo(config_dir=cls.cfg.name).start()

    @classmethod
    def tearDownClass(cls):
        cls.stop_peers()

    def chat(self, agent, text, session=None):
        headers = {"Content-Type": "application/json"}
        if session:
            headers["X-Nexo-Session"] = session
        body = json.dumps({"model": agent, "messages": [{"role": "user", "content": text}]})
        status, data, _ = self.n.request("POST", "/v1/chat/completions", body=body.encode(),
                                         headers=headers, timeout=30)
        return status, json.loads(data)

    def wait_metric(self, pattern, value, limit=10.0):
        deadline = time.monotonic() + limit
        while self.metric(pattern) != value:
            self.assertLess(time.monotonic(), deadline, "%s never reached %s" % (pattern, value))
            time.sleep(0.01)

    def metric(self, pattern):
        _, body, _ = self.n.request("GET", "/metrics", listener="metrics")
        m = re.search(pattern, body.decode(), re.M)
        return float(m.group(1)) if m else None

    def test_caller_of_a_merged_turn_hangs_up(self):
        script(self.fport, [{"hold": "first", "text": "first"}, {"hold": "second", "text": "together"}])
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            a = ex.submit(self.chat, "coll", "a", "merge-1")
            self.wait_requests(1)
            b = ex.submit(self.chat, "coll", "b", "merge-1")
            self.wait_metric(r"^nexo_agent_turns_in_flight (\S+)$", 2)  # b waits behind a
            c = self.send_raw("coll", "c", "merge-1")  # c will join b's turn
            self.wait_metric(r"^nexo_agent_turns_in_flight (\S+)$", 3)
            release(self.fport, "first")
            self.assertEqual(a.result()[0], 200)
            self.wait_requests(2)  # b and c, merged into one turn, are with the model
            c.close()
            release(self.fport, "second")
            status, r = b.result()
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["message"]["content"], "together")
        self.assertIsNone(self.n.proc.poll())
        self.assertEqual(self.metric(r"^nexo_agent_turns_in_flight (\S+)$"), 0)  # counted once each
        status, r = self.chat("coll", "still there?", "merge-1")
        self.assertEqual(status, 200, r)

    def merge_behind_a_running_turn(self, session, follower_raw):
        """a runs; then b (a raw socket) and c queue and are merged into one turn, b's, once a is
        answered (a's step holds as "first" until then). Returns (b, c): c is a raw socket or a
        future of self.chat."""
        ex = concurrent.futures.ThreadPoolExecutor(2)
        self.addCleanup(ex.shutdown)
        a = ex.submit(self.chat, "coll", "a", session)
        self.wait_requests(1)
        lead = self.send_raw("coll", "b", session)
        self.wait_metric(r"^nexo_agent_turns_in_flight (\S+)$", 2)
        follow = (self.send_raw("coll", "c", session) if follower_raw
                  else ex.submit(self.chat, "coll", "c", session))
        self.wait_metric(r"^nexo_agent_turns_in_flight (\S+)$", 3)
        release(self.fport, "first")
        self.assertEqual(a.result()[0], 200)
        self.wait_requests(2)  # b and c, merged into one turn, are with the model
        return lead, follow

    def test_the_leader_of_a_merged_turn_hangs_up(self):
        """The caller whose message started a merged turn goes away: the turn still answers the
        caller merged into it, and both messages are in the session's history."""
        script(self.fport, [{"hold": "first", "text": "first"}, {"hold": "second", "text": "together"},
                            {"text": "next"}])
        lead, follow = self.merge_behind_a_running_turn("merge-2", follower_raw=False)
        lead.close()
        release(self.fport, "second")
        status, r = follow.result()
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["message"]["content"], "together")
        self.wait_metric(r"^nexo_agent_turns_in_flight (\S+)$", 0)
        status, r = self.chat("coll", "d", "merge-2")
        self.assertEqual(status, 200, r)
        sent = fake_requests(self.fport)[-1]["body"]["messages"]
        self.assertEqual([m["role"] for m in sent], ["user", "assistant"] * 2 + ["user"])
        self.assertEqual([b["text"] for b in sent[2]["content"]], ["b", "c"])
        self.assertEqual(sent[3]["content"][0]["text"], "together")

    def test_every_caller_of_a_merged_turn_hangs_up(self):
        """Once nobody waits for a merged turn any more, its model call is cancelled (the fake
        would hold it for 30 s)."""
        script(self.fport, [{"hold": "first", "text": "first"}, {"hang_ms": 30000, "text": "late"}])
        lead, follow = self.merge_behind_a_running_turn("merge-3", follower_raw=True)
        lead.close()  # the turn goes on for c (the test above)
        follow.close()
        self.wait_metric(r"^nexo_agent_turns_in_flight (\S+)$", 0, limit=10)
        self.assertIsNone(self.n.proc.poll())

    def test_a_turn_cancelled_mid_stream_is_charged(self):
        before = self.metric(r'nexo_agent_tokens_budget_remaining\{agent="budgeted"\} (\S+)')
        script(self.fport, [{"text": "x" * 400, "chunks": 40, "delay_ms": 50}])
        s = self.send_raw("budgeted", "tell me a long story " * 50, stream=True)
        self.assertIn(b"200 OK", s.recv(200))
        time.sleep(0.3)
        s.close()
        deadline = time.monotonic() + 10
        while True:
            after = self.metric(r'nexo_agent_tokens_budget_remaining\{agent="budgeted"\} (\S+)')
            if after is not None and (before is None or after < before):
                break
            self.assertLess(time.monotonic(), deadline, "the cancelled turn was never charged")
            time.sleep(0.05)
        # at least the prompt's estimate (~1,100 bytes of question) and some streamed words
        self.assertLessEqual(after, (before or 1000000) - 250)

    def test_the_iteration_limit_leaves_the_session_valid(self):
        tool = {"tool_use": {"name": "time_now", "input": {}}}
        script(self.fport, [tool, tool])
        body = json.dumps({"model": "limited", "messages": [{"role": "user", "content": "go"}]})
        status, data, headers = self.n.request("POST", "/v1/chat/completions", body=body.encode(), timeout=30,
                                               headers={"Content-Type": "application/json",
                                                        "X-Nexo-Session": "iter-1"})
        r = json.loads(data)
        self.assertNotEqual(status, 200, r)  # the limit is an error for this turn
        self.assertEqual(r["error"]["type"], "tool_iteration_limit")
        # not retried by the SDKs: a retry would run the tools (and their effects) again
        self.assertEqual({k.lower(): v for k, v in dict(headers).items()}.get("x-should-retry"), "false")
        script(self.fport, [{"text": "fine"}])
        status, r = self.chat("limited", "again", "iter-1")
        self.assertEqual(status, 200, r)  # the fake refuses a tool_use without its result
        sent = fake_requests(self.fport)[-1]["body"]["messages"]
        self.assertEqual([m["role"] for m in sent], ["user", "assistant", "user", "assistant", "user"])
        closing = sent[-1]["content"]  # the open call, closed as "not run", then the new message
        self.assertEqual(closing[0]["type"], "tool_result")
        self.assertTrue(closing[0]["is_error"])
        self.assertIn("limit of tool iterations", closing[0]["content"])
        self.assertEqual(closing[-1], {"type": "text", "text": "again"})

    def test_an_answer_cut_off_inside_a_tool_call_and_an_empty_answer(self):
        script(self.fport, [{"tool_use": {"name": "time_now", "input": {}}, "stop_reason": "max_tokens"}])
        status, r = self.chat("oai", "go", "cut-1")
        self.assertEqual(status, 200, r)
        script(self.fport, [{"text": "fine"}])
        status, r = self.chat("oai", "again", "cut-1")
        self.assertEqual(status, 200, r)  # OpenAI refuses tool_calls not followed by tool messages
        self.assertEqual(r["choices"][0]["message"]["content"], "fine")

        script(self.fport, [{"text": ""}])
        status, r = self.chat("limited", "say nothing", "empty-1")
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["message"]["content"], "")
        script(self.fport, [{"text": "now something"}])
        status, r = self.chat("limited", "and now?", "empty-1")
        self.assertEqual(status, 200, r)
        sent = fake_requests(self.fport)[-1]["body"]["messages"]
        self.assertFalse([m for m in sent if m["role"] == "assistant" and not m["content"]], sent)

    def test_an_empty_final_answer_is_empty_not_the_lead_in(self):
        for agent in ("limited", "oai"):
            script(self.fport, [{"text": "Let me check.", "tool_use": {"name": "time_now", "input": {}}},
                                {"text": ""}])
            status, r = self.chat(agent, "what time is it?")
            self.assertEqual(status, 200, r)
            self.assertEqual(r["choices"][0]["message"]["content"], "", agent)

    def test_a_streamed_answer_keeps_the_steps_of_a_turn_apart(self):
        # the words before a tool call and the answer after it come as one stream: a blank line
        # between them, not "time.It is"; not streamed, the answer is the final step's alone
        for agent in ("limited", "oai"):
            script(self.fport, [{"text": "Let me check the time.", "tool_use": {"name": "time_now", "input": {}}},
                                {"text": "It is noon.", "chunks": 2}])
            s = self.n.connect()
            body = json.dumps({"model": agent, "stream": True,
                               "messages": [{"role": "user", "content": "time?"}]}).encode()
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            raw = recv_all(s, 30).decode()
            s.close()
            text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                           for line in raw.split("\n") if line.startswith("data: {") and '"choices":[{' in line)
            self.assertEqual(text, "Let me check the time.\n\nIt is noon.", (agent, raw[-400:]))
            script(self.fport, [{"text": "Let me check the time.", "tool_use": {"name": "time_now", "input": {}}},
                                {"text": "It is noon."}])
            status, r = self.chat(agent, "time?")
            self.assertEqual(r["choices"][0]["message"]["content"], "It is noon.", agent)

    def test_a_stream_starts_with_the_first_tool_and_keeps_alive(self):
        # nothing said before the tool: the stream still starts when the tool does (the client
        # and any proxy between see an answer coming), and says it is alive every
        # limits.stream_keepalive while the next model call takes its time
        tool = {"tool_use": {"name": "time_now", "input": {}}}
        for path, body, alive, end in (
                ("/v1/chat/completions", {"model": "limited", "stream": True}, b": keep-alive\n\n",
                 b'"finish_reason":"stop"'),
                ("/v1/messages", {"model": "limited", "stream": True, "max_tokens": 50}, b"event: ping\n",
                 b"event: message_stop")):
            script(self.fport, [tool, {"hold": path, "text": "Done."}])
            before = len(fake_requests(self.fport))
            body = json.dumps(dict(body, messages=[{"role": "user", "content": "time?"}])).encode()
            s = self.n.connect()
            s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body)
            self.wait_requests(before + 2)  # the tool ran; the second model call hangs
            s.settimeout(1.0)
            head = s.recv(65536)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            s.settimeout(20.0)
            while head.count(alive) < 3:  # the model call is held at the fake until then
                more = s.recv(65536)
                self.assertTrue(more, (path, head[-600:]))
                head += more
            release(self.fport, path)
            raw = head + recv_all(s, 30)
            s.close()
            self.assertGreaterEqual(raw.count(alive), 3, (path, raw[-600:]))
            self.assertIn(end, raw)  # and it ends as a whole answer does

    def test_arguments_that_are_not_json_never_run_the_tool(self):
        script(self.fport, [{"tool_use": {"name": "time_now", "input": {}},
                             "raw_arguments": "{\"timezone\": \"Asia/Tok"},
                            {"text": "sorry"}])
        status, r = self.chat("oai", "what time is it in Tokyo?")
        self.assertEqual(status, 200, r)
        tool_msg = fake_requests(self.fport)[1]["body"]["messages"][-1]
        self.assertEqual(tool_msg["role"], "tool")
        self.assertIn("not run: the arguments are not valid JSON", tool_msg["content"])
        self.assertNotRegex(tool_msg["content"], r"\d{4}-\d\d-\d\dT")


class UnstreamedCallers(FakePeers, unittest.TestCase):
    """A caller that does not stream (stream false, a channel) still has its answer streamed
    upstream: the provider's `timeout` is the longest silence, not the whole answer's time."""

    @classmethod
    def setUpClass(cls):
        cls.start_peers()
        write_config(cls.cfg.name, {
            "llm.yaml": ("providers:\n  anthropic: {api_key: %s, base_url: http://127.0.0.1:%d, timeout: 2s}\n"
                         "  openai: {api_key: %s, base_url: http://127.0.0.1:%d/v1}\n"
                         "retry: {initial_backoff_ms: 10, max_backoff_ms: 20}\n")
                        % (FAKE_KEY, cls.fport, FAKE_KEY, cls.fport),
            "agents.yaml": ("agents:\n  - id: patient\n    model: {provider: anthropic, model: m}\n"
                            "  - id: local\n    model: {provider: openai, model: llama3}\n"
                            "    system_prompt: %s\n" % ("Answer briefly and kindly. " * 40)),
        })
        cls.n = Nexo(config_dir=cls.cfg.name).start()

    @classmethod
    def tearDownClass(cls):
        cls.stop_peers()

    chat = TurnEdges.chat

    def test_a_long_answer_that_never_goes_quiet_is_not_cut(self):
        # (timeout 2 s against chunks 400 ms apart: a stalled loop on a slow machine stays within it)
        text = "one two three four five six seven"
        script(self.fport, [{"text": text, "chunks": 7, "delay_ms": 400}])
        t0 = time.monotonic()
        status, r = self.chat("patient", "think it over")
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["message"]["content"], text)
        self.assertGreater(time.monotonic() - t0, 2.2)  # longer than the 2 s timeout, whole
        reqs = fake_requests(self.fport)
        self.assertEqual(len(reqs), 1)
        self.assertIs(reqs[0]["body"]["stream"], True)

    def test_a_stream_without_usage_is_estimated(self):
        # a server that sends no usage in streams (older Ollama): the caller's usage, from an
        # estimate of the system prompt (~270 tokens here), the message and the answer
        script(self.fport, [{"text": "word " * 200, "no_usage": True}])
        status, r = self.chat("local", "hello there")
        self.assertEqual(status, 200, r)
        self.assertGreater(r["usage"]["prompt_tokens"], 250, r["usage"])
        self.assertGreater(r["usage"]["completion_tokens"], 150, r["usage"])

    def test_a_break_half_way_is_retried_when_no_text_reached_the_caller(self):
        script(self.fport, [{"text": "the first half", "chunks": 2, "error_midstream": "overloaded_error"},
                            {"text": "all of it"}])
        status, r = self.chat("patient", "again")
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["message"]["content"], "all of it")
        self.assertEqual(len(fake_requests(self.fport)), 2)

    def test_a_break_after_text_reached_a_streaming_caller_is_an_error_event_in_openais_shape(self):
        script(self.fport, [{"text": "the first half", "chunks": 2, "error_midstream": "overloaded_error"}])
        body = json.dumps({"model": "patient", "stream": True, "messages": [{"role": "user", "content": "go"}]})
        status, data, _ = self.n.request("POST", "/v1/chat/completions", body=body.encode(),
                                         headers={"Content-Type": "application/json"}, timeout=30)
        self.assertEqual(status, 200, data)
        events = [json.loads(line[6:]) for line in data.decode().split("\n")
                  if line.startswith("data: {")]
        errors = [e["error"] for e in events if "error" in e]
        self.assertEqual(len(errors), 1, events)
        self.assertEqual(sorted(errors[0]), ["code", "message", "param", "type"])  # as OpenAI's errors
        self.assertIsNone(errors[0]["param"])


if __name__ == "__main__":
    main()
