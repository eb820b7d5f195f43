"""Transcripts end to end: conversations through the gateway (against the fake provider in
tests/fakes/fake_llm.py) land in data/transcripts/<agent>/<session>.jsonl, redacted, private and
inside the agent's directory whatever the peer id, and `nexo transcripts search` finds them —
but never a secret."""
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

from nexo_harness import Nexo, main, run_cli, write_config
from peers import script, start_fake, stop_fake

TOKEN = "nexo-transcripts-test-token"
SECRET = "sk-ant-api03-" + "Q7vR2mX9kL4pW8nB3cT6yH1jF5dG0sA2eZ4uI7oP"
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.TopSecretSignature123"
EVIL_PEER = "../../etc/x:y"
UNICODE = "Привет мир, цена 5€ “quoted” 😀 日本語"
ESCAPING_PEER = "tty\x1b]0;pwn\x07\nFAKE LINE\u009b2J"  # a title escape, a forged line, a C1 CSI


def encode(name):
    """The file-name mapping of docs/transcripts.md (names shorter than 128 encoded bytes)."""
    out = []
    for i, b in enumerate(name.encode()):
        c = chr(b)
        if (c.isascii() and c.isalnum()) or c in "_-" or (c == "." and i > 0):
            out.append(c)
        else:
            out.append("%%%02X" % b)
    return "".join(out)


