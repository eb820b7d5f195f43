#!/usr/bin/env python3
"""A protocol-faithful fake of two LLM APIs, for tests and benchmarks (stdlib only).

  POST /v1/messages           Anthropic Messages API (x-api-key, anthropic-version)
  POST /v1/chat/completions   OpenAI Chat Completions (Authorization: Bearer); also /chat/completions

Both stream (SSE, the providers' exact event sequences, chunked transfer encoding) or answer
whole, check auth and validate request bodies the way the real APIs do, and send the real error
bodies, `retry-after` and request-id headers.

Control (no auth):
  POST /_script    JSON list of steps, consumed one per API request (FIFO; when empty the
                   answer is the text "hello from fake"). A step is an object with any of:
                     {"text": "...", "chunks": N, "delay_ms": D}   text in N stream deltas, D ms apart
                     {"tool_use": {"name": ..., "input": {...}}}   or a list of them (parallel calls)
                     {"raw_arguments": "..."}                     OpenAI: arguments string as is
                     {"error": {"status": 429, "type": "rate_limit_error", "message": "...",
                                "retry_after": 1, "retry_after_ms": 200}}
                     {"error_midstream": "overloaded_error"}      stream some text, then an error event
                     {"hang_ms": N}                               wait before answering (slow upstream)
                     {"hold": "name"}                             wait before answering until POST /_release
                                                                  names it (60 s at most): a turn kept open
                                                                  for as long as a test needs, however slow
                                                                  the machine
                     {"drop": true}                               close the connection, no answer
                     {"hold_open_ms": N, "hold_pings": bool}      streams: the body ends N ms after the
                                                                  last event ([DONE], message_stop), with
                                                                  SSE comments meanwhile if hold_pings;
                                                                  whole answers: a chunked body, ended N
                                                                  ms after the JSON
                     {"stall_pings_ms": N}                        streams: after the first delta, only
                                                                  keep-alives for N ms (Anthropic ping
                                                                  events, OpenAI SSE comments), then the rest
                     {"cut_after_end": true}                     streams: the connection closes after the
                                                                  last event, without the body's last chunk
                     {"ignore_stream": true}                      a streaming request gets the whole JSON
                                                                  answer (a server that ignores "stream")
                     {"no_usage": true}                           OpenAI streams: no usage chunk, whatever
                                                                  stream_options asks (older Ollama)
                     {"refuse_stream": true}                      OpenAI: a streaming request gets 400,
                                                                  param "stream" (an unverified org's o3)
                     {"refuse_stream_options": true}              OpenAI: a request with stream_options gets
                                                                  Mistral's 422 (its schema forbids extras)
                     {"reject_echo": true}                        OpenAI: FastAPI's 422 for a field the server
                                                                  wants, echoing the request in "input" (vLLM)
                     {"stop_reason": "max_tokens"}, {"usage": {...}}, {"model": "..."}
  GET  /_requests  recorded requests: [{"endpoint","method","path","headers","body","t"}]
  POST /_release   {"name": "..."}: the requests held under that name answer (and later ones
                   with that name do not wait)
  POST /_reset     clears the script, the records and the config overrides (and releases holds)
  POST /_config    {"auth": bool, "key": "...", "chunks": N, "chunk_delay_ms": D}

Flags: --key KEY (default "test-key"; both APIs), --no-auth, --instant (answer at once with the
least work per request: no recording, no validation; for throughput benchmarks), --chunks N and
--chunk-delay-ms D (default streaming shape: a slow-stream mode), --port P (default 0: any free).
Prints "READY <port>" once listening on 127.0.0.1.
"""

import argparse
import base64
import collections
import json
import random
import re
import string
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_TEXT = "hello from fake"


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.args = args
        self.script = collections.deque()
        self.requests = []
        self.gates = {}
        self.reset()

    def gate(self, name):
        with self.lock:
            return self.gates.setdefault(name, threading.Event())

    def reset(self):
        with self.lock:
            for g in self.gates.values():
                g.set()
            self.gates = {}
            self.script.clear()
            self.requests = []
            self.auth = not self.args.no_auth
            self.key = self.args.key
            self.chunks = self.args.chunks
            self.chunk_delay_ms = self.args.chunk_delay_ms

    def pop(self):
        if not self.script:  # cheap check first (instant mode)
            return {}
        with self.lock:
            return self.script.popleft() if self.script else {}


