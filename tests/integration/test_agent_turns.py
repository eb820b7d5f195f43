"""Agent turns end to end through nexo's HTTP API against the fake provider: a tool round trip,
a refused tool, ordered turns per session, 100 sessions in parallel, a disconnect cancelling the
upstream request, 429 then success, and failover to a fallback model."""
import base64
import concurrent.futures
import http.client
import json
import os
import sqlite3
import tempfile
import time
import unittest

from nexo_harness import Nexo, main, write_config
from peers import FakePeers, fake_requests, free_port, release, script

CONFIG = """\
agents:
  - id: kate
    model: {provider: anthropic, model: claude-haiku-4-5}
    allowed_tools: [time_now]
    system_prompt: You are Kate.
  - id: oai
    model: {provider: openai, model: gpt-4o-mini}
    allowed_tools: [time_now]
  - id: collector
    model: {provider: anthropic, model: m}
    config: {queue_mode: collect}
  - id: interrupter
    model: {provider: anthropic, model: m}
    config: {queue_mode: interrupt}
  - id: tiny
    model: {provider: anthropic, model: m}
    config: {queue_cap: 1}
  - id: fetcher
    model: {provider: anthropic, model: m}
    allowed_tools: [http_fetch]
    outbound_allowlist: {http: ["127.0.0.1", "*.example.org"]}
  - id: failover
    model:
      provider: down
      model: claude-haiku-4-5
      fallbacks: [{provider: openai, model: gpt-4o-mini}]
"""


