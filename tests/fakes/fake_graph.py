#!/usr/bin/python3
"""A protocol-faithful fake of the WhatsApp Business Cloud API (Graph API) for tests; stdlib only.

Formats follow Meta's documentation:
  - sending:   https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages
               https://developers.facebook.com/docs/whatsapp/cloud-api/messages/text-messages
               https://developers.facebook.com/docs/whatsapp/cloud-api/messages/interactive-reply-buttons-messages
               https://developers.facebook.com/docs/whatsapp/cloud-api/messages/interactive-list-messages
               https://developers.facebook.com/docs/whatsapp/cloud-api/guides/send-message-templates
  - errors:    https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes
               https://developers.facebook.com/docs/graph-api/guides/error-handling
  - media:     https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media
                 (Retrieve Media URL: GET /{version}/{media-id} with the Bearer token answers
                  {"messaging_product": "whatsapp", "url", "mime_type", "sha256", "file_size", "id"};
                  Download Media: GET <url> with the same Bearer header answers the bytes with the
                  file's Content-Type; the URL expires after 5 minutes; 404 for an unknown id)
  - webhooks:  https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/payload-examples
               https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/components
               https://developers.facebook.com/docs/graph-api/webhooks/getting-started
                 (X-Hub-Signature-256: sha256=HMAC-SHA256(app secret, raw body); GET hub.mode,
                  hub.verify_token, hub.challenge)

Usage: fake_graph.py [--token TOKEN] [--port 0]   prints "READY <port>" when listening.
  POST /{version}/{phone_number_id}/messages   the Cloud API send endpoint (Bearer TOKEN)
  GET  /_requests     every send request received: [{path, auth_ok, body, status, wamid}]
  POST /_media        JSON {"id", "mime_type", "data_b64", "sha256"? (a wrong one to test the check)}:
                      media the media endpoints serve
  GET  /{version}/{media-id}, GET /_lookaside/{media-id}?token=..   Retrieve / Download Media
  GET  /_media_requests   the media requests received: [{path, auth_ok, status}]
  POST /_reset        forget requests and scripted failures
  POST /_fail         JSON list of failures consumed one per send, e.g.
                        {"status": 429, "code": 130429, "message": "Rate limit hit"}
                        {"status": 400, "code": 131047, "message": "Re-engagement message"}
  POST /_webhook      sign and POST a webhook to nexo; JSON:
                        {"url", "app_secret", "phone_number_id",
                         "messages": [{"kind": "text"|"button_reply"|"list_reply"|"button"|
                                       "image"|"document"|"audio", "from", "id"?, "text"?,
                                       "reply_id"?, "media_id"?, "name"?}],
                         "statuses": [{"id", "status", "recipient_id", "error_code"?}],
                         "bad_signature": false, "signature": null (send this header instead),
                         "raw": null (send this body as is)}
                      answers {"status": nexo's HTTP status, "body": its body, "payload": what
                      was sent, "ids": the message wamids}
"""
import argparse
import base64
import hashlib
import hmac
import http.server
import json
import random
import re
import string
import threading
import time
import urllib.error
import urllib.request

MEDIA = ("image", "document", "audio", "video", "sticker")
TYPES = ("text", "template", "interactive") + MEDIA + ("location", "contacts", "reaction")


def rand_id(n=22):
    return "".join(random.choice(string.ascii_letters + string.digits) for _ in range(n))


def wamid():
    return "wamid.HBgL" + rand_id(40)


def graph_error(code, message, etype="OAuthException", subcode=None, details=None):
    e = {"message": message, "type": etype, "code": code, "fbtrace_id": "A" + rand_id(22)}
    if subcode is not None:
        e["error_subcode"] = subcode
    if details is not None:
        e["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": e}


def param_error(details):
    return graph_error(100, "(#100) Invalid parameter", details=details)


def chars(s):
    return len(s) if isinstance(s, str) else -1


def check_keys(obj, allowed, where):
    if not isinstance(obj, dict):
        return "%s must be an object" % where
    for k in obj:
        if k not in allowed:
            return "Unexpected key \"%s\" on param \"%s\"." % (k, where)
    return None