STATE = None


def rand_id(prefix, n=24):
    return prefix + "".join(random.choice(string.ascii_letters + string.digits) for _ in range(n))


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def split_text(text, n):
    n = max(1, min(n, len(text))) if text else 1
    size = -(-len(text) // n) if text else 0
    parts = [text[i:i + size] for i in range(0, len(text), size)] if text else [""]
    return parts


def approx_tokens(obj):
    return max(1, len(json.dumps(obj)) // 4)


def tool_list(step):
    tu = step.get("tool_use")
    if tu is None:
        return []
    return tu if isinstance(tu, list) else [tu]


ANTHROPIC_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "overloaded_error": 529,
}

# Anthropic error types as OpenAI reports the same condition: (type, code, status)
OPENAI_ERRORS = {
    "rate_limit_error": ("requests", "rate_limit_exceeded", 429),
    "api_error": ("server_error", None, 500),
    "overloaded_error": ("server_error", None, 503),
    "authentication_error": ("invalid_request_error", "invalid_api_key", 401),
    "permission_error": ("invalid_request_error", None, 403),
    "not_found_error": ("invalid_request_error", "model_not_found", 404),
    "invalid_request_error": ("invalid_request_error", None, 400),
    "request_too_large": ("invalid_request_error", None, 413),
}

REASONS = {529: "Overloaded"}


IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def anthropic_image_error(b, where):
    """An image block as the Messages API checks it: source base64 (media_type one of four, data
    valid base64 of at most 5 MB) or url. https://docs.claude.com/en/docs/build-with-claude/vision"""
    src = b.get("source")
    if not isinstance(src, dict) or src.get("type") not in ("base64", "url"):
        return "%s.source: Input tag '%s' found using 'type' does not match any of the expected tags: " \
               "'base64', 'url'" % (where, (src or {}).get("type") if isinstance(src, dict) else None)
    if src["type"] == "url":
        return None if isinstance(src.get("url"), str) else "%s.source.url.url: Field required" % where
    if src.get("media_type") not in IMAGE_TYPES:
        return "%s.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or " \
               "'image/webp'" % where
    data = src.get("data")
    if not isinstance(data, str):
        return "%s.source.base64.data: Field required" % where
    if len(data) > 5 * 1024 * 1024:
        return "%s.source.base64: image exceeds 5 MB maximum: %d bytes > 5242880 bytes" % (where, len(data))
    try:
        base64.b64decode(data, validate=True)
    except (ValueError, TypeError):
        return "%s.source.base64.data: The image data is not valid base64" % where
    return None


def openai_image_error(part, where):
    """image_url parts: {"type": "image_url", "image_url": {"url": "https://..." | "data:<mime>;base64,..."}}."""
    url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
    if not isinstance(url, str):
        return ("Missing required parameter: '%s.image_url.url'." % where, where, "missing_required_parameter")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if not head.endswith(";base64") or head[5:-7] not in IMAGE_TYPES:
            return ("Invalid image URL: '%s.image_url.url'. Expected a base64-encoded data URL with an image "
                    "MIME type (e.g. 'data:image/png;base64,...')." % where, where, "invalid_image_url")
        try:
            base64.b64decode(data, validate=True)
        except (ValueError, TypeError):
            return ("You uploaded an unsupported image. Please make sure your image is valid.", None,
                    "invalid_image_format")
    elif not url.startswith(("http://", "https://")):
        return ("Invalid image URL: '%s.image_url.url'." % where, where, "invalid_image_url")
    return None


class Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms Nagle stall
    protocol_version = "HTTP/1.1"
    server_version = "fake-llm"
    sys_version = ""

    def log_message(self, fmt, *args):  # quiet
        pass

    # ---- plumbing -------------------------------------------------------------------------

    def read_body(self):
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send_json(self, status, obj, extra=None, step=None):
        data = compact(obj).encode()
        held = step and step.get("hold_open_ms")  # a proxy's chunked body, left open after the JSON
        self.send_response(status, REASONS.get(status))
        self.send_header("content-type", "application/json")
        self.send_header("transfer-encoding" if held else "content-length", "chunked" if held else str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not held:
            return self.wfile.write(data)
        self.chunk(data)
        self.hold_open(step)
        self.end_stream(step)

    def start_stream(self, extra):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def chunk(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def hold_open(self, step):
        """A keep-alive proxy's habit: the body stays open a while after the stream's last event,
        with an SSE comment every 200 ms when the step says "hold_pings": true."""
        end = time.monotonic() + step.get("hold_open_ms", 0) / 1000.0
        while time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
            if step.get("hold_pings") and time.monotonic() < end:
                self.chunk(": keep-alive\n\n")

    def end_stream(self, step=None):
        if step and step.get("cut_after_end"):  # the connection breaks before the last chunk
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def record(self, endpoint, raw):
        if STATE.args.instant:
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        rec = {"endpoint": endpoint, "method": self.command, "path": self.path,
               "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
               "t": time.monotonic()}
        with STATE.lock:
            STATE.requests.append(rec)

    # ---- routing --------------------------------------------------------------------------

    def do_GET(self):
        try:
            if self.path == "/_requests":
                with STATE.lock:
                    reqs = list(STATE.requests)
                self.send_json(200, reqs)
            elif self.path in ("/healthz", "/"):
                self.send_json(200, {"ok": True})
            else:
                self.send_json(404, {"error": "not found"})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_POST(self):
        try:
            raw = self.read_body()
            path = self.path.split("?", 1)[0]
            if path == "/_script":
                steps = json.loads(raw or b"[]")
                with STATE.lock:
                    STATE.script.extend(steps if isinstance(steps, list) else [steps])
                self.send_json(200, {"queued": len(STATE.script)})
            elif path == "/_release":
                STATE.gate(json.loads(raw or b"{}").get("name", "")).set()
                self.send_json(200, {"ok": True})
            elif path == "/_reset":
                STATE.reset()
                self.send_json(200, {"ok": True})
            elif path == "/_config":
                cfg = json.loads(raw or b"{}")
                with STATE.lock:
                    STATE.auth = cfg.get("auth", STATE.auth)
                    STATE.key = cfg.get("key", STATE.key)
                    STATE.chunks = cfg.get("chunks", STATE.chunks)
                    STATE.chunk_delay_ms = cfg.get("chunk_delay_ms", STATE.chunk_delay_ms)
                self.send_json(200, {"ok": True})
            elif path == "/v1/messages":
                self.anthropic(raw)
            elif path in ("/v1/chat/completions", "/chat/completions"):
                self.openai(raw)
            else:
                self.send_json(404, {"type": "error", "error": {"type": "not_found_error",
                                                                "message": "Not found"}})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ---- shared step handling ---------------------------------------------------------------

    def pre_step(self, step):
        """Applies hang/drop; returns False when the connection was dropped."""
        if step.get("hang_ms"):
            time.sleep(step["hang_ms"] / 1000.0)
        if step.get("hold"):
            STATE.gate(step["hold"]).wait(60)
        if step.get("drop"):
            self.close_connection = True
            return False
        return True

    def pace(self, step, ping=": keep-alive\n\n"):
        d = step.get("delay_ms", STATE.chunk_delay_ms)
        if d:
            time.sleep(d / 1000.0)
        end = time.monotonic() + step.pop("stall_pings_ms", 0) / 1000.0
        while time.monotonic() < end:  # a model stalled behind a proxy that keeps the body alive
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
            self.chunk(ping)

    def think(self, step, nchunks):
        """A whole answer takes as long as its stream would have (a step's own delay_ms only)."""
        if step.get("delay_ms") and nchunks > 1:
            time.sleep((nchunks - 1) * step["delay_ms"] / 1000.0)

    # ---- Anthropic --------------------------------------------------------------------------

    def anthropic_error(self, status, etype, message, extra=None):
        rid = rand_id("req_")
        hdrs = {"request-id": rid}
        hdrs.update(extra or {})
        self.send_json(status, {"type": "error", "error": {"type": etype, "message": message},
                                "request_id": rid}, hdrs)

    def anthropic_validate(self, body):
        if not isinstance(body, dict):
            return "The request body is not valid JSON."
        for field in ("model", "messages", "max_tokens"):
            if field not in body:
                return "%s: Field required" % field
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            return "max_tokens: Input should be a valid integer greater than or equal to 1"
        temp = body.get("temperature")
        if temp is not None and (isinstance(temp, bool) or not isinstance(temp, (int, float))
                                 or not 0 <= temp <= 1):
            return "temperature: range: 0..1"
        for seq in body.get("stop_sequences") or []:
            if not isinstance(seq, str) or not seq.strip():
                return "stop_sequences: each stop sequence must contain non-whitespace"
        msgs = body["messages"]
        if not isinstance(msgs, list):
            return "messages: Input should be a valid list"
        if not msgs:
            return "messages: at least one message is required"
        if msgs[0].get("role") != "user":
            return 'messages: first message must use the "user" role'
        prev_tool_ids = set()
        for i, m in enumerate(msgs):
            if i and m.get("role") == msgs[i - 1].get("role"):
                return ('messages: roles must alternate between "user" and "assistant", but found '
                        'multiple "%s" roles in a row' % m.get("role"))
            content = m.get("content")
            blocks = content if isinstance(content, list) else []
            ids = set()
            for j, b in enumerate(blocks):
                t = b.get("type")
                if t == "tool_use":
                    for k in b:
                        if k not in ("type", "id", "name", "input", "cache_control"):
                            return "messages.%d.content.%d.tool_use.%s: Extra inputs are not permitted" % (i, j, k)
                    if not isinstance(b.get("input"), dict):
                        return "messages.%d.content.%d.tool_use.input: Input should be a valid dictionary" % (i, j)
                    ids.add(b.get("id"))
                elif t == "text" and not isinstance(b.get("text"), str):
                    return "messages.%d.content.%d.text.text: Field required" % (i, j)
                elif t == "text" and not b["text"]:
                    return "messages: text content blocks must be non-empty"
                elif t == "text" and not b["text"].strip():
                    return "messages: text content blocks must contain non-whitespace text"
                elif t == "image":
                    err = anthropic_image_error(b, "messages.%d.content.%d.image" % (i, j))
                    if err:
                        return err
                elif t == "tool_result" and b.get("tool_use_id") not in prev_tool_ids:
                    return ("messages.%d.content.%d: unexpected `tool_use_id` found in `tool_result` blocks: %s. "
                            "Each `tool_result` block must have a corresponding `tool_use` block in the "
                            "previous message." % (i, j, b.get("tool_use_id")))
            prev_tool_ids = ids
        ncache = 0
        system = body.get("system")
        if isinstance(system, list):
            ncache += sum(1 for b in system if isinstance(b, dict) and "cache_control" in b)
        def marks(blocks):  # message blocks, and the blocks inside a tool_result's content
            return sum(("cache_control" in b) + marks(b.get("content") if isinstance(b.get("content"), list) else [])
                       for b in blocks if isinstance(b, dict))
        for m in body.get("messages") or []:
            if isinstance(m, dict) and isinstance(m.get("content"), list):
                ncache += marks(m["content"])
        for t in body.get("tools") or []:
            if "cache_control" in t:
                ncache += 1
            if "name" not in t or "input_schema" not in t:
                return "tools.0.custom.input_schema: Field required"
        if ncache > 4:
            return "A maximum of 4 blocks with cache_control may be provided. Found %d." % ncache
        return None

    def anthropic(self, raw):
        st = STATE
        if st.args.instant and not st.script:
            return self.anthropic_instant(raw)
        self.record("anthropic", raw)
        if not self.headers.get("anthropic-version"):
            return self.anthropic_error(400, "invalid_request_error", "anthropic-version: header is required")
        if st.auth:
            key = self.headers.get("x-api-key")
            if not key:
                return self.anthropic_error(401, "authentication_error", "x-api-key header is required")
            if key != st.key:
                return self.anthropic_error(401, "authentication_error", "invalid x-api-key")
        try:
            body = json.loads(raw)
        except ValueError:
            return self.anthropic_error(400, "invalid_request_error",
                                        "There was an error parsing the body of your request as JSON.")
        err = self.anthropic_validate(body)
        if err:
            return self.anthropic_error(400, "invalid_request_error", err)
        step = st.pop()
        if not self.pre_step(step):
            return
        stream = bool(body.get("stream")) and not step.get("ignore_stream")
        model = step.get("model", body["model"])
        if "error" in step:
            e = step["error"]
            etype = e.get("type", "api_error")
            extra = {}
            if "retry_after" in e:
                extra["retry-after"] = str(e["retry_after"])
            if "retry_after_ms" in e:
                extra["retry-after-ms"] = str(e["retry_after_ms"])
            return self.anthropic_error(e.get("status", ANTHROPIC_STATUS.get(etype, 500)), etype,
                                        e.get("message", "fake error"), extra)
        if step.get("error_midstream") and not stream:
            etype = step["error_midstream"]
            return self.anthropic_error(ANTHROPIC_STATUS.get(etype, 500), etype, "Overloaded")
        text = step.get("text", DEFAULT_TEXT if not tool_list(step) else "")
        tools = tool_list(step)
        stop = step.get("stop_reason", "tool_use" if tools else "end_turn")
        seq = None  # the sequence that matched, which the API names (one of the request's)
        if stop == "stop_sequence":
            seq = step.get("stop_sequence") or next(iter(body.get("stop_sequences") or []), None)
            if seq not in (body.get("stop_sequences") or []):
                return self.anthropic_error(500, "api_error", "fake: stop_sequence %r was not asked for" % seq)
        usage = {"input_tokens": approx_tokens(body["messages"]), "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0, "output_tokens": max(1, len(text) // 4) + 10 * len(tools)}
        usage.update(step.get("usage", {}))
        blocks = []
        if text:
            blocks.append({"type": "text", "text": text})
        for t in tools:
            blocks.append({"type": "tool_use", "id": t.get("id") or rand_id("toolu_01"),
                           "name": t["name"], "input": t.get("input", {})})
        msg_id = rand_id("msg_01")
        hdrs = {"request-id": rand_id("req_")}
        if not stream:
            self.think(step, step.get("chunks", st.chunks))
            return self.send_json(200, {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                                        "content": blocks, "stop_reason": stop, "stop_sequence": seq,
                                        "usage": usage}, hdrs, step)
        self.start_stream(hdrs)

        def ev(name, obj):
            self.chunk("event: %s\ndata: %s\n\n" % (name, compact(obj)))

        start_usage = dict(usage, output_tokens=1)
        ev("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
        nchunks = step.get("chunks", st.chunks)
        for idx, b in enumerate(blocks):
            if b["type"] == "text":
                ev("content_block_start", {"type": "content_block_start", "index": idx,
                                           "content_block": {"type": "text", "text": ""}})
                if idx == 0:
                    self.chunk('event: ping\ndata: {"type": "ping"}\n\n')
                for k, part in enumerate(split_text(b["text"], nchunks)):
                    if k:
                        self.pace(step, 'event: ping\ndata: {"type": "ping"}\n\n')
                    ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                               "delta": {"type": "text_delta", "text": part}})
                    if step.get("error_midstream"):
                        ev("error", {"type": "error", "error": {"type": step["error_midstream"],
                                                                "message": "Overloaded"}})
                        return self.end_stream()
            else:
                ev("content_block_start", {"type": "content_block_start", "index": idx, "content_block": {
                    "type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}})
                js = compact(b["input"])
                ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                           "delta": {"type": "input_json_delta", "partial_json": ""}})
                for part in split_text(js, 3):
                    ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                               "delta": {"type": "input_json_delta", "partial_json": part}})
            ev("content_block_stop", {"type": "content_block_stop", "index": idx})
        if step.get("error_midstream"):
            ev("error", {"type": "error", "error": {"type": step["error_midstream"], "message": "Overloaded"}})
            return self.end_stream()
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": seq},
                             "usage": {"output_tokens": usage["output_tokens"]}})
        ev("message_stop", {"type": "message_stop"})
        self.hold_open(step)
        self.end_stream(step)

    def anthropic_instant(self, raw):
        if not instant_stream(raw):
            return self.send_json(200, INSTANT_ANTHROPIC_JSON, {"request-id": "req_instant"})
        self.start_stream({"request-id": "req_instant"})
        self.chunk(INSTANT_ANTHROPIC_SSE)
        self.end_stream()

    # ---- OpenAI -----------------------------------------------------------------------------

    def openai_error(self, status, message, etype, param=None, code=None, extra=None):
        hdrs = {"x-request-id": rand_id("req_", 32)}
        hdrs.update(extra or {})
        self.send_json(status, {"error": {"message": message, "type": etype, "param": param, "code": code}}, hdrs)

    def openai_validate(self, body):
        """Returns (message, param, code) or None."""
        if not isinstance(body, dict):
            return ("We could not parse the JSON body of your request.", None, None)
        if "model" not in body:
            return ("you must provide a model parameter", None, None)
        if "messages" not in body:
            return ("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
        msgs = body["messages"]
        if not isinstance(msgs, list) or not msgs:
            return ("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
                    "empty array instead.", "messages", "empty_array")
        model = str(body.get("model"))
        if re.match(r"o[1-9]|gpt-5", model):  # OpenAI's reasoning models
            if "max_tokens" in body:
                return ("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                        "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
            if body.get("temperature", 1) != 1 and not model.startswith("gpt-5-chat"):
                return ("Unsupported value: 'temperature' does not support %s with this model. Only the "
                        "default (1) value is supported." % body["temperature"], "temperature",
                        "unsupported_value")
        stop = body.get("stop")
        if isinstance(stop, list) and len(stop) > 4:
            return ("Invalid 'stop': array too long. Expected an array with maximum length 4, but got an "
                    "array with length %d instead." % len(stop), "stop", "array_above_max_length")
        if body.get("stream_options") is not None and not body.get("stream"):
            return ("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    "stream_options", None)
        pending = None  # tool_call_ids still owed a tool message
        for i, m in enumerate(msgs):
            role = m.get("role")
            if role not in ("system", "developer", "user", "assistant", "tool"):
                return ("Invalid value: '%s'. Supported values are: 'system', 'assistant', 'user', 'function', "
                        "'tool', and 'developer'." % role, "messages[%d].role" % i, "invalid_value")
            if role == "tool":
                if pending is None or m.get("tool_call_id") not in pending:
                    return ("Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                            "message with 'tool_calls'.", "messages.[%d].role" % i, None)
                pending.discard(m.get("tool_call_id"))
                continue
            if pending:
                return ("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                        "each 'tool_call_id'. The following tool_call_ids did not have response messages: %s"
                        % ", ".join(sorted(pending)), "messages.[%d].role" % i, None)
            pending = None
            if role == "user" and isinstance(m.get("content"), list):
                for j, part in enumerate(m["content"]):
                    if isinstance(part, dict) and part.get("type") == "image_url":
                        err = openai_image_error(part, "messages[%d].content[%d]" % (i, j))
                        if err:
                            return err
            if role == "assistant" and m.get("tool_calls"):
                pending = set()
                for tc in m["tool_calls"]:
                    if not isinstance(tc.get("function", {}).get("arguments"), str):
                        return ("Invalid type for 'messages[%d].tool_calls[0].function.arguments': expected a "
                                "string, but got an object instead." % i, "messages[%d].tool_calls" % i,
                                "invalid_type")
                    pending.add(tc.get("id"))
        if pending:
            return ("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                    "'tool_call_id'. The following tool_call_ids did not have response messages: %s"
                    % ", ".join(sorted(pending)), "messages", None)
        return None

    def openai(self, raw):
        st = STATE
        if st.args.instant and not st.script:
            return self.openai_instant(raw)
        self.record("openai", raw)
        if st.auth:
            auth = self.headers.get("authorization") or ""
            if not auth.startswith("Bearer ") or not auth[7:].strip():
                return self.openai_error(401, "You didn't provide an API key. You need to provide your API key in "
                                         "an Authorization header using Bearer auth (i.e. Authorization: Bearer "
                                         "YOUR_KEY), or as the password field (with blank username) if you're "
                                         "accessing the API from your browser and are prompted for a username "
                                         "and password. You can obtain an API key from "
                                         "https://platform.openai.com/account/api-keys.", "invalid_request_error")
            key = auth[7:].strip()
            if key != st.key:
                masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 7 else key
                return self.openai_error(401, "Incorrect API key provided: %s. You can find your API key at "
                                         "https://platform.openai.com/account/api-keys." % masked,
                                         "invalid_request_error", code="invalid_api_key")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        err = self.openai_validate(body)
        if err:
            return self.openai_error(400, err[0], "invalid_request_error", err[1], err[2])
        step = st.pop()
        if not self.pre_step(step):
            return
        stream = bool(body.get("stream")) and not step.get("ignore_stream")
        include_usage = stream and bool((body.get("stream_options") or {}).get("include_usage")) and \
            not step.get("no_usage")
        model = step.get("model", body["model"])
        if step.get("reject_echo"):
            return self.send_json(422, {"detail": [{"type": "missing", "loc": ["body", "prompt"],
                                                    "msg": "Field required", "input": body}]})
        if step.get("refuse_stream_options") and "stream_options" in body:
            return self.send_json(422, {"object": "error", "message": {"detail": [{
                "type": "extra_forbidden", "loc": ["body", "stream_options"], "msg": "Extra inputs are not permitted",
                "input": body["stream_options"]}]}, "type": "invalid_request_error", "param": None, "code": None})
        if step.get("refuse_stream") and stream:
            return self.openai_error(400, "Your organization must be verified to stream this model. Please go "
                                     "to: https://platform.openai.com/settings/organization/general and click "
                                     "on Verify Organization.", "invalid_request_error", "stream",
                                     "unsupported_value")
        if "error" in step or (step.get("error_midstream") and not stream):
            e = step.get("error") or {"type": step["error_midstream"]}
            otype, ocode, ostatus = OPENAI_ERRORS.get(e.get("type", "api_error"), (e.get("type"), None, 500))
            extra = {}
            if "retry_after" in e:
                extra["retry-after"] = str(e["retry_after"])
            if "retry_after_ms" in e:
                extra["retry-after-ms"] = str(e["retry_after_ms"])
            return self.openai_error(e.get("status", ostatus), e.get("message", "fake error"),
                                     e.get("openai_type", otype), None, e.get("code", ocode), extra)
        text = step.get("text", DEFAULT_TEXT if not tool_list(step) and "raw_arguments" not in step else "")
        calls = []
        for t in tool_list(step):
            calls.append({"id": t.get("id") or rand_id("call_"), "type": "function",
                          "function": {"name": t["name"], "arguments": compact(t.get("input", {}))}})
        if "raw_arguments" in step:
            calls.append({"id": rand_id("call_"), "type": "function",
                          "function": {"name": step.get("raw_name", "broken"), "arguments": step["raw_arguments"]}})
        finish = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "refusal": "content_filter"}.get(step.get("stop_reason"), step.get("stop_reason"))
        finish = finish or ("tool_calls" if calls else "stop")
        prompt = approx_tokens(body["messages"])
        completion = max(1, len(text) // 4) + 10 * len(calls)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        usage.update(step.get("usage", {}))
        cid = rand_id("chatcmpl-", 29)
        created = int(time.time())
        hdrs = {"x-request-id": rand_id("req_", 32), "openai-processing-ms": "1"}
        if not stream:
            self.think(step, step.get("chunks", st.chunks))
            message = {"role": "assistant", "content": text if text or not calls else None, "refusal": None,
                       "annotations": []}
            if calls:
                message["tool_calls"] = calls
            return self.send_json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake"}, hdrs, step)
        self.start_stream(hdrs)

        def chunk(delta, fin=None):
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": "fp_fake",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}]}
            if include_usage:
                obj["usage"] = None
            self.chunk("data: %s\n\n" % compact(obj))

        nchunks = step.get("chunks", st.chunks)
        if calls and not text:
            first = dict(calls[0], index=0, function={"name": calls[0]["function"]["name"], "arguments": ""})
            chunk({"role": "assistant", "content": None, "tool_calls": [first], "refusal": None})
        else:
            chunk({"role": "assistant", "content": "", "refusal": None})
            for k, part in enumerate(split_text(text, nchunks)):
                if k:
                    self.pace(step)
                chunk({"content": part})
                if step.get("error_midstream"):
                    otype = OPENAI_ERRORS.get(step["error_midstream"], ("server_error",))[0]
                    self.chunk("data: %s\n\n" % compact({"error": {
                        "message": "The server had an error while processing your request. Sorry about that!",
                        "type": otype, "param": None, "code": None}}))
                    return self.end_stream()
        for i, c in enumerate(calls):
            if i or text:
                head = dict(c, index=i, function={"name": c["function"]["name"], "arguments": ""})
                chunk({"tool_calls": [head]})
            for part in split_text(c["function"]["arguments"], 3):
                chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
        chunk({}, finish)
        if include_usage:
            self.chunk("data: %s\n\n" % compact({"id": cid, "object": "chat.completion.chunk", "created": created,
                                                  "model": model, "system_fingerprint": "fp_fake", "choices": [],
                                                  "usage": usage}))
        self.chunk("data: [DONE]\n\n")
        self.hold_open(step)
        self.end_stream(step)

    def openai_instant(self, raw):
        if not instant_stream(raw):
            return self.send_json(200, INSTANT_OPENAI_JSON, {"x-request-id": "req_instant"})
        self.start_stream({"x-request-id": "req_instant"})
        self.chunk(INSTANT_OPENAI_SSE)
        self.end_stream()


def instant_stream(raw):
    return b'"stream":true' in raw or b'"stream": true' in raw


def build_instant():
    """Precomputed answers for --instant."""
    global INSTANT_ANTHROPIC_JSON, INSTANT_ANTHROPIC_SSE, INSTANT_OPENAI_JSON, INSTANT_OPENAI_SSE
    usage = {"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
             "output_tokens": 4}
    INSTANT_ANTHROPIC_JSON = {"id": "msg_instant", "type": "message", "role": "assistant", "model": "fake",
                              "content": [{"type": "text", "text": DEFAULT_TEXT}], "stop_reason": "end_turn",
                              "stop_sequence": None, "usage": usage}
    evs = [("message_start", {"type": "message_start", "message": {
        "id": "msg_instant", "type": "message", "role": "assistant", "model": "fake", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": dict(usage, output_tokens=1)}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": DEFAULT_TEXT}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 4}}),
        ("message_stop", {"type": "message_stop"})]
    INSTANT_ANTHROPIC_SSE = "".join("event: %s\ndata: %s\n\n" % (n, compact(o)) for n, o in evs).encode()
    ousage = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
              "prompt_tokens_details": {"cached_tokens": 0}}
    INSTANT_OPENAI_JSON = {"id": "chatcmpl-instant", "object": "chat.completion", "created": int(time.time()),
                           "model": "fake", "choices": [{"index": 0, "message": {
                               "role": "assistant", "content": DEFAULT_TEXT, "refusal": None},
                               "logprobs": None, "finish_reason": "stop"}], "usage": ousage}
    base = {"id": "chatcmpl-instant", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "fake"}
    chunks = [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": DEFAULT_TEXT},
                                   "logprobs": None, "finish_reason": None}]),
              dict(base, choices=[{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]),
              dict(base, choices=[], usage=ousage)]
    INSTANT_OPENAI_SSE = ("".join("data: %s\n\n" % compact(c) for c in chunks) + "data: [DONE]\n\n").encode()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main():
    global STATE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--key", default="test-key")
    ap.add_argument("--no-auth", action="store_true")
    ap.add_argument("--instant", action="store_true")
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("--chunk-delay-ms", type=int, default=0)
    args = ap.parse_args()
    STATE = State(args)
    build_instant()
    srv = Server(("127.0.0.1", args.port), Handler)
    print("READY %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