class Turns(FakePeers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_peers()
        base = "http://127.0.0.1:%d" % cls.fport
        write_config(cls.cfg.name, {
            "llm.yaml": ("providers:\n"
                         "  anthropic: {api_key: sk-fake-key, base_url: %s}\n"
                         "  openai: {api_key: sk-fake-key, base_url: %s/v1}\n"
                         "  down: {kind: anthropic, api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                         "retry: {max_attempts: 2, initial_backoff_ms: 10, max_backoff_ms: 50}\n")
                        % (base, base, free_port()),
            "agents.yaml": CONFIG,
        })
        cls.n = Nexo(config_dir=cls.cfg.name).start()

    @classmethod
    def tearDownClass(cls):
        cls.stop_peers()

    def requests(self):
        return fake_requests(self.fport)

    def chat(self, agent, text, session=None, timeout=30, **extra):
        headers = {"Content-Type": "application/json"}
        if session:
            headers["X-Nexo-Session"] = session
        body = json.dumps(dict({"model": agent, "messages": [{"role": "user", "content": text}]}, **extra))
        status, data, _ = self.n.request("POST", "/v1/chat/completions", body=body.encode(),
                                         headers=headers, timeout=timeout)
        return status, json.loads(data)

    def test_tool_round_trip(self):
        script(self.fport, [{"tool_use": {"name": "time_now", "input": {}}}, {"text": "it is late"}])
        status, r = self.chat("kate", "what time is it?")
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["message"]["content"], "it is late")
        reqs = self.requests()
        self.assertEqual(len(reqs), 2)
        self.assertEqual([t["name"] for t in reqs[0]["body"]["tools"]], ["time_now"])
        result = reqs[1]["body"]["messages"][-1]["content"][0]
        self.assertEqual(result["type"], "tool_result")
        self.assertRegex(result["content"], r"\d{4}-\d\d-\d\dT")
        self.assertFalse(result.get("is_error", False))

    def test_refused_tool_is_an_error_for_the_model_and_never_runs(self):
        script(self.fport, [{"tool_use": {"name": "file_write",
                                          "input": {"path": "x.txt", "content": "pwned"}}},
                            {"text": "I may not"}])
        status, r = self.chat("kate", "write a file")
        self.assertEqual(status, 200, r)
        result = self.requests()[1]["body"]["messages"][-1]["content"][0]
        self.assertTrue(result["is_error"])
        self.assertIn("not allowed", result["content"])
        self.assertRegex(self.n.read_log(), r"tool \"file_write\" refused: not in allowed_tools")
        _, body, _ = self.n.request("GET", "/metrics", listener="metrics")
        self.assertRegex(body.decode(), r'nexo_tool_calls_total\{agent="kate",tool="file_write",'
                                        r'outcome="blocked"\} 1')

    def test_a_response_runs_at_most_32_tool_calls(self):
        calls = [{"name": "time_now", "input": {}} for _ in range(40)]
        script(self.fport, [{"tool_use": calls}, {"text": "done"}])
        status, r = self.chat("kate", "what time is it, forty times?")
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["message"]["content"], "done")
        results = self.requests()[1]["body"]["messages"][-1]["content"]
        self.assertEqual(len(results), 40)  # every tool_use gets its result, in order
        ran = [b for b in results if not b.get("is_error")]
        refused = [b for b in results if b.get("is_error")]
        self.assertEqual(len(ran), 32)
        self.assertEqual(results[:32], ran)
        for b in ran:
            self.assertRegex(b["content"], r"\d{4}-\d\d-\d\dT")
        self.assertEqual(len(refused), 8)
        self.assertIn("at most 32 tool calls", refused[0]["content"])
        self.assertIn("40 tool calls; 8 not run", self.n.read_log())

    def test_http_fetch_obeys_the_agents_outbound_allowlist(self):
        url = "http://127.0.0.1:%d/" % self.fport
        script(self.fport, [{"tool_use": [{"name": "http_fetch", "input": {"url": url}},
                                          {"name": "http_fetch", "input": {"url": "http://example.com/"}}]},
                            {"text": "could not"}])
        status, r = self.chat("fetcher", "fetch two pages")
        self.assertEqual(status, 200, r)
        results = self.requests()[1]["body"]["messages"][-1]["content"]
        self.assertTrue(all(b.get("is_error") for b in results), results)
        self.assertIn("resolves to 127.0.0.1, a loopback, private or link-local address", results[0]["content"])
        self.assertIn('host "example.com" is not in this agent\'s outbound_allowlist', results[1]["content"])

    def test_a_long_retry_after_is_passed_on_not_waited_out(self):
        # the provider asks for 30 s, more than retry.max_backoff_ms (50 ms here): nexo does not
        # ask again early, and the caller gets the 429 with the provider's retry-after at once
        script(self.fport, [{"error": {"status": 429, "type": "rate_limit_error",
                                       "message": "slow down", "retry_after": 30}}])
        t0 = time.monotonic()
        body = json.dumps({"model": "kate", "messages": [{"role": "user", "content": "hi"}]})
        status, data, headers = self.n.request("POST", "/v1/chat/completions", body=body.encode(),
                                               headers={"Content-Type": "application/json"})
        self.assertEqual(status, 429, data)
        self.assertEqual(headers.get("retry-after"), "30")
        self.assertEqual(len(self.requests()), 1)
        self.assertLess(time.monotonic() - t0, 10)

    def test_images_reach_the_model_from_both_apis(self):
        png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
        openai_msg = {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}}]}
        anthropic_msg = {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "text", "text": "what is this?"}]}
        for agent in ("kate", "oai"):
            for path, body in (("/v1/chat/completions", {"model": agent, "messages": [openai_msg]}),
                               ("/v1/messages", {"model": agent, "max_tokens": 50,
                                                 "messages": [anthropic_msg]})):
                script(self.fport, [{"text": "a pixel"}])
                status, data, _ = self.n.request("POST", path, body=json.dumps(body).encode(),
                                                 headers={"Content-Type": "application/json"})
                self.assertEqual(status, 200, (agent, path, data))
                sent = json.dumps(self.requests()[-1]["body"]["messages"][-1])
                self.assertIn(png, sent, (agent, path))
                self.assertIn("what is this?", sent)
        # what cannot be passed on is refused, not dropped
        bad = {"model": "kate", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/tiff;base64," + png}}]}]}
        status, data, _ = self.n.request("POST", "/v1/chat/completions", body=json.dumps(bad).encode(),
                                         headers={"Content-Type": "application/json"})
        self.assertEqual(status, 400, data)
        self.assertIn("image/png", json.loads(data)["error"]["message"])
        doc = {"model": "kate", "max_tokens": 10, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]}
        status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(doc).encode(),
                                         headers={"Content-Type": "application/json"})
        self.assertEqual(status, 400, data)

    def test_a_sessions_images_are_kept_as_files(self):
        """An image sent in a session is written under data/media/api/ and the history refers to
        it by path: the next turn sends the same bytes again, and neither the database nor the
        transcript holds the base64."""
        png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
        first = {"model": "kate", "max_tokens": 50, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "text", "text": "what is this?"}]}]}
        headers = {"Content-Type": "application/json", "X-Nexo-Session": "img-1"}
        script(self.fport, [{"text": "a pixel"}, {"text": "still a pixel"}])
        status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(first).encode(),
                                         headers=headers)
        self.assertEqual(status, 200, data)
        again = {"model": "kate", "max_tokens": 50,
                 "messages": [{"role": "user", "content": "and now?"}]}
        status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(again).encode(),
                                         headers=headers)
        self.assertEqual(status, 200, data)
        for req in self.requests()[-2:]:
            image = req["body"]["messages"][0]["content"][0]
            self.assertEqual(image, {"type": "image", "source": {"type": "base64",
                                                                 "media_type": "image/png", "data": png}})
        kept = os.listdir(os.path.join(self.n.data_dir, "media", "api"))
        self.assertEqual(len(kept), 1, kept)
        with open(os.path.join(self.n.data_dir, "media", "api", kept[0]), "rb") as f:
            self.assertEqual(f.read(), base64.b64decode(png))
        deadline = time.monotonic() + 10
        while True:  # the second turn's append commits after its answer
            db = sqlite3.connect(os.path.join(self.n.data_dir, "nexo.db"))
            try:
                rows = [r[0] for r in db.execute("SELECT content FROM messages WHERE session_key "
                                                 "LIKE ? ORDER BY seq", ("%img-1",))]
            finally:
                db.close()
            if len(rows) == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertEqual(len(rows), 4, rows)
        self.assertEqual(json.loads(rows[0])[0]["source"]["path"],
                         os.path.join(self.n.data_dir, "media", "api", kept[0]))
        self.assertNotIn(png[:40], "".join(rows))
        tdir = os.path.join(self.n.data_dir, "transcripts", "kate")
        text = "".join(open(os.path.join(tdir, f)).read() for f in os.listdir(tdir) if "img-1" in f)
        self.assertIn('"type":"nexo_media"', text)
        self.assertNotIn(png[:40], text)

    def test_stop_sequences_reach_the_model(self):
        for agent, key in (("kate", "stop_sequences"), ("oai", "stop")):
            for path, body in (("/v1/chat/completions", {"model": agent, "stop": "END",
                                                         "messages": [{"role": "user", "content": "hi"}]}),
                               ("/v1/messages", {"model": agent, "max_tokens": 50, "stop_sequences": ["END"],
                                                 "messages": [{"role": "user", "content": "hi"}]})):
                script(self.fport, [{"text": "fine"}])
                status, data, _ = self.n.request("POST", path, body=json.dumps(body).encode(),
                                                 headers={"Content-Type": "application/json"})
                self.assertEqual(status, 200, (agent, path, data))
                self.assertEqual(self.requests()[-1]["body"].get(key), ["END"], (agent, path))
        # each provider gets what it takes: at most 4 for OpenAI's, no whitespace-only ones for
        # Anthropic's (both refuse the request otherwise; the fake checks as they do)
        body = {"model": "oai", "max_tokens": 50, "stop_sequences": ["1", "2", "3", "4", "5", "6"],
                "messages": [{"role": "user", "content": "hi"}]}
        script(self.fport, [{"text": "fine"}])
        status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        self.assertEqual(status, 200, data)
        self.assertEqual(self.requests()[-1]["body"]["stop"], ["1", "2", "3", "4"])
        for stop, sent in (("\n", None), (["\n", "END"], ["END"])):
            body = {"model": "kate", "stop": stop, "messages": [{"role": "user", "content": "hi"}]}
            script(self.fport, [{"text": "fine"}])
            status, data, _ = self.n.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            self.assertEqual(status, 200, (stop, data))
            self.assertEqual(self.requests()[-1]["body"].get("stop_sequences"), sent)
        too_many = {"model": "kate", "stop": ["a", "b", "c", "d", "e"],
                    "messages": [{"role": "user", "content": "hi"}]}
        status, data, _ = self.n.request("POST", "/v1/chat/completions", body=json.dumps(too_many).encode(),
                                         headers={"Content-Type": "application/json"})
        self.assertEqual(status, 400, data)
        self.assertTrue(json.loads(data)["error"]["message"].startswith("stop:"))

    def test_the_stop_sequence_that_matched_is_named(self):
        """An Anthropic answer cut by one of the caller's stop sequences says which, streaming and
        not; the OpenAI shape says "stop"."""
        for stream in (False, True):
            body = {"model": "kate", "max_tokens": 50, "stop_sequences": ["END", "3."], "stream": stream,
                    "messages": [{"role": "user", "content": "count"}]}
            script(self.fport, [{"text": "1. 2. ", "stop_reason": "stop_sequence", "stop_sequence": "3."}])
            status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            self.assertEqual(status, 200, data)
            if stream:
                events = [json.loads(line[6:]) for line in data.decode().splitlines()
                          if line.startswith("data: ")]
                delta = [e for e in events if e["type"] == "message_delta"][0]["delta"]
            else:
                delta = json.loads(data)
            self.assertEqual((delta["stop_reason"], delta["stop_sequence"]), ("stop_sequence", "3."))
        script(self.fport, [{"text": "fine"}])
        status, data, _ = self.n.request("POST", "/v1/messages", body=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        stop = [json.loads(line[6:]) for line in data.decode().splitlines()
                if line.startswith("data: ") and '"message_delta"' in line][0]["delta"]
        self.assertEqual(stop, {"stop_reason": "end_turn", "stop_sequence": None})
        body = {"model": "kate", "stop": "3.", "messages": [{"role": "user", "content": "count"}]}
        script(self.fport, [{"text": "1. 2. ", "stop_reason": "stop_sequence"}])
        status, data, _ = self.n.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(data)["choices"][0]["finish_reason"], "stop")

    def test_two_messages_to_one_session_answer_in_order(self):
        script(self.fport, [{"text": "first", "hang_ms": 300}, {"text": "second"}])
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            a = ex.submit(self.chat, "kate", "one", "s-order")
            deadline = time.monotonic() + 10  # "one" is upstream (hanging) before "two" is sent
            while not self.requests() and time.monotonic() < deadline:
                time.sleep(0.01)
            b = ex.submit(self.chat, "kate", "two", "s-order")
            self.assertEqual(a.result()[1]["choices"][0]["message"]["content"], "first")
            self.assertEqual(b.result()[1]["choices"][0]["message"]["content"], "second")
        second = self.requests()[1]["body"]["messages"]
        self.assertEqual([m["content"][0]["text"] for m in second], ["one", "first", "two"])

    def wait_upstream(self, n):
        deadline = time.monotonic() + 10
        while len(self.requests()) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertGreaterEqual(len(self.requests()), n)

    def test_interrupt_mode_cancels_the_running_turn(self):
        script(self.fport, [{"hang_ms": 5000, "text": "slow"}, {"text": "fresh"}])
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            a = ex.submit(self.chat, "interrupter", "first", "s-int")
            self.wait_upstream(1)
            status, r = self.chat("interrupter", "second", "s-int")
            self.assertEqual((status, r["choices"][0]["message"]["content"]), (200, "fresh"))
            status, r = a.result()
            self.assertEqual(status, 409, r)
            self.assertEqual(r["error"]["type"], "interrupted")
        # the interrupted message stays in the session: the newer one is sent with it
        sent = self.requests()[-1]["body"]["messages"]
        self.assertEqual(sent[-1]["role"], "user")
        texts = [b["text"] for m in sent for b in (m["content"] if isinstance(m["content"], list)
                                                   else [{"text": m["content"]}]) if "text" in b]
        self.assertEqual(texts[-2:], ["first", "second"])

    def test_collect_mode_merges_waiting_messages_into_one_turn(self):
        script(self.fport, [{"hold": "first", "text": "first"}, {"text": "merged"}])
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            a = ex.submit(self.chat, "collector", "a", "s-col")
            self.wait_upstream(1)
            b = ex.submit(self.chat, "collector", "b", "s-col")
            c = ex.submit(self.chat, "collector", "c", "s-col")
            self.wait_in_flight(3)
            release(self.fport, "first")
            self.assertEqual(a.result()[1]["choices"][0]["message"]["content"], "first")
            self.assertEqual(b.result()[1]["choices"][0]["message"]["content"], "merged")
            self.assertEqual(c.result()[1]["choices"][0]["message"]["content"], "merged")
        reqs = self.requests()
        self.assertEqual(len(reqs), 2)
        last = reqs[1]["body"]["messages"][-1]
        self.assertEqual(last["role"], "user")
        self.assertEqual(sorted(b["text"] for b in last["content"]), ["b", "c"])

    def test_collect_mode_merges_only_messages_that_ask_for_the_same_call(self):
        # b asks for its own stop sequence: one call cannot stop at b's and not at c's, so b
        # gets a turn of its own and c and d, asking alike, share the next
        script(self.fport, [{"hold": "first", "text": "first"}, {"text": "bee"}, {"text": "merged"}])
        before = len(self.requests())
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            a = ex.submit(self.chat, "collector", "a", "s-col2")
            self.wait_upstream(before + 1)
            b = ex.submit(self.chat, "collector", "b", "s-col2", stop=["STOP"])
            self.wait_in_flight(2)
            c = ex.submit(self.chat, "collector", "c", "s-col2")
            self.wait_in_flight(3)
            d = ex.submit(self.chat, "collector", "d", "s-col2")
            self.wait_in_flight(4)
            release(self.fport, "first")
            answers = [f.result()[1]["choices"][0]["message"]["content"] for f in (a, b, c, d)]
        self.assertEqual(answers, ["first", "bee", "merged", "merged"])
        reqs = self.requests()[before:]
        self.assertEqual(len(reqs), 3)
        self.assertEqual(reqs[1]["body"].get("stop_sequences"), ["STOP"])
        self.assertNotIn("stop_sequences", reqs[2]["body"])
        self.assertEqual(sorted(b["text"] for b in reqs[2]["body"]["messages"][-1]["content"]), ["c", "d"])

    def test_an_image_message_is_not_overtaken_by_a_later_one(self):
        # A session's image is written as a file by a worker thread: meanwhile the turn holds its
        # place in the lane, so a text sent after it is answered after it (followup), and does
        # not find itself interrupted by the older message (interrupt)
        img = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + os.urandom(3000000)).decode()
        # (the interrupted call is held at the fake until B has come, however slow the machine)
        for agent, first in (("kate", {"hang_ms": 300}), ("interrupter", {"hold": "A-interrupter"})):
            with self.subTest(agent=agent):
                script(self.fport, [dict(first, text="one"), {"text": "two"}])
                before = len(self.requests())
                session = "s-img-order-" + agent
                with concurrent.futures.ThreadPoolExecutor(2) as ex:
                    a = ex.submit(self.chat, agent, [{"type": "text", "text": "A-image"},
                                                     {"type": "image_url", "image_url": {"url": img}}],
                                  session)
                    self.wait_in_flight(1)  # A's turn has started
                    b = ex.submit(self.chat, agent, "B-text", session)
                    sa, ra = a.result()
                    # the held step goes to whichever turn reaches the fake first: A's (then B
                    # interrupted it) or, were A interrupted before its call, B's own
                    release(self.fport, "A-" + agent)  # (a name per subtest: one fake, no reset)
                    sb, rb = b.result()
                self.assertEqual(sb, 200, rb)
                sent = self.requests()[before:]
                self.assertIn("B-text", json.dumps(sent[-1]["body"]["messages"][-1]))
                if agent == "kate":
                    self.assertEqual((sa, ra["choices"][0]["message"]["content"]), (200, "one"))
                    self.assertEqual(rb["choices"][0]["message"]["content"], "two")
                    self.assertEqual(len(sent), 2)
                    self.assertIn("A-image", json.dumps(sent[0]["body"]["messages"][-1]))
                else:  # the newer message interrupts the older one, never the other way round
                    self.assertEqual(sa, 409, ra)
                    self.assertEqual(ra["error"]["type"], "interrupted")

    def test_usage_counts_cached_prompt_tokens_as_each_api_does(self):
        # OpenAI's prompt_tokens include the cached ones (and say how many); Anthropic's
        # input_tokens leave them out and name them apart, streamed or not
        cached = {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 50,
                  "cache_creation_input_tokens": 20}
        script(self.fport, [{"text": "hi", "usage": cached}])
        status, r = self.chat("kate", "hello")
        self.assertEqual(status, 200, r)
        self.assertEqual(r["usage"], {"prompt_tokens": 80, "completion_tokens": 4, "total_tokens": 84,
                                      "prompt_tokens_details": {"cached_tokens": 50}})
        script(self.fport, [{"text": "hi", "usage": cached}])
        body = {"model": "kate", "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}
        status, data, headers = self.n.request("POST", "/v1/messages", body=json.dumps(body).encode(),
                                               headers={"Content-Type": "application/json"})
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(data)["usage"], {"input_tokens": 10, "cache_creation_input_tokens": 20,
                                                     "cache_read_input_tokens": 50, "output_tokens": 4})
        # each answer is named as the provider's API names it (the SDKs' request_id), errors too
        self.assertRegex(dict(headers).get("request-id", ""), r"^req_[A-Za-z0-9]{24}$")
        for path, name in (("/v1/messages", "request-id"), ("/v1/chat/completions", "x-request-id")):
            status, _, headers = self.n.request("POST", path, body=b"[]",
                                                headers={"Content-Type": "application/json"})
            self.assertEqual(status, 400)
            self.assertRegex(dict(headers).get(name, ""), r"^req_[A-Za-z0-9]{24}$")
        script(self.fport, [{"text": "hi", "usage": {"prompt_tokens": 100, "completion_tokens": 7,
                                                     "total_tokens": 107,
                                                     "prompt_tokens_details": {"cached_tokens": 80}}}])
        status, r = self.chat("oai", "hello")
        self.assertEqual(status, 200, r)
        self.assertEqual((r["usage"]["prompt_tokens"], r["usage"]["total_tokens"],
                          r["usage"]["prompt_tokens_details"]["cached_tokens"]), (100, 107, 80))

    def test_queue_cap_refuses_a_message_beyond_it(self):
        script(self.fport, [{"hold": "one", "text": "one"}, {"text": "two"}])
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            a = ex.submit(self.chat, "tiny", "1", "s-cap")
            self.wait_upstream(1)
            b = ex.submit(self.chat, "tiny", "2", "s-cap")
            self.wait_in_flight(2)  # "2" waits in the queue before "3" is sent
            body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "3"}]})
            status, data, h = self.n.request("POST", "/v1/chat/completions", body=body.encode(),
                                             headers={"Content-Type": "application/json",
                                                      "X-Nexo-Session": "s-cap"})
            release(self.fport, "one")
            r = json.loads(data)
            self.assertEqual(status, 429, r)
            self.assertEqual(r["error"]["type"], "session_busy")
            self.assertEqual(h.get("retry-after"), "1")  # the SDKs wait that, not their own backoff
            self.assertEqual(a.result()[0], 200)
            self.assertEqual(b.result()[0], 200)

    def test_100_sessions_in_parallel(self):
        with concurrent.futures.ThreadPoolExecutor(32) as ex:
            futs = [ex.submit(self.chat, "oai", "hi %d" % i, "par-%d" % i) for i in range(100)]
            results = [f.result() for f in futs]
        self.assertEqual([s for s, _ in results], [200] * 100)
        self.assertTrue(all(r["choices"][0]["message"]["content"] == "hello from fake" for _, r in results))

    def test_disconnect_cancels_upstream(self):
        script(self.fport, [{"hang_ms": 3000, "text": "too late"}])
        s = self.n.connect()
        body = json.dumps({"model": "kate", "messages": [{"role": "user", "content": "hi"}]}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 10
        while not self.requests() and time.monotonic() < deadline:
            time.sleep(0.02)
        s.close()
        pattern = r'nexo_agent_turns_total\{agent="kate",outcome="cancelled"\} 1'
        while time.monotonic() < deadline:
            _, m, _ = self.n.request("GET", "/metrics", listener="metrics")
            if __import__("re").search(pattern, m.decode()):
                break
            time.sleep(0.05)
        self.assertRegex(m.decode(), pattern)
        self.assertRegex(m.decode(), r'nexo_llm_requests_total\{provider="anthropic",[^}]*outcome="cancelled"\} 1')

    def test_429_then_success(self):
        script(self.fport, [{"error": {"status": 429, "type": "rate_limit_error", "message": "slow down",
                                       "retry_after_ms": 20}}, {"text": "made it"}])
        status, r = self.chat("kate", "hi")
        self.assertEqual((status, r["choices"][0]["message"]["content"]), (200, "made it"))
        self.assertEqual(len(self.requests()), 2)

    def test_a_providers_error_message_reaches_the_client_redacted(self):
        script(self.fport, [{"error": {"status": 400, "type": "invalid_request_error", "message":
                                       "rejected credential gsk_Q2w8Zr5LmN0pXv7Tb4YcQ2w8Zr5LmN0pXv7Tb4Yc; "
                                       "password=hunter2hunter2"}}])
        status, r = self.chat("kate", "hi")
        self.assertEqual(status, 400, r)
        self.assertEqual(r["error"]["message"], "rejected credential [REDACTED]; password=[REDACTED]")
        self.assertNotIn("hunter2", self.n.read_log())

    def test_primary_down_fallback_answers(self):
        status, r = self.chat("failover", "hi")
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["message"]["content"], "hello from fake")
        self.assertEqual(self.requests()[0]["endpoint"], "openai")

    def test_shutdown_with_turns_in_flight_exits_0(self):
        with tempfile.TemporaryDirectory() as cfg:
            base = "http://127.0.0.1:%d" % self.fport
            write_config(cfg, {"gateway.yaml": "shutdown_grace: 200ms\n",
                               "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: %s}\n"
                                           % base,
                               "agents.yaml": "agents:\n  - {id: a, model: {provider: anthropic, model: m}}\n"})
            n = Nexo(config_dir=cfg).start()
            try:
                script(self.fport, [{"hang_ms": 5000}, {"hang_ms": 5000}])
                body = json.dumps({"model": "a", "messages": [{"role": "user", "content": "hi"}]}).encode()
                socks = []
                for session in ("x", "x", "y"):  # one running and one queued turn in session x
                    s = n.connect()
                    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nX-Nexo-Session: %s\r\n"
                              b"Content-Length: %d\r\n\r\n" % (session.encode(), len(body)) + body)
                    socks.append(s)
                deadline = time.monotonic() + 10
                while len(self.requests()) < 2 and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.assertEqual(n.stop(), 0, n.read_log())
                for s in socks:
                    s.close()
            finally:
                n.cleanup()

    def test_session_history_is_persisted_and_searchable(self):
        script(self.fport, [{"text": "the capital is Paris"}])
        self.assertEqual(self.chat("kate", "capital of France?", "geo")[0], 200)
        path = os.path.join(self.n.data_dir, "transcripts", "kate")
        deadline = time.monotonic() + 10
        lines = []
        while time.monotonic() < deadline:  # the file appears, then its lines (one append)
            files = [f for f in os.listdir(path) if "geo" in f] if os.path.isdir(path) else []
            if files:
                with open(os.path.join(path, files[0])) as f:
                    lines = [json.loads(l) for l in f.read().splitlines()]
            if len(lines) >= 2:
                break
            time.sleep(0.02)
        self.assertEqual(len(files), 1)
        self.assertEqual([l["role"] for l in lines], ["user", "assistant"])


if __name__ == "__main__":
    main()
