# NX_TEST_LABELS: threaded (also run against the TSan build)
"""SIGHUP: a valid configuration is swapped in; an invalid one is reported with file:line:col
and the running one stays."""
import os
import re
import signal
import tempfile
import unittest

from nexo_harness import Nexo, main, write_config


class Reload(unittest.TestCase):
    def test_valid_reload_swaps_invalid_reload_keeps_old(self):
        with tempfile.TemporaryDirectory() as cfg:
            write_config(cfg, {"gateway.yaml": "auth_token: first-token-aaaaaaaa\n"})
            n = Nexo(config_dir=cfg)
            try:
                n.start()

                def status(token):
                    return n.request("GET", "/admin/status", listener="admin",
                                     headers={"Authorization": "Bearer " + token})[0]

                self.assertEqual(status("first-token-aaaaaaaa"), 200)
                write_config(cfg, {"gateway.yaml": "auth_token: second-token-bbbbbbbb\n"})
                n.signal(signal.SIGHUP)
                n.wait_log(r"configuration reloaded")
                self.assertEqual(status("second-token-bbbbbbbb"), 200)
                self.assertEqual(status("first-token-aaaaaaaa"), 401)

                write_config(cfg, {"gateway.yaml": "auth_token: third-token-cccccccc\nlisten: [1\n"})
                n.signal(signal.SIGHUP)
                n.wait_log(r"reload failed")
                log = n.read_log()
                self.assertRegex(log, re.escape(os.path.join(cfg, "gateway.yaml")) + r":\d+:\d+: ")
                self.assertEqual(status("second-token-bbbbbbbb"), 200)
                self.assertEqual(status("third-token-cccccccc"), 401)

                _, body, _ = n.request("GET", "/metrics", listener="metrics",
                                       headers={"Authorization": "Bearer second-token-bbbbbbbb"})
                text = body.decode()
                self.assertIn('nexo_config_reloads_total{result="ok"} 1', text)
                self.assertIn('nexo_config_reloads_total{result="error"} 1', text)
                self.assertEqual(n.stop(), 0)
            finally:
                n.cleanup()


if __name__ == "__main__":
    main()