class Transcripts(unittest.TestCase):
    fake = n = cfg = None

    @classmethod
    def setUpClass(cls):
        try:
            cls.fake, cls.fport = start_fake(key="sk-ant-fake-key")
            cls.cfg = tempfile.TemporaryDirectory()
            base = "http://127.0.0.1:%d" % cls.fport
            write_config(cls.cfg.name, {
                "gateway.yaml": "auth_token: %s\n" % TOKEN,
                "llm.yaml": "providers:\n  anthropic: {api_key: sk-ant-fake-key, base_url: %s}\n" % base,
                "agents.yaml": ("agents:\n"
                                "  - {id: kate, model: {provider: anthropic, model: claude-haiku-4-5}}\n"
                                "  - {id: ops, model: {provider: anthropic, model: claude-haiku-4-5}}\n"),
            })
            cls.n = Nexo(config_dir=cls.cfg.name)
            cls.data = cls.n.data_dir
            cls.n.start()
            cls.chat("kate", "alice", "my key is %s and the header is Bearer %s; where is the pineapple?"
                     % (SECRET, BEARER), "the pineapple is in the fridge")
            cls.chat("ops", EVIL_PEER, "deploy the walrus service", "walrus deployed to staging")
            cls.chat("kate", ESCAPING_PEER, "the elephant is grey", "grey elephant noted")
            cls.chat("kate", SECRET, "the kiwi is green", "green kiwi noted")  # a key as a peer id
            cls.chat("kate", "bob", UNICODE + " mango", "mango noted")
            cls.wait_for_hits("elephant", 2)
            cls.wait_for_hits("walrus", 2)
            cls.wait_for_hits("pineapple", 2)
            cls.wait_for_hits("kiwi", 2)
            cls.wait_for_hits("mango", 2)
        except BaseException:
            cls.tearDownClass()
            raise
        cls.code = cls.n.stop()  # a clean stop: the store has flushed and closed

    @classmethod
    def tearDownClass(cls):
        if cls.n:
            if cls.n.proc and cls.n.proc.poll() is None:
                cls.n.stop()
            cls.n.cleanup()
        if cls.fake:
            stop_fake(cls.fake)
        if cls.cfg:
            cls.cfg.cleanup()

    @classmethod
    def chat(cls, agent, user, text, answer):
        script(cls.fport, [{"text": answer}])
        body = json.dumps({"model": agent, "user": user,
                           "messages": [{"role": "user", "content": text}]}).encode()
        status, data, _ = cls.n.request("POST", "/v1/chat/completions", body=body,
                                        headers={"Authorization": "Bearer " + TOKEN,
                                                 "Content-Type": "application/json"}, timeout=30)
        assert status == 200, (status, data)
        got = json.loads(data)["choices"][0]["message"]["content"]
        assert got == answer, got

    @classmethod
    def search(cls, *args):
        return run_cli("--data", cls.data, "transcripts", "search", *args)

    @classmethod
    def wait_for_hits(cls, word, n, timeout=10.0):
        """History is saved after the answer is sent: poll the CLI (it reads beside the running
        gateway, WAL) until the turn is there."""
        deadline = time.monotonic() + timeout
        while True:
            r = cls.search(word, "--json")
            assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
            if len(json.loads(r.stdout)) >= n:
                return
            if time.monotonic() > deadline:
                raise AssertionError("no %d hits for %r in %.0fs: %s" % (n, word, timeout, r.stdout))
            time.sleep(0.05)

    def transcript(self, agent, key):
        return os.path.join(self.data, "transcripts", encode(agent), encode(key) + ".jsonl")

    # --- files ---

    def test_gateway_stopped_cleanly(self):
        self.assertEqual(self.code, 0)

    def test_jsonl_lines_are_json_and_redacted(self):
        path = self.transcript("kate", "agent:kate:http:alice")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn(SECRET[13:], text)
        self.assertNotIn("TopSecretSignature123", text)
        self.assertIn("[REDACTED]", text)
        self.assertIn("pineapple", text)
        lines = [json.loads(line) for line in text.splitlines()]
        self.assertEqual([m["role"] for m in lines], ["user", "assistant"])
        for m in lines:
            self.assertEqual(m["session"], "agent:kate:http:alice")
            self.assertEqual((m["agent"], m["source"]), ("kate", "http"))
            self.assertRegex(m["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertIsInstance(m["content"], list)
        self.assertEqual(lines[1]["content"][0], {"type": "text", "text": "the pineapple is in the fridge"})

    def test_files_are_private_and_an_evil_peer_stays_inside_the_agent_dir(self):
        root = os.path.join(self.data, "transcripts")
        self.assertEqual(stat.S_IMODE(os.stat(root).st_mode), 0o700)
        agent_dir = os.path.join(root, "ops")
        self.assertEqual(stat.S_IMODE(os.stat(agent_dir).st_mode), 0o700)
        names = os.listdir(agent_dir)
        self.assertEqual(names, [encode("agent:ops:http:" + EVIL_PEER) + ".jsonl"], names)
        self.assertEqual(urllib.parse.unquote(names[0][:-6]), "agent:ops:http:" + EVIL_PEER)
        path = os.path.join(agent_dir, names[0])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(json.loads(f.readline())["session"], "agent:ops:http:" + EVIL_PEER)
        # nothing was written anywhere else under the data dir
        for dirpath, _, files in os.walk(root):
            for name in files:
                self.assertTrue(name.endswith(".jsonl"), name)
                self.assertIn(os.path.dirname(os.path.join(dirpath, name)),
                              (agent_dir, os.path.join(root, "kate")))

    def test_a_secret_as_a_peer_id_is_in_no_file_name(self):
        names = os.listdir(os.path.join(self.data, "transcripts", "kate"))
        self.assertFalse([n for n in names if SECRET[13:] in n or SECRET[13:] in urllib.parse.unquote(n)],
                         names)
        hashed = [n for n in names if n.startswith(encode("agent:kate:http:[REDACTED]") + "~")]
        self.assertEqual(len(hashed), 1, names)
        self.assertRegex(hashed[0], r"~[0-9A-F]{32}\.jsonl$")
        with open(os.path.join(self.data, "transcripts", "kate", hashed[0]), encoding="utf-8") as f:
            self.assertIn("kiwi", f.read())

    # --- search ---

    def test_search_prints_one_line_per_hit(self):
        r = self.search("walrus")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 2, r.stdout)
        key = "agent:ops:http:" + EVIL_PEER
        for line in lines:
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ops ")
            self.assertIn(" %s " % key, line)
            self.assertIn("[walrus]", line)
        self.assertEqual(sorted(line.split(" ")[3] for line in lines), ["assistant:", "user:"])

    def test_search_output_has_no_control_characters(self):
        r = self.search("elephant")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.splitlines()), 2, r.stdout)
        self.assertFalse(any((ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f for c in r.stdout),
                         repr(r.stdout))
        self.assertIn(" agent:kate:http:tty ]0;pwn  FAKE LINE 2J ", r.stdout)

    def test_search_output_keeps_other_scripts_whole(self):
        r = self.search("mango")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(UNICODE, r.stdout)

    def test_agent_filter_json_and_limit(self):
        r = self.search("pineapple OR walrus", "--agent", "kate", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = json.loads(r.stdout)
        self.assertEqual(len(rows), 2)
        for row in rows:
            self.assertEqual(row["agent_id"], "kate")
            self.assertEqual(row["session_key"], "agent:kate:http:alice")
            self.assertIn("[pineapple]", row["snippet"])
            self.assertEqual(set(row), {"agent_id", "session_key", "role", "timestamp", "ts_ms",
                                        "snippet"})
        r = self.search("pineapple OR walrus", "--limit", "3", "--json")
        self.assertEqual(len(json.loads(r.stdout)), 3)
        r = self.search("walrus", "--agent", "kate")
        self.assertEqual((r.returncode, r.stdout), (0, "no matches\n"))

    def test_secrets_are_not_searchable(self):
        for q in (SECRET[13:], '"%s"' % SECRET, "TopSecretSignature123"):
            r = self.search(q)
            self.assertEqual((r.returncode, r.stdout), (0, "no matches\n"), (q, r.stderr))

    def test_a_secret_in_a_session_key_is_redacted_in_the_results(self):
        for args in (("kiwi", "--json"), ("kiwi",)):
            r = self.search(*args)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn(SECRET[13:], r.stdout)
            self.assertIn("agent:kate:http:[REDACTED]", r.stdout)

    def test_a_query_that_is_not_fts_syntax_is_searched_as_a_phrase(self):
        r = self.search("walrus)")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.splitlines()), 2)
        self.assertIn("phrase", r.stderr)

    def test_usage_errors_exit_2(self):
        for args in ([], ["--agent", "kate"], ["x", "--limit", "0"], ["x", "--limit", "many"],
                     ["x", "--bogus"], ["x", "--agent"]):
            r = self.search(*args)
            self.assertEqual(r.returncode, 2, (args, r.stdout, r.stderr))
            self.assertEqual(r.stdout, "")
        r = run_cli("--data", self.data, "transcripts", "frobnicate")
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_after_a_double_dash_every_word_is_the_query(self):
        r = self.search("--", "--data")  # not the option: the query "--data"
        self.assertEqual((r.returncode, r.stdout), (0, "no matches\n"), r.stderr)

    def test_search_only_reads_even_a_read_only_disk(self):
        """The search opens the database read-only: a 0400 database keeps its mode, and a copy
        on a read-only file system (a backup, a snapshot) is searched as is."""
        mnt = tempfile.mkdtemp(prefix="nexo-ro-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt], capture_output=True)
        if r.returncode != 0:
            os.rmdir(mnt)
            self.skipTest("a read-only file system needs mount: " + r.stderr.decode().strip())
        try:
            data = os.path.join(mnt, "data")
            shutil.copytree(self.data, data)
            os.chmod(os.path.join(data, "nexo.db"), 0o400)
            r = run_cli("--data", data, "transcripts", "search", "pineapple", "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(len(json.loads(r.stdout)), 2)
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(data, "nexo.db")).st_mode), 0o400)
            for f in ("nexo.db-wal", "nexo.db-shm"):  # the gateway stopped cleanly: none left
                if os.path.exists(os.path.join(data, f)):
                    os.unlink(os.path.join(data, f))
            subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
            r = run_cli("--data", data, "transcripts", "search", "pineapple", "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(len(json.loads(r.stdout)), 2)
        finally:
            subprocess.run(["umount", "-l", mnt], capture_output=True)
            os.rmdir(mnt)

    def test_no_database_means_no_matches_and_nothing_created(self):
        with tempfile.TemporaryDirectory() as d:
            empty = os.path.join(d, "data")
            r = run_cli("--data", empty, "transcripts", "search", "anything")
            self.assertEqual((r.returncode, r.stdout), (0, "no matches\n"), r.stderr)
            self.assertFalse(os.path.exists(empty))
            os.makedirs(empty)
            open(os.path.join(empty, "nexo.db"), "w").close()  # an empty file: nothing recorded
            r = run_cli("--data", empty, "transcripts", "search", "anything")
            self.assertEqual((r.returncode, r.stdout), (0, "no matches\n"), r.stderr)
            self.assertEqual(os.listdir(empty), ["nexo.db"])
            self.assertEqual(os.path.getsize(os.path.join(empty, "nexo.db")), 0)


if __name__ == "__main__":
    main()
