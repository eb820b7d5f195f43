"""The command line: help, version, exit codes, check-config over every broken configuration."""
import os
import tempfile
import unittest

from nexo_harness import TEST_DATA, main, run_cli


class Cli(unittest.TestCase):
    def test_version_prints_semver(self):
        for args in (["version"], ["--version"], ["-V"]):
            r = run_cli(*args)
            self.assertEqual(r.returncode, 0)
            self.assertRegex(r.stdout, r"^nexo \d+\.\d+\.\d+\n$")

    def test_help_lists_commands_and_exit_codes(self):
        r = run_cli("help")
        self.assertEqual(r.returncode, 0)
        for word in ("run", "check-config", "version", "--config", "--data", "--log-json",
                     "--listen", "--metrics-listen", "--admin-listen", "Exit codes"):
            self.assertIn(word, r.stdout)
        self.assertEqual(run_cli("--help").stdout, r.stdout)

    def test_help_for_each_command(self):
        for cmd in ("run", "check-config", "version", "help"):
            r = run_cli("help", cmd)
            self.assertEqual(r.returncode, 0, cmd)
            self.assertIn("Usage: nexo " + cmd, r.stdout)
        self.assertIn("Usage: nexo check-config", run_cli("check-config", "--help").stdout)
        for cmd in ("dlq", "pairing", "transcripts"):  # --help after the command too
            r = run_cli(cmd, "--help")
            self.assertEqual((r.returncode, r.stderr), (0, ""), cmd)
            self.assertIn("Usage: nexo " + cmd, r.stdout)

    def test_global_options_after_the_data_commands(self):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "data")
            for args in (["dlq", "list", "--data", data], ["dlq", "--data=" + data, "list"],
                         ["pairing", "list", "--data", data], ["--data", data, "pairing", "list"],
                         ["transcripts", "search", "hello", "--data", data]):
                r = run_cli(*args)
                self.assertEqual(r.returncode, 0, (args, r.stderr))
                if args[0] != "transcripts":  # theirs, not ./data, and a mistyped one is named
                    self.assertIn("nothing is recorded under %s (no nexo.db there): is --data right?" % data,
                                  r.stderr)
            self.assertFalse(os.path.exists(data))  # nothing made just to report on it
            for args in (["dlq", "retry", "--all"], ["dlq", "purge"], ["pairing", "approve", "ABCD2345"]):
                r = run_cli(*args, "--data", data)
                self.assertEqual(r.returncode, 1, (args, r.stderr))
                self.assertIn("is --data right?", r.stderr)

    def test_bad_command_line_exits_2(self):
        for args in (["frobnicate"], ["--nope"], ["run", "--listen"], ["--listen", "nonsense"],
                     ["help", "frobnicate"], ["--log-level", "loud", "run"]):
            r = run_cli(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn("nexo:", r.stderr)

    def test_missing_config_dir_exits_3(self):
        r = run_cli("run", "--config", "/nonexistent/nexo-config")
        self.assertEqual(r.returncode, 3)
        self.assertIn("does not exist", r.stderr)

    def test_check_config_accepts_embedded_defaults_and_good_config(self):
        r = run_cli("check-config", cwd="/")
        self.assertEqual(r.returncode, 0, r.stderr)
        good = os.path.join(TEST_DATA, "good-config")
        if os.path.isdir(good):
            r = run_cli("check-config", good, env={"NEXO_TEST_KEY": "k"})
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("configuration OK", r.stdout)

    def test_check_config_warns_of_a_configuration_with_no_agents(self):
        # an empty agents.yaml (or agents: []) is valid, but every model request would get 404
        self.assertNotIn("no agents", run_cli("check-config", cwd="/").stderr)
        with tempfile.TemporaryDirectory() as tmp:
            open(os.path.join(tmp, "agents.yaml"), "w").close()
            r = run_cli("check-config", tmp)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("configuration OK", r.stdout)
            self.assertIn("warning: no agents configured", r.stderr)

    def check_two_instances(self, plugin, inst, want):
        """check-config on plugins/<plugin>.yaml holding inst for "a" then "b": exit 3 and the message
        want (after the file's path); what stderr and stdout say besides."""
        with tempfile.TemporaryDirectory() as tmp:
            os.mkdir(os.path.join(tmp, "plugins"))
            with open(os.path.join(tmp, "plugins", plugin + ".yaml"), "w") as f:
                f.write(plugin + ":\n" + inst % "a" + inst % "b")
            r = run_cli("check-config", tmp)
            self.assertEqual(r.returncode, 3, r.stderr)
            self.assertIn(tmp + "/plugins/" + plugin + ".yaml:" + want + "\n", r.stderr)
            return r.stderr + r.stdout

    def test_check_config_refuses_two_whatsapp_instances_of_one_number(self):
        # they would take each other's webhooks; the loader's own checks pass it, the channel's refuse
        self.check_two_instances(
            "whatsapp", "  - instance: %s\n    phone_number_id: \"106540352242922\"\n    access_token: t\n"
                        "    app_secret: s\n    verify_token: v\n",
            "8:22: whatsapp instance \"b\" has the same phone_number_id \"106540352242922\" as instance \"a\" "
            "(line 3, column 22): each phone_number_id belongs to one instance")

    def test_check_config_refuses_two_telegram_instances_of_one_bot_without_naming_its_token(self):
        said = self.check_two_instances(
            "telegram", "  - instance: %s\n    token: \"5550001:SECRET-BOT-TOKEN\"\n",
            "5:12: telegram instance \"b\" has the same token as instance \"a\" (line 3, column 12): "
            "each token belongs to one instance")
        self.assertNotIn("SECRET-BOT-TOKEN", said)

    def test_shipped_example_config_is_valid(self):
        src = os.environ.get("NEXO_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
        r = run_cli("check-config", os.path.join(src, "docs", "examples", "config"))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_check_config_reports_exact_positions_for_every_bad_config(self):
        root = os.path.join(TEST_DATA, "bad-config")
        cases = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.assertGreaterEqual(len(cases), 15)
        for case in cases:
            d = os.path.join(root, case)
            with open(os.path.join(d, "expected.txt")) as f:
                expected = [l for l in f.read().splitlines() if l.strip()]
            r = run_cli("check-config", d, env={"NEXO_TEST_UNSET": ""}, cwd=d)
            self.assertEqual(r.returncode, 3, case + ": " + r.stderr)
            got = [l[len(d) + 1:] if l.startswith(d + "/") else l
                   for l in r.stderr.splitlines() if ":" in l and not l.startswith(d + ":")]
            self.assertEqual(got, expected, case)


if __name__ == "__main__":
    main()
