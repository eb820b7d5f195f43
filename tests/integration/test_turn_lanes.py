"""A session's lane at its edges, against the fake provider: every message stored once, also when
its turn was cancelled before it started or while its tools ran; a caller merged into another's
turn (collect) that streams gets the answer; answers of one session go out in order, also when
the later turn ends at once."""
import base64
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

from nexo_harness import Nexo, main, recv_all, write_config
from peers import FakePeers, fake_requests, llm_yaml, release, script, start_fake, stop_fake, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
SLOW_MCP = os.path.join(HERE, "..", "tools", "slow_tools_mcp.py")

AGENTS = """\
agents:
  - id: coll
    model: {provider: anthropic, model: m}
    config: {queue_mode: collect}
  - id: intr
    model: {provider: anthropic, model: m}
    config: {queue_mode: interrupt}
  - id: intr_tools
    model: {provider: anthropic, model: m}
    allowed_tools: ["mcp_slow_*"]
    config: {queue_mode: interrupt}
  - id: limited
    model: {provider: anthropic, model: m}
    allowed_tools: [time_now]
    limits: {max_tool_iterations: 1}
  - id: thrifty
    model: {provider: anthropic, model: m}
    limits: {daily_token_budget: 1000, max_tokens: 100}
  - id: thrifty2
    model: {provider: anthropic, model: m}
    limits: {daily_token_budget: 1000, max_tokens: 100}
"""