def validate(body):
    """None when the body is a valid send request, else the error 'details'."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    err = check_keys(body, ("messaging_product", "recipient_type", "to", "type", "context", "biz_opaque_callback_data")
                     + TYPES, "message")
    if err:
        return err
    if body.get("messaging_product") != "whatsapp":
        return "The parameter messaging_product is required."
    if body.get("recipient_type", "individual") not in ("individual", "group"):
        return "Param recipient_type must be one of {INDIVIDUAL, GROUP}"
    to = body.get("to")
    if not isinstance(to, str) or not re.fullmatch(r"\+?\d{5,20}", to):
        return "Param to must be a phone number"
    t = body.get("type", "text")
    if t not in TYPES:
        return "Param type must be one of " + ", ".join(TYPES)
    obj = body.get(t)
    if obj is None:
        return "Param %s is required for type %s" % (t, t)
    for other in TYPES:
        if other != t and other in body:
            return "Param %s is not allowed for type %s" % (other, t)
    ctx = body.get("context")
    if ctx is not None and (check_keys(ctx, ("message_id",), "context") or not isinstance(ctx.get("message_id"), str)):
        return "Param context.message_id must be a string"
    if t == "text":
        err = check_keys(obj, ("body", "preview_url"), "text")
        if err:
            return err
        if not 1 <= chars(obj.get("body")) <= 4096:
            return "Param text['body'] must be at most 4096 characters long"
        if "preview_url" in obj and not isinstance(obj["preview_url"], bool):
            return "Param text['preview_url'] must be a boolean"
    elif t == "template":
        err = check_keys(obj, ("name", "language", "components"), "template")
        if err:
            return err
        if not isinstance(obj.get("name"), str) or not obj["name"]:
            return "Param template['name'] is required"
        lang = obj.get("language")
        if check_keys(lang, ("code", "policy"), "template['language']") or not isinstance(lang.get("code"), str):
            return "Param template['language']['code'] is required"
        comps = obj.get("components", [])
        if not isinstance(comps, list) or any(not isinstance(c, dict) or "type" not in c for c in comps):
            return "Param template['components'] must be a list of components with a type"
    elif t == "interactive":
        err = check_keys(obj, ("type", "header", "body", "footer", "action"), "interactive")
        if err:
            return err
        itype = obj.get("type")
        b = obj.get("body")
        if check_keys(b, ("text",), "interactive['body']") or not 1 <= chars(b.get("text")) <= 1024:
            return "Param interactive['body']['text'] must be 1 to 1024 characters"
        action = obj.get("action")
        if not isinstance(action, dict):
            return "Param interactive['action'] is required"
        if itype == "button":
            err = check_keys(action, ("buttons",), "interactive['action']")
            if err:
                return err
            buttons = action.get("buttons")
            if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
                return "Param interactive['action']['buttons'] must have 1 to 3 buttons"
            ids = set()
            for i, btn in enumerate(buttons):
                if check_keys(btn, ("type", "reply"), "buttons[%d]" % i) or btn.get("type") != "reply":
                    return "Param interactive['action']['buttons'][%d]['type'] must be reply" % i
                r = btn.get("reply")
                if check_keys(r, ("id", "title"), "reply") or not 1 <= chars(r.get("id")) <= 256:
                    return "Param interactive['action']['buttons'][%d]['reply']['id'] is invalid" % i
                if not 1 <= chars(r.get("title")) <= 20:
                    return "Param interactive['action']['buttons'][%d]['reply']['title'] must be at most 20 characters" % i
                if r["id"] in ids:
                    return "Button IDs must be unique"
                ids.add(r["id"])
        elif itype == "list":
            err = check_keys(action, ("button", "sections"), "interactive['action']")
            if err:
                return err
            if not 1 <= chars(action.get("button")) <= 20:
                return "Param interactive['action']['button'] must be 1 to 20 characters"
            secs = action.get("sections")
            if not isinstance(secs, list) or not 1 <= len(secs) <= 10:
                return "Param interactive['action']['sections'] must have 1 to 10 sections"
            rows = 0
            for s in secs:
                if check_keys(s, ("title", "rows"), "section") or not isinstance(s.get("rows"), list):
                    return "Param sections[]['rows'] is required"
                if len(secs) > 1 and not 1 <= chars(s.get("title")) <= 24:
                    return "Param sections[]['title'] is required with several sections"
                for r in s["rows"]:
                    rows += 1
                    if check_keys(r, ("id", "title", "description"), "row") or not 1 <= chars(r.get("id")) <= 200:
                        return "Param rows[]['id'] is invalid"
                    if not 1 <= chars(r.get("title")) <= 24:
                        return "Param rows[]['title'] must be at most 24 characters"
                    if "description" in r and not 1 <= chars(r["description"]) <= 72:
                        return "Param rows[]['description'] must be at most 72 characters"
            if not 1 <= rows <= 10:
                return "Total row count exceed max allowed count: 10"
        else:
            return "Param interactive['type'] must be one of {BUTTON, LIST, PRODUCT, PRODUCT_LIST, CTA_URL, FLOW}"
    elif t in MEDIA:
        err = check_keys(obj, ("id", "link", "caption", "filename"), t)
        if err:
            return err
        if ("id" in obj) == ("link" in obj):
            return "Param %s must have exactly one of id and link" % t
        if "caption" in obj and (t in ("audio", "sticker") or not 1 <= chars(obj["caption"]) <= 1024):
            return "Param %s['caption'] is not allowed or too long" % t
    return None


class State:
    def __init__(self, token):
        self.token = token
        self.lock = threading.Lock()
        self.requests = []
        self.failures = []
        self.media = {}           # id -> {"mime_type", "data", "sha256", "issued"}
        self.media_requests = []


def webhook_payload(pnid, messages, statuses):
    """Meta's documented notification shape for the messages field."""
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": pnid}}
    ids = []
    if messages:
        value["contacts"] = []
        value["messages"] = []
        for m in messages:
            frm = m.get("from", "15551234567")
            mid = m.get("id") or wamid()
            ids.append(mid)
            if not any(c["wa_id"] == frm for c in value["contacts"]):
                value["contacts"].append({"profile": {"name": m.get("name", "Test User")}, "wa_id": frm})
            out = {"from": frm, "id": mid, "timestamp": str(m.get("timestamp", int(time.time())))}
            kind = m.get("kind", "text")
            if m.get("context_id"):
                out["context"] = {"from": "15550001111", "id": m["context_id"]}
            if kind == "text":
                out.update(type="text", text={"body": m.get("text", "hello")})
            elif kind == "button_reply":
                out.update(type="interactive", interactive={
                    "type": "button_reply", "button_reply": {"id": m.get("reply_id", "b1"), "title": m.get("text", "Yes")}})
            elif kind == "list_reply":
                out.update(type="interactive", interactive={
                    "type": "list_reply", "list_reply": {"id": m.get("reply_id", "r1"), "title": m.get("text", "Row"),
                                                         "description": "row description"}})
            elif kind == "button":
                out.update(type="button", button={"payload": m.get("reply_id", "PAYLOAD"), "text": m.get("text", "Yes")})
            elif kind in MEDIA:
                media = {"mime_type": m.get("mime_type", {"image": "image/jpeg", "document": "application/pdf",
                                                           "audio": "audio/ogg; codecs=opus"}.get(kind, "application/octet-stream")),
                         "sha256": hashlib.sha256(kind.encode()).hexdigest(), "id": m.get("media_id", "1234567890")}
                if kind in ("image", "document", "video") and m.get("text"):
                    media["caption"] = m["text"]
                if kind == "document":
                    media["filename"] = m.get("filename", "file.pdf")
                if kind == "audio":
                    media["voice"] = True
                out.update(type=kind)
                out[kind] = media
            else:
                out.update(type=kind)
                out[kind] = m.get("body", {})
            value["messages"].append(out)
    if statuses:
        value["statuses"] = []
        for s in statuses:
            st = {"id": s["id"], "status": s.get("status", "delivered"), "timestamp": str(int(time.time())),
                  "recipient_id": s.get("recipient_id", "15551234567")}
            if st["status"] in ("sent", "delivered"):
                st["conversation"] = {"id": rand_id(32), "origin": {"type": "service"}}
                st["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "service"}
            if s.get("error_code"):
                st["errors"] = [{"code": s["error_code"], "title": s.get("error_title", "Message undeliverable"),
                                 "message": s.get("error_title", "Message undeliverable"),
                                 "error_data": {"details": s.get("details", "Message Undeliverable.")}}]
            value["statuses"].append(st)
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}]}, ids


