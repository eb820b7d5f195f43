"""A channel in another process reaches an agent through a real nats-server: an inbound event on
plugin.inbound.<plugin>.<instance> is routed by the agents' inbound_bindings, answered by the
agent (fake provider), and the reply comes back on plugin.outbound.<plugin>.<instance>."""
import json
import os
import shutil
import tempfile
import unittest

from nexo_harness import Nexo, main, write_config
# NatsConn, envelope and free_port are imported from here by test_whatsapp.py and test_scaleout.py
from peers import (NatsConn, NatsServer, envelope, fake_requests, free_port, llm_yaml,  # noqa: F401
                   poll, script, start_fake, stop_fake)

AGENTS = """\
agents:
  - id: kate
    model: {provider: anthropic, model: m}
    inbound_bindings: [{plugin: telegram, instance: kate_bot}]
  - id: ana
    model: {provider: anthropic, model: m}
    inbound_bindings: [{plugin: whatsapp}]
"""


class RouterOverNats(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="nexo-nats-")
        cls.nats = NatsServer(cls.tmp).start()
        cls.nport = cls.nats.port
        cls.fake, cls.fport = start_fake()
        write_config(os.path.join(cls.tmp, "config"), {
            "broker.yaml": "broker: {type: nats, url: \"nats://127.0.0.1:%d\"}\n" % cls.nport,
            "llm.yaml": llm_yaml(cls.fport),
            "agents.yaml": AGENTS,
        })
        cls.n = Nexo(config_dir=os.path.join(cls.tmp, "config")).start()
        poll(lambda: cls.n.get_json("/readyz")[1]["bus_mode"] == "nats", 15)

    @classmethod
    def tearDownClass(cls):
        code = cls.n.stop()
        cls.n.cleanup()
        stop_fake(cls.fake)
        cls.nats.kill()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert code == 0, code

    def test_inbound_message_is_answered_on_the_outbound_subject(self):
        self.assertEqual(self.n.get_json("/readyz")[1]["bus_mode"], "nats")
        c = NatsConn(self.nport)
        c.sub("plugin.outbound.>", 1)
        script(self.fport, [{"text": "hello Alice"}, {"text": "hola"}])
        # No binding matches telegram without an instance: dropped. Then whatsapp -> ana.
        c.pub("plugin.inbound.telegram", envelope("plugin.inbound.telegram",
                                                  {"kind": "message", "from": "1", "chat": 1, "text": "x"}))
        inbound = envelope("plugin.inbound.telegram.kate_bot",
                           {"kind": "message", "from": "42", "chat": 42, "text": "hi", "msg_id": 7})
        c.pub("plugin.inbound.telegram.kate_bot", inbound)
        subject, env = c.next_msg()
        self.assertEqual(subject, "plugin.outbound.telegram.kate_bot")
        self.assertEqual(env["source"], "kate")
        # the idempotency key: the inbound event id and the reply's index (docs/bus.md)
        self.assertEqual(env["payload"], {"to": "42", "text": "hello Alice", "reply_to": "7",
                                          "session_id": "agent:kate:telegram.kate_bot:42",
                                          "key": json.loads(inbound)["id"] + ":0"})
        c.pub("plugin.inbound.whatsapp", envelope("plugin.inbound.whatsapp",
                                                  {"kind": "message", "from": "573001112233", "text": "hola?"}))
        subject, env = c.next_msg()
        self.assertEqual(subject, "plugin.outbound.whatsapp")
        self.assertEqual((env["source"], env["payload"]["text"], env["payload"]["to"]),
                         ("ana", "hola", "573001112233"))
        reqs = fake_requests(self.fport)
        self.assertEqual(len(reqs), 2)  # the unbound telegram message never reached a model


if __name__ == "__main__":
    main()
