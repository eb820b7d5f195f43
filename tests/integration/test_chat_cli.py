"""`nexo chat` in a terminal session (stdin piped) against the fake provider, and the embedded
default agent's clear message when no LLM key is set."""
import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest
import urllib.request

from nexo_harness import NEXO_BIN, Nexo, main, write_config
from test_api_sdk import PEERS, script, start_fake


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
                self.assertIn('no agent "nobody"; the agents are: kate', r.stderr)
        finally:
            fake.kill()
            fake.wait()

    def test_a_failed_turn_leaves_stdout_to_the_answers(self):
        """Piped, a turn the provider refuses is reported on stderr with exit 1, and stdout holds
        only the answers: no empty line for the failed one."""
        fake, port = start_fake()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                script(port, [{"error": {"status": 400, "type": "invalid_request_error", "message": "nope"}},
                              {"text": "second answer"}])
                r = subprocess.run(self.chat_setup(tmp, port), input="one\ntwo\n", capture_output=True,
                                   text=True, timeout=60)
                self.assertEqual((r.returncode, r.stdout), (1, "second answer\n"), r.stderr)
                self.assertRegex(r.stderr, r"^nexo chat: invalid_request_error: .*nope")
        finally:
            fake.kill()
            fake.wait()

    def chat_setup(self, tmp, port):
        cfg = write_config(os.path.join(tmp, "config"), {
            "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                        % port,
            "agents.yaml": "agents:\n  - {id: kate, model: {provider: anthropic, model: m}}\n",
        })
        return [NEXO_BIN, "chat", "--agent", "kate", "--config", cfg, "--data", os.path.join(tmp, "data"),
                "--log-level", "warn"]

    @staticmethod
    def run_chat(*args, env=None):
        """`nexo chat ARGS` on the one line "hi", to its end."""
        return subprocess.run([NEXO_BIN, "chat", *args, "--log-level", "warn"], input="hi\n",
                              capture_output=True, text=True, timeout=30, env=env)

    def sent(self, port):
        """The last user message of each request the fake got."""
        reqs = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/_requests" % port).read())
        return [r["body"]["messages"][-1]["content"][0]["text"] for r in reqs]

    def wait_requests(self, port, n):
        deadline = time.monotonic() + 20
        while len(self.sent(port)) < n:
            self.assertLess(time.monotonic(), deadline, "the fake never got request %d" % n)
            time.sleep(0.02)

    def test_transcripts_redact_the_configured_patterns_and_secret_values(self):
        """Chat redacts as the daemon does: gateway.yaml's log.redact_patterns, and the values of
        the configuration's secrets (a key no built-in rule knows) wherever they appear."""
        fake, port = start_fake()
        key = "gsk_4Zr8X1qL0pWm9cVt7bNk"
        try:
            urllib.request.urlopen(urllib.request.Request(
                "http://127.0.0.1:%d/_config" % port, data=json.dumps({"auth": False}).encode(),
                method="POST")).read()
            with tempfile.TemporaryDirectory() as tmp:
                cfg = write_config(os.path.join(tmp, "config"), {
                    "gateway.yaml": 'log: {redact_patterns: ["EMP-[0-9]{6}"]}\n',
                    "llm.yaml": "providers:\n  anthropic: {api_key: %s, base_url: http://127.0.0.1:%d}\n"
                                % (key, port),
                    "agents.yaml": "agents:\n  - {id: kate, model: {provider: anthropic, model: m}}\n",
                })
                data = os.path.join(tmp, "data")
                script(port, [{"text": "noted, EMP-654321"}])
                r = subprocess.run([NEXO_BIN, "chat", "--agent", "kate", "--config", cfg, "--data", data,
                                    "--log-level", "warn"], input="badge EMP-123456, key %s\n" % key,
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stderr)
                tdir = os.path.join(data, "transcripts", "kate")
                text = "".join(open(os.path.join(tdir, f)).read() for f in os.listdir(tdir))
                self.assertIn("badge [REDACTED], key [REDACTED]", text)
                self.assertIn("noted, [REDACTED]", text)
                self.assertNotIn(key, text)
                r = subprocess.run([NEXO_BIN, "--data", data, "transcripts", "search", "123456"],
                                   capture_output=True, text=True, timeout=30)
                self.assertNotIn("123456", r.stdout)
        finally:
            fake.kill()
            fake.wait()

    def test_input_from_a_file_dev_null_and_bad_lines(self):
        """Standard input may be a file or /dev/null (cron, systemd); CRLF is taken off; a line
        over 1 MiB or not UTF-8 is skipped with a message, and the lines after it still go; a line
        of white space only is passed over as an empty one (no API takes it)."""
        fake, port = start_fake()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = self.chat_setup(tmp, port)
                with open(os.devnull) as null:
                    r = subprocess.run(cmd, stdin=null, capture_output=True, text=True, timeout=30)
                self.assertEqual((r.returncode, r.stderr), (0, ""))
                self.assertEqual(self.sent(port), [])
                path = os.path.join(tmp, "in.txt")
                with open(path, "wb") as f:
                    f.write(b"one\r\n" + b"x" * (1100 * 1024) + b"\nbad \xff\xfe line\n\n \t \r\nnul\0byte\ntwo")
                script(port, [{"text": "1"}, {"text": "2"}])
                with open(path) as f:
                    r = subprocess.run(cmd, stdin=f, capture_output=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(self.sent(port), ["one", "two"])
                self.assertIn(b"longer than 1048576 bytes was skipped", r.stderr)
                self.assertIn(b"not valid UTF-8", r.stderr)
                self.assertIn(b"that line holds a NUL byte", r.stderr)
                with open(path, "wb") as f:  # empty lines are passed over without recursion
                    f.write(b"\n" * 200000 + b"\xff\n" * 100000 + b"three\n")
                script(port, [{"text": "3"}])
                with open(path) as f:
                    r = subprocess.run(cmd, stdin=f, capture_output=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stderr[-300:])
                self.assertEqual(self.sent(port)[-1], "three")
                with open("/dev/zero") as zero:  # endless, no newline: still stops on SIGTERM
                    p = subprocess.Popen(cmd, stdin=zero, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    try:
                        self.assertIn(b"skipped", p.stderr.readline())
                        p.send_signal(signal.SIGTERM)
                        self.assertEqual(p.wait(timeout=10), 0)
                    finally:
                        p.kill()
                        p.wait()
                        p.stderr.close()
        finally:
            fake.kill()
            fake.wait()

    def test_a_fast_pipe_waits_for_each_answer_and_sigterm_stops(self):
        """Lines piped faster than the answers come are all sent, in order, none lost; SIGTERM
        ends the conversation even with lines still waiting."""
        fake, port = start_fake()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = self.chat_setup(tmp, port)
                lines = ["line%02d %s" % (i, "y" * 60000) for i in range(20)]
                script(port, [{"text": "ok", "delay_ms": 20}] * 20)
                r = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True,
                                   timeout=120)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(self.sent(port), lines)
                script(port, [{"hang_ms": 20000}])
                p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
                try:
                    p.stdin.write(b"a\nb\nc\n")
                    p.stdin.flush()
                    self.wait_requests(port, 21)
                    p.send_signal(signal.SIGTERM)
                    self.assertEqual(p.wait(timeout=10), 0)
                finally:
                    p.kill()
                    p.wait()
                    for f in (p.stdin, p.stdout, p.stderr):
                        f.close()
                self.assertEqual(len(self.sent(port)), 21)  # b and c were never sent
        finally:
            fake.kill()
            fake.wait()

    def test_ctrl_c_at_a_terminal_cancels_the_reply_then_quits(self):
        fake, port = start_fake()
        master, slave = pty.openpty()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                # the answer's escape sequences (OSC 52 would set the clipboard) reach the
                # terminal as text; its lines stay lines
                script(port, [{"hang_ms": 20000},
                              {"text": "back\u001b]52;c;ZXZpbA==\u0007 \u009b2K ok\nline two"}])
                p = subprocess.Popen(self.chat_setup(tmp, port), stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
                try:
                    os.write(master, b"slow one\n")
                    self.wait_requests(port, 1)
                    p.send_signal(signal.SIGINT)  # what Ctrl-C does
                    out = b""
                    while b"[cancelled]" not in out or not out.rstrip().endswith(b"kate>"):
                        out += os.read(master, 4096)
                    os.write(master, b"again\n")
                    while b"back" not in out or not out.rstrip().endswith(b"kate>"):
                        out += os.read(master, 4096)  # answered, and at the prompt again
                    self.assertIn(b"back\\x1b]52;c;ZXZpbA==\\x07 \\xc2\\x9b2K ok\r\nline two", out)
                    self.assertNotIn(b"\x1b]", out)
                    self.assertIsNone(p.poll())
                    p.send_signal(signal.SIGINT)  # at the prompt: the end
                    self.assertEqual(p.wait(timeout=10), 0)
                    while not out.endswith(b"\n"):  # the shell's prompt gets a line of its own
                        self.assertTrue(select.select([master], [], [], 5)[0], out[-40:])
                        out += os.read(master, 4096)
                finally:
                    p.kill()
                    p.wait()
                reqs = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/_requests" % port).read())
                self.assertEqual(len(reqs), 2)
                # the cancelled message stays in the session: the next one joins it
                self.assertEqual([b["text"] for b in reqs[1]["body"]["messages"][-1]["content"]],
                                 ["slow one", "again"])
        finally:
            os.close(master)
            os.close(slave)
            fake.kill()
            fake.wait()

    def test_a_line_the_terminal_cut_is_not_sent(self):
        """A terminal keeps 4,095 bytes of a line: a longer one pasted is not sent cut short."""
        fake, port = start_fake()
        master, slave = pty.openpty()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                script(port, [{"text": "got the short one"}])
                p = subprocess.Popen(self.chat_setup(tmp, port), stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
                try:
                    out = b""
                    while not out.rstrip().endswith(b"kate>"):
                        self.assertTrue(select.select([master], [], [], 10)[0], out[-80:])
                        out += os.read(master, 4096)
                    line = ("é" * 2600).encode() + b"\n"  # 5,200 bytes: cut inside a character
                    for i in range(0, len(line), 512):
                        os.write(master, line[i:i + 512])
                        while select.select([master], [], [], 0.05)[0]:  # the echo, as it comes
                            out += os.read(master, 65536)
                    os.write(master, b"short\n")
                    while b"got the short one" not in out:
                        self.assertTrue(select.select([master], [], [], 10)[0], out[-200:])
                        out += os.read(master, 65536)
                    self.assertIn(b"the terminal cuts a line at 4095 bytes", out)
                    self.assertNotIn(b"not valid UTF-8", out)
                    self.assertEqual(self.sent(port), ["short"])
                    p.send_signal(signal.SIGTERM)
                    self.assertEqual(p.wait(timeout=10), 0)
                finally:
                    p.kill()
                    p.wait()
        finally:
            os.close(master)
            os.close(slave)
            fake.kill()
            fake.wait()

    def test_the_terminal_closing_ends_the_chat_and_keeps_the_message(self):
        """SIGHUP (the terminal went away) mid-reply: the chat ends as on SIGTERM, exit 0, and the
        message being answered stays in the session."""
        fake, port = start_fake()
        master, slave = pty.openpty()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                script(port, [{"hang_ms": 20000}])
                p = subprocess.Popen(self.chat_setup(tmp, port), stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
                try:
                    os.write(master, b"keep me\n")
                    self.wait_requests(port, 1)
                    p.send_signal(signal.SIGHUP)
                    self.assertEqual(p.wait(timeout=10), 0)
                finally:
                    p.kill()
                    p.wait()
                db = sqlite3.connect(os.path.join(tmp, "data", "nexo.db"))
                try:
                    rows = [r[0] for r in db.execute("SELECT content FROM messages")]
                finally:
                    db.close()
                self.assertEqual(len(rows), 1, rows)
                self.assertIn("keep me", rows[0])
        finally:
            os.close(master)
            os.close(slave)
            fake.kill()
            fake.wait()

    def test_chat_starts_the_mcp_servers_of_mcp_yaml(self):
        """The agent's MCP tools work in chat as in the daemon."""
        server = os.path.join(PEERS, "node_modules", ".bin", "mcp-server-everything")
        self.assertTrue(os.path.exists(server), "run scripts/install-npm-peers.sh")
        fake, port = start_fake()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = self.chat_setup(tmp, port)
                cfg = cmd[cmd.index("--config") + 1]
                write_config(cfg, {
                    "mcp.yaml": "mcp:\n  enabled: true\n  servers:\n"
                                "    everything: {transport: stdio, command: %s, args: [stdio]}\n" % server,
                    "agents.yaml": "agents:\n  - {id: kate, model: {provider: anthropic, model: m},"
                                   " allowed_tools: [\"mcp_everything_*\"]}\n"})
                cmd[-1] = "info"  # --log-level: the line that says the tools are registered
                script(port, [{"tool_use": {"name": "mcp_everything_get-sum", "input": {"a": 2, "b": 40}}},
                              {"text": "it is 42"}])
                p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
                try:
                    for line in p.stderr:
                        if "server everything:" in line and "tools registered" in line:
                            break
                    out, _ = p.communicate("2+40?\n", timeout=60)
                finally:
                    p.kill()
                    p.wait()
                self.assertEqual((p.returncode, out.strip()), (0, "it is 42"))
                reqs = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/_requests" % port).read())
                result = reqs[1]["body"]["messages"][-1]["content"][0]
                self.assertEqual(result["type"], "tool_result")
                self.assertIn("42", result["content"])
        finally:
            fake.kill()
            fake.wait()

    def test_a_provider_without_a_key_is_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = write_config(os.path.join(tmp, "config"), {
                "llm.yaml": "providers:\n  anthropic: {api_key: \"\"}\n",
                "agents.yaml": "agents:\n  - {id: kate, model: {provider: anthropic, model: m}}\n"})
            r = self.run_chat("--config", cfg, "--data", os.path.join(tmp, "data"))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn('no usable LLM provider for agent "kate": provider "anthropic" has no api_key',
                          r.stdout)
            # a configuration without llm.yaml: the built-in providers read the environment
            os.unlink(os.path.join(cfg, "llm.yaml"))
            env = {k: v for k, v in os.environ.items()
                   if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
            r = self.run_chat("--config", cfg, "--data", os.path.join(tmp, "data"), env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("set ANTHROPIC_API_KEY, or OPENAI_API_KEY (with OPENAI_BASE_URL", r.stdout)
            self.assertNotIn("api_key: set it in llm.yaml", r.stdout)

    def test_a_long_session_name_gets_a_lock_of_its_own(self):
        fake, port = start_fake()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for name in ("会話" * 15, "x" * 240):
                    script(port, [{"text": "ok"}])
                    r = subprocess.run(self.chat_setup(tmp, port) + ["--session", name], input="hi\n",
                                       capture_output=True, text=True, timeout=30)
                    self.assertEqual((r.returncode, r.stdout.strip()), (0, "ok"), r.stderr)
        finally:
            fake.kill()
            fake.wait()

    def test_a_session_is_held_by_one_chat_at_a_time(self):
        """A second chat on the same session would answer from a stale copy of its history: it is
        refused; another --session is a conversation of its own."""
        fake, port = start_fake()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = self.chat_setup(tmp, port)
                script(port, [{"text": "one"}])
                first = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL)
                try:
                    first.stdin.write(b"hello\n")
                    first.stdin.flush()
                    self.assertEqual(first.stdout.readline().strip(), b"one")  # it holds the session
                    r = subprocess.run(cmd, input="hi\n", capture_output=True, text=True, timeout=30)
                    self.assertEqual(r.returncode, 1, r.stderr)
                    self.assertIn("is open in another nexo chat", r.stderr)
                    script(port, [{"text": "two"}])
                    r = subprocess.run(cmd + ["--session", "other/one"], input="hi\n", capture_output=True,
                                       text=True, timeout=30)
                    self.assertEqual((r.returncode, r.stdout.strip()), (0, "two"), r.stderr)
                    first.stdin.close()
                    self.assertEqual(first.wait(timeout=10), 0)
                finally:
                    first.kill()
                    first.wait()
                    first.stdout.close()
                script(port, [{"text": "three"}])  # and once the first is gone, the session is free
                r = subprocess.run(cmd, input="again\n", capture_output=True, text=True, timeout=30)
                self.assertEqual((r.returncode, r.stdout.strip()), (0, "three"), r.stderr)
        finally:
            fake.kill()
            fake.wait()

    def test_a_data_directory_that_cannot_be_used_ends_the_chat(self):
        with tempfile.TemporaryDirectory() as tmp:
            afile = os.path.join(tmp, "afile")
            open(afile, "w").close()
            r = self.run_chat("--data", afile)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("the data directory cannot be used", r.stderr)
            self.assertEqual(r.stdout.strip(), "")  # nothing was answered without a history
            r = self.run_chat("--data", "")  # not even started
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("the data directory cannot be used", r.stderr)
            self.assertNotIn("still open", r.stderr)

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
