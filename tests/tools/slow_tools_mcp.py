#!/usr/bin/env python3
"""An MCP stdio server with two tools for turn tests: `fast` answers at once and appends a line
to the file named by its first argument (its side effect, for the test to see that it ran);
`slow` answers after input.ms milliseconds (on a thread, so both can run at once)."""
import json
import sys
import threading
import time

MARKS = sys.argv[1] if len(sys.argv) > 1 else None
lock = threading.Lock()


def send(msg):
    with lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def reply(rid, result):
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def slow(rid, ms):
    time.sleep(ms / 1000.0)
    reply(rid, {"content": [{"type": "text", "text": "slow done after %d ms" % ms}]})


for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    method, rid = m.get("method"), m.get("id")
    if method == "initialize":
        reply(rid, {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
                    "serverInfo": {"name": "slow", "version": "1"}})
    elif method == "tools/list":
        reply(rid, {"tools": [
            {"name": "slow", "description": "answers after ms milliseconds",
             "inputSchema": {"type": "object", "properties": {"ms": {"type": "integer"}}}},
            {"name": "fast", "description": "answers at once", "inputSchema": {"type": "object"}}]})
    elif method == "tools/call":
        p = m["params"]
        if p["name"] == "slow":
            threading.Thread(target=slow, args=(rid, int(p.get("arguments", {}).get("ms", 1000))),
                             daemon=True).start()
        else:
            if MARKS:
                with open(MARKS, "a") as f:
                    f.write("fast ran\n")
            reply(rid, {"content": [{"type": "text", "text": "fast done (it has an effect)"}]})
    elif rid is not None and method:
        reply(rid, {})
