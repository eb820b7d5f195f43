"""Secure by default: no off-loopback listener without a token; the token guards metrics and
admin (not health); secrets never reach the log."""
import os
import tempfile
import unittest

from nexo_harness import Nexo, main, run_cli, write_config

TOKEN = "nx-test-token-5b1d0c9e-0f7a-4c1e"


class Security(unittest.TestCase):
    def test_refuses_off_loopback_without_token(self):
        with tempfile.TemporaryDirectory() as tmp:
            for flag in ("--listen", "--metrics-listen", "--admin-listen"):
                r = run_cli("run", "--data", os.path.join(tmp, "d"), flag, "0.0.0.0:0", cwd=tmp)
                self.assertEqual(r.returncode, 4, r.stderr)
                self.assertIn("refusing to listen on 0.0.0.0", r.stderr)
                self.assertIn("auth_token", r.stderr)
                # the advice reaches the user whole: nothing in it looks like a secret to redact
                self.assertIn("anyone on the network could use it", r.stderr)
                self.assertIn('"${NEXO_AUTH_TOKEN}"', r.stderr)
                self.assertNotIn("[REDACTED]", r.stderr)
                self.assertFalse(os.path.exists(os.path.join(tmp, "d", "nexo.db")))

    def test_token_guards_metrics_and_admin_not_health(self):
        with tempfile.TemporaryDirectory() as cfg:
            write_config(cfg, {"gateway.yaml": 'auth_token: "${NEXO_IT_TOKEN}"\n'})
            n = Nexo(config_dir=cfg, env={"NEXO_IT_TOKEN": TOKEN}, args=["--log-level", "trace"])
            try:
                n.start()
                self.assertEqual(n.request("GET", "/healthz")[0], 200)
                for listener, path in (("metrics", "/metrics"), ("admin", "/admin/status")):
                    status, _, headers = n.request("GET", path, listener=listener)
                    self.assertEqual(status, 401, path)
                    self.assertIn("Bearer", headers.get("www-authenticate", ""))
                    bad = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
                    self.assertEqual(n.request("GET", path, listener=listener, headers=bad)[0], 401)
                    good = {"Authorization": "Bearer " + TOKEN}
                    self.assertEqual(n.request("GET", path, listener=listener, headers=good)[0], 200)
                # A request that carries the token in a header is logged at trace at most; the
                # token must never appear in the log.
                n.stop()
                self.assertNotIn(TOKEN, n.read_log())
            finally:
                n.cleanup()


if __name__ == "__main__":
    main()
