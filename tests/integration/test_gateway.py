# NX_TEST_LABELS: threaded (also run against the TSan build)
"""The gateway on embedded defaults: health, readiness, metrics (checked by promtool), the admin
console, and the data directory's permissions."""
import json
import os
import stat
import subprocess
import unittest

from nexo_harness import Nexo, main


class Gateway(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.n = Nexo().start()

    @classmethod
    def tearDownClass(cls):
        cls.n.stop()
        cls.n.cleanup()

    def test_healthz_and_health_answer_ok(self):
        for path in ("/healthz", "/health"):
            status, body, headers = self.n.request("GET", path)
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body), {"status": "ok"})
            self.assertEqual(headers["content-type"], "application/json")

    def test_readyz_and_ready_report_each_check(self):
        for path in ("/readyz", "/ready"):
            status, body = self.n.get_json(path)
            self.assertEqual(status, 200)
            self.assertEqual(body["status"], "ready")
            self.assertEqual(body["checks"], {"config": True, "store": True, "bus": True})
            self.assertEqual(body["bus_mode"], "in-process")

    def test_unknown_path_is_404(self):
        status, _, _ = self.n.request("GET", "/no/such/thing")
        self.assertEqual(status, 404)

    def test_metrics_pass_promtool(self):
        self.n.request("GET", "/healthz")
        status, body, headers = self.n.request("GET", "/metrics", listener="metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        text = body.decode()
        for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                     "process_open_fds", "process_start_time_seconds", "nexo_build_info",
                     "nexo_ready 1"):
            self.assertIn(name, text)
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr.decode() + r.stdout.decode())

    def test_admin_page_and_status(self):
        status, body, headers = self.n.request("GET", "/", listener="admin")
        self.assertEqual(status, 200)
        self.assertIn(b"<title>nexo admin</title>", body)
        status, st = self.n.get_json("/admin/status", listener="admin")
        self.assertEqual(status, 200)
        self.assertTrue(st["ready"])
        self.assertEqual(st["listeners"]["gateway"]["port"], self.n.ports["gateway"])

    def test_admin_log_level_rejects_invalid_json_and_stays_up(self):
        status, body, _ = self.n.request("POST", "/admin/log-level", body=b'{"level": ',
                                         listener="admin",
                                         headers={"Content-Type": "application/json"})
        self.assertEqual(status, 400)
        self.assertIn("invalid JSON", json.loads(body)["error"]["message"])
        status, body, _ = self.n.request("POST", "/admin/log-level", body=b'{"level":"loud"}',
                                         listener="admin")
        self.assertEqual(status, 400)
        status, body, _ = self.n.request("POST", "/admin/log-level", body=b'{"level":"info"}',
                                         listener="admin")
        self.assertEqual((status, json.loads(body)), (200, {"level": "info"}))
        self.assertEqual(self.n.request("GET", "/healthz")[0], 200)

    def test_data_dir_is_private(self):
        st = os.stat(self.n.data_dir)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o700)
        db = os.path.join(self.n.data_dir, "nexo.db")
        self.assertEqual(stat.S_IMODE(os.stat(db).st_mode), 0o600)


if __name__ == "__main__":
    main()