class TurnLanes(FakePeers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.start_peers()
        cls.marks = os.path.join(cls.cfg.name, "fast_ran.log")
        write_config(cls.cfg.name, {
            "llm.yaml": llm_yaml(cls.fport), "agents.yaml": AGENTS,
            "mcp.yaml": "mcp:\n  enabled: true\n  servers:\n    slow: {transport: stdio, command: %s, "
                        "args: [%s, %s]}\n" % (sys.executable, SLOW_MCP, cls.marks),
        })
        cls.n = Nexo(config_dir=cls.cfg.name).start()
        deadline = time.monotonic() + 30
        while True:  # the MCP server's tools are listed
            servers = cls.n.get_json("/admin/status", listener="admin")[1].get("mcp", {}).get("servers", [])
            if servers and "mcp_slow_slow" in servers[0].get("tools", []):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the slow MCP server never listed its tools")
            time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        cls.stop_peers()

    def rows(self, key):
        db = sqlite3.connect(os.path.join(self.n.data_dir, "nexo.db"))
        try:
            return db.execute("SELECT role, content FROM messages WHERE session_key=? ORDER BY seq",
                              (key,)).fetchall()
        finally:
            db.close()

    def wait_rows(self, key, n, limit=10):
        deadline = time.monotonic() + limit
        while len(self.rows(key)) < n:
            self.assertLess(time.monotonic(), deadline, self.rows(key))
            time.sleep(0.02)
        return self.rows(key)

    def chat(self, agent, text, session, stream=False):
        body = json.dumps({"model": agent, "stream": stream, "messages": [{"role": "user", "content": text}]})
        status, data, _ = self.n.request("POST", "/v1/chat/completions", body=body.encode(), timeout=30,
                                         headers={"Content-Type": "application/json", "X-Nexo-Session": session})
        return status, (data.decode() if stream else json.loads(data))

    def test_a_turn_at_its_tool_iteration_limit_is_stored_once(self):
        tool = {"tool_use": {"name": "time_now", "input": {}}}
        script(self.fport, [tool, tool])
        status, r = self.chat("limited", "go-once", "iterlimit")
        self.assertEqual(r["error"]["type"], "tool_iteration_limit", r)
        rows = self.wait_rows("agent:limited:http:iterlimit", 5)
        time.sleep(0.3)  # a second copy would follow in the next batch
        rows = self.rows("agent:limited:http:iterlimit")
        self.assertEqual(sum("go-once" in c for _, c in rows), 1, rows)
        self.assertEqual(len(rows), 5, rows)  # user, call, result, call, "not run"

    def test_a_streaming_caller_merged_into_a_turn_gets_its_answer(self):
        script(self.fport, [{"hold": "first", "text": "first"}, {"hang_ms": 300, "text": "together"}])
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            a = ex.submit(self.chat, "coll", "a", "merged")
            self.wait_requests(1)
            b = ex.submit(self.chat, "coll", "b", "merged")
            self.wait_in_flight(2)
            c = ex.submit(self.chat, "coll", "c", "merged", True)
            self.wait_in_flight(3)
            release(self.fport, "first")
            self.assertEqual(a.result()[1]["choices"][0]["message"]["content"], "first")
            self.assertEqual(b.result()[1]["choices"][0]["message"]["content"], "together")
            status, body = c.result()
        self.assertEqual(status, 200)
        deltas = [json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                  for line in body.split("\n") if line.startswith("data: {")]
        self.assertEqual("".join(deltas), "together", body)

    def test_an_interrupted_message_is_stored_even_before_its_history_was_read(self):
        # A and B at once on a session no turn has read yet: B interrupts A, maybe while A's
        # history is still loading; A's message stays in the history either way.
        for i in range(8):
            key = "race-%d" % i
            script(self.fport, [{"text": "ok"}, {"text": "ok"}])
            a = self.send_raw("intr", "A-%d" % i, key, close=True)
            b = self.send_raw("intr", "B-%d" % i, key, close=True)
            ra, rb = recv_all(a), recv_all(b)
            a.close()
            b.close()
            self.assertTrue(rb.startswith(b"HTTP/1.1 200"), rb[:200])
            texts = " ".join(c for _, c in self.wait_rows("agent:intr:http:" + key, 3))
            self.assertIn("A-%d" % i, texts, (ra[:40], texts))
            self.assertIn("B-%d" % i, texts)

    @unittest.skipUnless(shutil.which("strace"), "strace makes the image's worker slow")
    def test_a_message_interrupted_while_its_image_is_written_is_stored(self):
        # A's image is being written as a file (strace holds the worker 1.5 s at its lstat of
        # the file) when B interrupts A: A's message is stored, before B's
        raw = b"\x89PNG\r\n\x1a\n" + os.urandom(4000)
        path = os.path.join(self.n.data_dir, "media", "api", hashlib.sha256(raw).hexdigest() + ".png")
        tr = subprocess.Popen(["strace", "-f", "-o", "/dev/null", "-P", path, "-e", "trace=newfstatat,lstat",
                               "-e", "inject=newfstatat,lstat:delay_enter=1500000", "-p", str(self.n.proc.pid)],
                              stderr=subprocess.PIPE, text=True)
        try:
            self.assertIn("attached", tr.stderr.readline())  # (its first thread: attached from now)
            script(self.fport, [{"text": "answer-B"}])
            img = "data:image/png;base64," + base64.b64encode(raw).decode()
            with concurrent.futures.ThreadPoolExecutor(2) as ex:
                a = ex.submit(self.chat, "intr", [{"type": "text", "text": "msg-A"},
                                                  {"type": "image_url", "image_url": {"url": img}}], "img-intr")
                self.wait_in_flight(1)
                b = ex.submit(self.chat, "intr", "msg-B", "img-intr")
                self.assertEqual(a.result()[0], 409)
                self.assertEqual(b.result()[1]["choices"][0]["message"]["content"], "answer-B")
        finally:
            tr.terminate()
            tr.wait()
            tr.stderr.close()
        self.assertIn("msg-A", json.dumps(fake_requests(self.fport)[-1]["body"]["messages"]))
        rows = self.wait_rows("agent:intr:http:img-intr", 3)
        self.assertEqual([re.search(r"(msg|answer)-[AB]", c).group(0) for _, c in rows],
                         ["msg-A", "msg-B", "answer-B"])
        self.assertIn(path, rows[0][1])  # the file, not the bytes

    def leave_behind(self, agent, session, texts):
        """texts[0]'s turn runs, the others wait in order behind it, and the last one's caller
        leaves while it waits (texts[0]'s step holds as "behind" until then). The statuses of the
        other callers' answers."""
        with concurrent.futures.ThreadPoolExecutor(len(texts)) as ex:
            calls = [ex.submit(self.chat, agent, texts[0], session)]
            self.wait_requests(1)
            for k, text in enumerate(texts[1:-1], 2):
                calls.append(ex.submit(self.chat, agent, text, session))
                self.wait_in_flight(k)
            leaver = self.send_raw(agent, texts[-1], session, close=True)
            self.wait_in_flight(len(texts))
            leaver.close()
            self.wait_in_flight(len(texts) - 1)
            release(self.fport, "behind")
            return [c.result()[0] for c in calls]

    def stored(self, agent, session, n):
        """The first msg-X/answer-X word of each of the session's n stored messages (waited for)."""
        return [re.search(r"(msg|answer)-[ABC]", c).group(0)
                for _, c in self.wait_rows("agent:%s:http:%s" % (agent, session), n)]

    def test_queued_messages_whose_callers_left_keep_their_order(self):
        # A runs, B waits, C waits behind B and its caller leaves: C is stored after B's turn
        script(self.fport, [{"hold": "behind", "text": "answer-A"}, {"text": "answer-B"}])
        statuses = self.leave_behind("limited", "order-late", ["msg-A", "msg-B", "msg-C"])
        self.assertEqual(statuses, [200, 200])
        self.assertEqual(self.stored("limited", "order-late", 5),
                         ["msg-A", "answer-A", "msg-B", "answer-B", "msg-C"])
        # and B's call did not see C, which came after it
        self.assertNotIn("msg-C", json.dumps(fake_requests(self.fport)[1]["body"]["messages"]))

    def test_a_failed_turn_stores_only_the_messages_that_waited_behind_it(self):
        script(self.fport, [{"hold": "behind", "error": {"status": 400, "type": "invalid_request_error",
                                                       "message": "bad"}}])
        self.assertEqual(self.leave_behind("limited", "failed-late", ["msg-A", "msg-C"]), [400])
        self.stored("limited", "failed-late", 1)
        time.sleep(0.3)  # (msg-A, were it stored too, would be in the same batch)
        rows = self.rows("agent:limited:http:failed-late")
        self.assertEqual([re.search(r"msg-[AC]", c).group(0) for _, c in rows], ["msg-C"])

    def test_long_session_names_that_begin_alike_are_two_sessions(self):
        for field in ("header", "user"):
            script(self.fport, [{"text": "noted"}, {"text": "hello"}])
            for who, text in (("x", "secret of X: 4242"), ("y", "hello from Y")):
                name = "L" * 256 + who + field
                body = {"model": "limited", "messages": [{"role": "user", "content": text}]}
                headers = {"Content-Type": "application/json"}
                if field == "user":
                    body["user"] = name
                else:
                    headers["X-Nexo-Session"] = name
                status, data, _ = self.n.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                                                 headers=headers, timeout=30)
                self.assertEqual(status, 200, data)
            self.assertNotIn("4242", json.dumps(fake_requests(self.fport)[-1]["body"]["messages"]))
            self.setUp()

    def test_messages_that_waited_behind_a_refused_turn_are_kept(self):
        # A spends the daily budget; B waits and is refused; C waited behind B and its caller
        # left: C is stored (B, refused, is not)
        script(self.fport, [{"text": "answer-A", "hold": "behind",
                             "usage": {"input_tokens": 700, "output_tokens": 400}}])
        statuses = self.leave_behind("thrifty2", "refused-late", ["msg-A", "msg-B", "msg-C"])
        self.assertEqual(statuses, [200, 429])
        self.assertEqual(self.stored("thrifty2", "refused-late", 3), ["msg-A", "answer-A", "msg-C"])

    def test_a_tool_that_ran_keeps_its_result_when_the_turn_is_interrupted(self):
        open(self.marks, "w").close()
        script(self.fport, [{"tool_use": [{"name": "mcp_slow_fast", "input": {}},
                                          {"name": "mcp_slow_slow", "input": {"ms": 3000}}]},
                            {"text": "answer to B"}])
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            a = ex.submit(self.chat, "intr_tools", "A: do both", "tools")
            self.wait_requests(1)
            deadline = time.monotonic() + 10
            while "fast ran" not in open(self.marks).read():  # fast has run, slow runs on
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.01)
            b = ex.submit(self.chat, "intr_tools", "B: never mind", "tools")
            self.assertEqual(a.result()[0], 409)
            self.assertEqual(b.result()[1]["choices"][0]["message"]["content"], "answer to B")
        sent = json.dumps(fake_requests(self.fport)[-1]["body"]["messages"])
        self.assertIn("fast done (it has an effect)", sent)  # not "not run": the model knows it ran
        self.assertIn("cancelled before it finished", sent)  # slow
        self.assertNotIn("limit of tool iterations", sent)

    @unittest.skipUnless(shutil.which("strace"), "strace shows which answer is written first")
    def test_answers_of_a_session_go_out_in_order_when_the_later_one_is_refused(self):
        # the first turn spends the daily budget; the second, queued, is refused at once: its
        # 429 must not be written before the first turn's answer
        out = os.path.join(self.n.tmp, "strace.txt")
        tr = subprocess.Popen(["strace", "-f", "-s", "300", "-e", "trace=writev,write,sendto,sendmsg",
                               "-o", out, "-p", str(self.n.proc.pid)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(out) or os.path.getsize(out) == 0:  # attached: a write shows
                self.n.request("GET", "/healthz", listener="metrics")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
            script(self.fport, [{"text": "ANSWER-TO-FIRST", "hold": "first",
                                 "usage": {"input_tokens": 700, "output_tokens": 400}}])
            with concurrent.futures.ThreadPoolExecutor(2) as ex:
                a = ex.submit(self.chat, "thrifty", "first", "order")
                self.wait_requests(1)
                b = ex.submit(self.chat, "thrifty", "second", "order")
                self.wait_in_flight(2)
                release(self.fport, "first")
                self.assertEqual(a.result()[0], 200)
                self.assertEqual(b.result()[0], 429)
        finally:
            tr.terminate()
            tr.wait()
        with open(out, errors="replace") as f:
            lines = [line for line in f if "ANSWER-TO-FIRST" in line or "insufficient_quota" in line]
        self.assertTrue(lines and "ANSWER-TO-FIRST" in lines[0], lines)


class FullDisk(unittest.TestCase):
    """A turn the store could not keep (the data directory's disk full) is not kept in memory
    either: the next turn's history is what is stored, as after a restart."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nexo-full-")
        self.mnt = os.path.join(self.tmp, "mnt")
        os.makedirs(self.mnt)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", self.mnt], capture_output=True)
        if r.returncode != 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.skipTest("a small tmpfs for a full disk needs mount: " + r.stderr.decode().strip())
        self.fake, self.fport = start_fake()

    def tearDown(self):
        stop_fake(self.fake)
        subprocess.run(["umount", "-l", self.mnt], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def chat(self, n, text, answer):
        script(self.fport, [{"text": answer}])
        body = json.dumps({"model": "main", "user": "u", "messages": [{"role": "user", "content": text}]})
        status, _, _ = n.request("POST", "/v1/chat/completions", body=body.encode(), timeout=30,
                                 headers={"Content-Type": "application/json"})
        return status

    def test_a_turn_that_was_not_stored_is_not_remembered(self):
        cfg = os.path.join(self.tmp, "config")
        write_config(cfg, {"llm.yaml": llm_yaml(self.fport),
                           "agents.yaml": "agents:\n  - {id: main, model: {provider: anthropic, model: m}}\n"})
        n = Nexo(config_dir=cfg)
        n.data_dir = os.path.join(self.mnt, "data")
        n.start()
        try:
            self.assertEqual(self.chat(n, "remember ALPHA", "ok ALPHA"), 200)
            db = os.path.join(n.data_dir, "nexo.db")
            wait_for(lambda: "ALPHA" in "".join(
                r[0] for r in sqlite3.connect(db).execute("SELECT content FROM messages")), 10, "turn 1 stored")
            st = os.statvfs(self.mnt)
            filler = os.path.join(self.mnt, "filler")
            with open(filler, "wb") as f:  # all but 16 KiB
                f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 16384))
            self.assertEqual(self.chat(n, "remember BETA " + "x " * 60000, "ok BETA"), 200)
            wait_for(lambda: "history not saved" in n.read_log(), 10, "the failed save")
            os.unlink(filler)
            self.assertEqual(self.chat(n, "which words?", "ALPHA"), 200)
            sent = json.dumps(fake_requests(self.fport)[-1]["body"]["messages"])
            self.assertIn("remember ALPHA", sent)
            self.assertNotIn("remember BETA", sent)  # not stored, so not in the history either
            tdir = os.path.join(n.data_dir, "transcripts", "main")
            text = "".join(open(os.path.join(tdir, f)).read() for f in os.listdir(tdir))
            self.assertIn("remember ALPHA", text)
            self.assertNotIn("remember BETA", text)  # the transcript keeps what the database kept
            self.assertEqual(n.stop(), 0)
        finally:
            n.cleanup()


if __name__ == "__main__":
    main()