def make_handler(state):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def read_body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def send_json(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/_requests":
                with state.lock:
                    self.send_json(200, state.requests)
                return
            if self.path == "/_media_requests":
                with state.lock:
                    self.send_json(200, state.media_requests)
                return
            m = re.fullmatch(r"/(v\d+\.\d+)/([A-Za-z0-9_-]+)", self.path)
            if m:
                return self.media_url(m.group(2))
            m = re.fullmatch(r"/_lookaside/([A-Za-z0-9_-]+)\?mid=([A-Za-z0-9_-]+)&ext=(\d+)", self.path)
            if m:
                return self.media_download(m.group(1), int(m.group(3)))
            self.send_json(400, graph_error(100, "Unsupported get request.", "GraphMethodException", 33))

        def media_auth(self):
            ok = self.headers.get("Authorization", "") == "Bearer " + state.token
            return ok

        def media_url(self, media_id):
            ok = self.media_auth()
            with state.lock:
                med = state.media.get(media_id)
            if not ok:
                status, body = 401, graph_error(190, "Invalid OAuth access token - Cannot parse access token")
            elif med is None:
                status, body = 400, graph_error(
                    100, "Unsupported get request. Object with ID '%s' does not exist, cannot be loaded due to "
                    "missing permissions, or does not support this operation." % media_id, "GraphMethodException", 33)
            else:
                host = self.headers.get("Host", "127.0.0.1")
                status, body = 200, {
                    "messaging_product": "whatsapp",
                    "url": "http://%s/_lookaside/%s?mid=%s&ext=%d" % (host, media_id, media_id, int(time.time())),
                    "mime_type": med["mime_type"], "sha256": med["sha256"],
                    "file_size": str(len(med["data"])), "id": media_id}
            with state.lock:
                state.media_requests.append({"path": self.path, "auth_ok": ok, "status": status})
            self.send_json(status, body)

        def media_download(self, media_id, issued):
            ok = self.media_auth()
            with state.lock:
                med = state.media.get(media_id)
                state.media_requests.append({"path": self.path.split("?")[0], "auth_ok": ok,
                                             "status": 200 if ok and med else 404})
            if not ok or med is None or time.time() - issued > 300:  # the URL lives 5 minutes
                return self.send_json(404 if ok else 401, graph_error(190 if not ok else 100, "Media not found"))
            self.send_response(200)
            self.send_header("Content-Type", med["mime_type"])
            self.send_header("Content-Length", str(len(med["data"])))
            self.end_headers()
            self.wfile.write(med["data"])

        def do_POST(self):
            raw = self.read_body()
            if self.path == "/_reset":
                with state.lock:
                    state.requests.clear()
                    state.failures.clear()
                    state.media_requests.clear()
                return self.send_json(200, {})
            if self.path == "/_fail":
                with state.lock:
                    state.failures.extend(json.loads(raw))
                return self.send_json(200, {})
            if self.path == "/_webhook":
                return self.send_json(200, self.post_webhook(json.loads(raw)))
            if self.path == "/_media":
                req = json.loads(raw)
                data = base64.b64decode(req["data_b64"])
                with state.lock:
                    state.media[req["id"]] = {"mime_type": req.get("mime_type", "image/jpeg"), "data": data,
                                              "sha256": req.get("sha256") or hashlib.sha256(data).hexdigest()}
                return self.send_json(200, {})
            m = re.fullmatch(r"/(v\d+\.\d+)/(\d+)/messages", self.path)
            if not m:
                return self.send_json(400, graph_error(100, "Unsupported post request.", "GraphMethodException", 33))
            auth = self.headers.get("Authorization", "")
            rec = {"path": self.path, "version": m.group(1), "phone_number_id": m.group(2),
                   "auth_ok": auth == "Bearer " + state.token, "content_type": self.headers.get("Content-Type")}
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            rec["body"] = body
            status, answer = self.answer(rec, body, raw)
            rec["status"] = status
            with state.lock:
                state.requests.append(rec)
            self.send_json(status, answer)

        def answer(self, rec, body, raw):
            if not rec["auth_ok"]:
                return 401, graph_error(190, "Invalid OAuth access token - Cannot parse access token")
            if not (rec["content_type"] or "").startswith("application/json"):
                return 400, param_error("Content-Type must be application/json")
            if body is None:
                return 400, graph_error(100, "(#100) The parameter messaging_product is required.",
                                        details="Request body is not JSON: " + raw[:40].decode(errors="replace"))
            details = validate(body)
            if details:
                return 400, param_error(details)
            with state.lock:
                fail = state.failures.pop(0) if state.failures else None
            if fail:
                return fail.get("status", 400), graph_error(fail.get("code", 131000), fail.get("message", "Something went wrong"),
                                                            subcode=fail.get("subcode"), details=fail.get("details"))
            mid = wamid()
            rec["wamid"] = mid
            msg = {"id": mid}
            if body.get("type") == "template":
                msg["message_status"] = "accepted"
            to = body["to"].lstrip("+")
            return 200, {"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": to}],
                         "messages": [msg]}

        def post_webhook(self, req):
            if req.get("raw") is not None:
                payload, ids = req["raw"], []
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            else:
                payload, ids = webhook_payload(req.get("phone_number_id", "106540352242922"),
                                               req.get("messages"), req.get("statuses"))
                data = json.dumps(payload).encode()
            sig = "sha256=" + hmac.new(req["app_secret"].encode(), data, hashlib.sha256).hexdigest()
            if req.get("bad_signature"):
                sig = "sha256=" + hmac.new(b"not-the-secret", data, hashlib.sha256).hexdigest()
            headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
            if req.get("signature") is not None:
                sig = req["signature"]
            if sig:
                headers["X-Hub-Signature-256"] = sig
            r = urllib.request.Request(req["url"], data=data, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(r, timeout=10) as resp:
                    status, body = resp.status, resp.read()
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read()
            return {"status": status, "body": body.decode(errors="replace"), "payload": payload, "ids": ids}

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--token", default="EAAG-fake-access-token")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    state = State(args.token)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(state))
    srv.daemon_threads = True
    print("READY %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
