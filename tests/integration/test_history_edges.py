"""A session's history at its edges, against the fake provider: an answer of white space is not
stored (the Messages API would refuse every later request of the session); a save that failed
is not put back in the cache by the turn queued behind it; a turn's queued messages are counted
against the context window; rows nexo did not write are left out, not the whole history; a tool
call is never given another round's result; identity files that are not UTF-8 still make a
prompt."""
import concurrent.futures
import json
import os
import sqlite3
import tempfile
import time
import unittest

from nexo_harness import Nexo, main, write_config
from peers import FAKE_KEY, FakePeers, fake_requests, llm_yaml, release, script

AGENTS = """\
agents:
  - id: a
    model: {provider: anthropic, model: m}
  - id: o
    model: {provider: openai, model: gpt-4o-mini}
    allowed_tools: [time_now]
    limits: {max_tool_iterations: 1}
  - id: t
    model: {provider: anthropic, model: m, context_window: 8000}
    limits: {max_tokens: 1000}
  - id: w
    model: {provider: anthropic, model: m}
    workspace: %s
"""


class HistoryEdges(FakePeers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_peers()
        cls.ws = tempfile.TemporaryDirectory()
        with open(os.path.join(cls.ws.name, "SOUL.md"), "wb") as f:
            f.write(b"You are kind.\x00 Always.\n")  # a NUL, which would end the prompt there
        with open(os.path.join(cls.ws.name, "MEMORY.md"), "wb") as f:
            f.write(b"The user lives in M\xfcnchen.\n")  # Latin-1, not UTF-8
        extra = "  openai: {api_key: %s, base_url: http://127.0.0.1:%d/v1}\n" % (FAKE_KEY, cls.fport)
        write_config(cls.cfg.name, {"llm.yaml": llm_yaml(cls.fport, extra), "agents.yaml": AGENTS % cls.ws.name})
        cls.n = Nexo(config_dir=cls.cfg.name).start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.stop_peers()
        finally:
            cls.ws.cleanup()

    def chat(self, agent, text, session):
        body = json.dumps({"model": agent, "messages": [{"role": "user", "content": text}]})
        status, data, _ = self.n.request("POST", "/v1/chat/completions", body=body.encode(), timeout=30,
                                         headers={"Content-Type": "application/json", "X-Nexo-Session": session})
        return status, json.loads(data)

    def db(self):
        return sqlite3.connect(os.path.join(self.n.data_dir, "nexo.db"))

    def rows(self, key):
        db = self.db()
        try:
            return db.execute("SELECT role, content FROM messages WHERE session_key=? ORDER BY seq", (key,)).fetchall()
        finally:
            db.close()

    def wait_rows(self, key, n):
        deadline = time.monotonic() + 10
        while len(self.rows(key)) < n:
            self.assertLess(time.monotonic(), deadline, self.rows(key))
            time.sleep(0.02)
        return self.rows(key)

    def sent(self):
        """The messages of the fake's last request, as role:text."""
        out = []
        for m in fake_requests(self.fport)[-1]["body"]["messages"]:
            c = m["content"]
            out.append(m["role"][0] + ":" + (c if isinstance(c, str) else
                                             "|".join(b.get("text", b.get("type")) for b in c)))
        return out

    def test_an_answer_of_white_space_is_not_stored(self):
        script(self.fport, [{"text": "\n\n"}, {"text": "fine"}])
        self.assertEqual(self.chat("a", "say nothing", "blank")[0], 200)
        status, r = self.chat("a", "hello again", "blank")  # the fake refuses blank text, as the API
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["message"]["content"], "fine")
        self.assertEqual(self.sent(), ["u:say nothing|hello again"])

    def test_a_failed_save_is_not_put_back_by_the_turn_behind_it(self):
        self.assertEqual(self.chat("a", "hello", "savefail")[0], 200)
        db = self.db()
        db.execute("CREATE TRIGGER failme BEFORE INSERT ON messages WHEN NEW.content LIKE '%FAILME%' "
                   "BEGIN SELECT RAISE(ABORT, 'injected'); END")
        db.commit()
        db.close()
        try:
            # B reads the cache (A's exchange in it) as A ends; A's save fails meanwhile; B's
            # answer comes later, and its save must not put A's exchange back
            script(self.fport, [{"hold": "a", "text": "answer to A"}, {"hang_ms": 300, "text": "answer to B"},
                                {"text": "answer to C"}])
            with concurrent.futures.ThreadPoolExecutor(2) as ex:
                a = ex.submit(self.chat, "a", "FAILME A", "savefail")
                self.wait_requests(2)
                b = ex.submit(self.chat, "a", "B", "savefail")
                self.wait_in_flight(2)
                release(self.fport, "a")
                self.assertEqual((a.result()[0], b.result()[0]), (200, 200))
            self.assertEqual(self.chat("a", "C", "savefail")[0], 200)
            # C sees what the store has: not A's exchange, which it could not keep
            self.assertNotIn("answer to A", " ".join(self.sent()))
            self.assertEqual(self.sent()[-1], "u:C")
            self.assertNotIn("FAILME", json.dumps(self.rows("agent:a:http:savefail")))
        finally:
            db = self.db()
            db.execute("DROP TRIGGER failme")
            db.commit()
            db.close()

    def test_messages_kept_after_a_failed_turn_count_against_the_context_window(self):
        self.assertEqual(self.chat("t", "hello", "tokens")[0], 200)
        script(self.fport, [{"hold": "a", "error": {"status": 400, "type": "invalid_request_error",
                                                        "message": "nope"}}])
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            a = ex.submit(self.chat, "t", "A", "tokens")
            self.wait_requests(2)
            big = self.send_raw("t", "B" * 40000, "tokens")  # ~10,000 tokens: more than the window
            self.wait_in_flight(2)
            big.close()  # its caller leaves: kept, after the failed turn
            self.wait_in_flight(1)
            release(self.fport, "a")
            self.assertEqual(a.result()[0], 400)
        deadline = time.monotonic() + 10
        while not any("BBBB" in c for _, c in self.rows("agent:t:http:tokens")):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
        self.assertEqual(self.chat("t", "C", "tokens")[0], 200)
        self.assertNotIn("BBBB", json.dumps(fake_requests(self.fport)[-1]["body"]["messages"]))  # trimmed

    def test_a_request_asking_for_a_large_answer_leaves_the_session_whole(self):
        """A request whose max_tokens leaves no room for history is sent without it, but the
        session keeps it: the next turns (at the agent's max_tokens) still see every message."""
        for text in ("one", "two", "three"):
            self.assertEqual(self.chat("t", text, "room")[0], 200)
        body = json.dumps({"model": "t", "max_tokens": 7000, "messages": [{"role": "user", "content": "huge"}]})
        status, _, _ = self.n.request("POST", "/v1/chat/completions", body=body.encode(), timeout=30,
                                      headers={"Content-Type": "application/json", "X-Nexo-Session": "room"})
        self.assertEqual(status, 200)
        self.assertEqual([m for m in self.sent() if m.startswith("u:")], ["u:huge"])  # no room for more
        self.assertEqual(self.chat("t", "four", "room")[0], 200)
        self.assertEqual([m for m in self.sent() if m.startswith("u:")],
                         ["u:one", "u:two", "u:three", "u:huge", "u:four"])

    def test_a_failed_turn_that_had_to_cut_the_history_leaves_the_session_whole(self):
        """A message too long for the context cuts the history for its request; when the provider
        refuses it anyway, the next turn starts from the whole history again, not the cut one."""
        for text in ("one", "two", "three"):
            self.assertEqual(self.chat("t", text, "cut")[0], 200)
        script(self.fport, [{"error": {"status": 400, "type": "invalid_request_error",
                                       "message": "prompt is too long"}}])
        self.assertEqual(self.chat("t", "B" * 40000, "cut")[0], 400)
        self.assertEqual(self.chat("t", "four", "cut")[0], 200)
        self.assertEqual([m for m in self.sent() if m.startswith("u:")], ["u:one", "u:two", "u:three", "u:four"])

    def test_rows_nexo_did_not_write_are_left_out(self):
        key = "agent:a:http:corrupt"
        self.assertEqual(self.chat("a", "first", "corrupt")[0], 200)
        self.wait_rows(key, 2)
        db = self.db()
        seq = db.execute("SELECT MAX(seq) FROM messages WHERE session_key=?", (key,)).fetchone()[0]
        for i, (role, content) in enumerate((("user", '[{"type":"text","text":"kept"}]'),
                                             ("assistant", "42"),  # was a tool call: its result goes too
                                             ("user", '[{"type":"tool_result","tool_use_id":"t1","content":"ok"}]'),
                                             ("system", '[{"type":"text","text":"x"}]'),
                                             ("user", b'[{"type":"text","text":"caf\xe9"}]'),
                                             ("assistant", '[{"type":"text","text":"also kept"}]')), 1):
            db.execute("INSERT INTO messages(session_key, seq, role, content, created_at) "
                       "VALUES (?, ?, ?, CAST(? AS TEXT), 0)", (key, seq + i, role, content))
        db.commit()
        db.close()
        self.assertEqual(self.n.restart(), 0)  # no cached copy: the store is read
        script(self.fport, [{"text": "ok"}])
        status, r = self.chat("a", "next", "corrupt")
        self.assertEqual(status, 200, r)
        sent = self.sent()
        self.assertIn("u:kept", sent)
        self.assertIn("a:also kept", sent)
        self.assertFalse([m for m in sent if "caf" in m or m.startswith("s:") or "tool_result" in m], sent)
        self.assertIn("3 stored messages left out", self.n.read_log())  # 42, system, not UTF-8

    def test_a_call_at_the_iteration_limit_gets_no_result_of_an_earlier_round(self):
        call = {"tool_use": {"name": "time_now", "input": {}, "id": "call_0"}}  # one id, two rounds
        script(self.fport, [call, call])
        status, r = self.chat("o", "what time is it?", "dupid")
        self.assertEqual(r.get("error", {}).get("type"), "tool_iteration_limit", (status, r))
        rows = self.wait_rows("agent:o:http:dupid", 5)
        self.assertIn("limit of tool iterations", rows[4][1])  # not round 1's time

    def test_identity_files_that_are_not_utf8_still_make_a_prompt(self):
        script(self.fport, [{"text": "hi"}])
        status, r = self.chat("w", "hello", "ws")
        self.assertEqual(status, 200, r)
        system = json.dumps(fake_requests(self.fport)[-1]["body"]["system"])
        self.assertIn("You are kind.  Always.", system)  # the NUL became a space
        self.assertIn("M\\ufffdnchen", system)  # the Latin-1 byte, U+FFFD; the file after it kept


if __name__ == "__main__":
    main()
