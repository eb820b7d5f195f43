// The Telegram Bot API emulator (telegram-test-api, pinned in tests/npm) for integration tests.
// usage: NODE_PATH=<peers>/node_modules node tg-server.js [port]   (0 or none = a free port)
// Binds 127.0.0.1 and prints "READY <url>" once listening; SIGTERM/SIGINT stop it.
//
// In front of the emulator, what it lacks and the tests need (the emulator's own routes are
// untouched):
//   - every Bot API call is recorded: GET /_calls?token=T[&method=M] -> [{method, body, t}]
//     (multipart bodies as their fields, a file part as {filename, size, type})
//   - parse_mode "HTML" is checked as Telegram does (known tags, balanced, known entities):
//     400 "Bad Request: can't parse entities: ..." otherwise
//   - sendPhoto, sendDocument (JSON with a URL, or multipart upload), sendChatAction
//   - files users send: POST /_file {file_id, size, [file_path], [data_b64]} registers one (size
//     bytes of 'x', or the given bytes); getFile and GET /file/bot<token>/<file_path> serve it
//   - POST /_control {token, hang_polls: n} holds the next n getUpdates open without an answer;
//     {token, reject_html: n} answers the next n HTML sends with "can't parse entities";
//     {hold_files: n} holds the next n file downloads (GET /file/...) open, {release_files: true}
//     serves the held ones; every answer carries files_held (downloads being held now);
//     {token, hold_text: s} holds the next sendMessage whose text contains s open without an
//     answer (until the client gives up); every answer carries sends_held
'use strict';
const express = require('express');
const TelegramServer = require('telegram-test-api');

const calls = []; // {token, method, body, t}
const files = new Map(); // file_id -> {file_path, size}
const control = new Map(); // token -> {hang_polls, reject_html}
const hung = new Set(); // responses held open
const fileHold = { left: 0, held: [] }; // downloads to hold; the held ones' release functions
let sendsHeld = 0;

function ctl(token) {
    if (!control.has(token))
        control.set(token, { hang_polls: 0, reject_html: 0, hold_text: null });
    return control.get(token);
}

// multipart/form-data -> {fields, files}
function parseMultipart(buf, ctype) {
    const m = /boundary=(?:"([^"]+)"|([^;]+))/i.exec(ctype || '');
    const out = { fields: {}, files: {} };
    if (!m || !Buffer.isBuffer(buf))
        return out;
    const delim = Buffer.from('--' + (m[1] || m[2]));
    let pos = buf.indexOf(delim);
    while (pos >= 0) {
        const start = pos + delim.length;
        if (buf.slice(start, start + 2).toString() === '--')
            break;
        const next = buf.indexOf(delim, start);
        if (next < 0)
            break;
        const part = buf.slice(start + 2, next - 2); // after CRLF, before CRLF
        const sep = part.indexOf('\r\n\r\n');
        const head = part.slice(0, sep).toString();
        const body = part.slice(sep + 4);
        const name = (/name="([^"]*)"/.exec(head) || [])[1];
        const filename = (/filename="([^"]*)"/.exec(head) || [])[1];
        const type = (/content-type:\s*([^\r\n]+)/i.exec(head) || [])[1];
        if (name !== undefined) {
            if (filename !== undefined)
                out.files[name] = { filename, size: body.length, type };
            else
                out.fields[name] = body.toString();
        }
        pos = next;
    }
    return out;
}

// Telegram's HTML parse mode: null when fine, else the reason.
const TAGS = new Set(['b', 'strong', 'i', 'em', 'u', 'ins', 's', 'strike', 'del', 'code', 'pre', 'a',
    'blockquote', 'tg-spoiler', 'span', 'tg-emoji']);
function htmlProblem(text) {
    const stack = [];
    const re = /<(\/?)([a-zA-Z-]*)([^<>]*)>|<|&(#?[a-zA-Z0-9]+);|&/g;
    let m;
    while ((m = re.exec(text))) {
        if (m[0] === '<')
            return 'unsupported start tag at byte offset ' + m.index;
        if (m[0] === '&')
            return 'character entity expected at byte offset ' + m.index;
        if (m[4] !== undefined) {
            if (!/^(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+)$/.test(m[4]))
                return 'unsupported HTML entity at byte offset ' + m.index;
            continue;
        }
        const name = m[2].toLowerCase();
        if (!TAGS.has(name))
            return `unsupported start tag "${name}" at byte offset ${m.index}`;
        if (m[1]) {
            const open = stack.pop();
            if (open !== name)
                return `unmatched end tag at byte offset ${m.index}, expected "</${open}>"`;
        } else {
            stack.push(name);
        }
    }
    return stack.length ? `can't find end tag corresponding to start tag "${stack[stack.length - 1]}"` : null;
}

function fail(res, code, description) {
    res.status(code).json({ ok: false, error_code: code, description });
}

async function main() {
    let port = Number(process.argv[2] || process.env.TG_PORT || 0);
    if (!port) {
        // The emulator needs a number up front: ask the kernel for a free one.
        const net = require('net');
        port = await new Promise((resolve, reject) => {
            const s = net.createServer();
            s.once('error', reject);
            s.listen(0, '127.0.0.1', () => {
                const p = s.address().port;
                s.close(() => resolve(p));
            });
        });
    }
    const server = new TelegramServer({ port, host: '127.0.0.1', storeTimeout: 600 });
    const inner = server.webServer;
    const app = express();
    app.use(express.json({ limit: '64mb' }));
    app.use(express.urlencoded({ extended: true, limit: '64mb' }));
    app.use(express.raw({ type: 'multipart/form-data', limit: '64mb' }));
    app.use((req, res, next) => {
        if (Buffer.isBuffer(req.body)) {
            const mp = parseMultipart(req.body, req.headers['content-type']);
            req.body = mp.fields;
            req.files = mp.files;
        }
        const m = /^\/bot([^/]+)\/([A-Za-z]+)$/.exec(req.path);
        if (m) {
            const body = Object.assign({}, req.query, req.body || {});
            for (const [k, f] of Object.entries(req.files || {}))
                body[k] = f;
            calls.push({ token: m[1], method: m[2], body, t: Date.now() });
        }
        next();
    });

    app.get('/_calls', (req, res) => {
        res.json(calls.filter((c) => (!req.query.token || c.token === req.query.token)
            && (!req.query.method || c.method === req.query.method)));
    });
    app.post('/_file', (req, res) => {
        const { file_id: id, size } = req.body;
        const data = req.body.data_b64 ? Buffer.from(req.body.data_b64, 'base64') : null;
        files.set(id, { file_path: req.body.file_path || `photos/${id}.jpg`,
            size: data ? data.length : Number(size), data });
        res.json({ ok: true });
    });
    app.post('/_control', (req, res) => {
        const c = ctl(req.body.token);
        for (const k of ['hang_polls', 'reject_html'])
            if (req.body[k] !== undefined)
                c[k] = Number(req.body[k]);
        if (req.body.hold_text !== undefined)
            c.hold_text = req.body.hold_text;
        if (req.body.hold_files !== undefined)
            fileHold.left = Number(req.body.hold_files);
        if (req.body.release_files)
            fileHold.held.splice(0).forEach((release) => release());
        res.json({ ok: true, control: c, files_held: fileHold.held.length, sends_held: sendsHeld });
    });

    app.all('/bot:token/getUpdates', (req, res, next) => {
        const c = ctl(req.params.token);
        if (c.hang_polls > 0) { // accepted, never answered (until the client gives up)
            c.hang_polls--;
            hung.add(res);
            res.on('close', () => hung.delete(res));
            return;
        }
        next();
    });
    app.all('/bot:token/sendMessage', (req, res, next) => {
        const b = req.body || {};
        const c = ctl(req.params.token);
        if (c.hold_text && String(b.text || '').includes(c.hold_text)) { // never answered
            c.hold_text = null;
            sendsHeld++;
            hung.add(res);
            res.on('close', () => {
                hung.delete(res);
                sendsHeld--;
            });
            return;
        }
        if (b.parse_mode === 'HTML') {
            if (c.reject_html > 0) {
                c.reject_html--;
                return fail(res, 400, "Bad Request: can't parse entities: rejected by the test");
            }
            const why = htmlProblem(String(b.text || ''));
            if (why)
                return fail(res, 400, "Bad Request: can't parse entities: " + why);
        }
        next();
    });
    app.all('/bot:token/sendChatAction', (req, res) => res.json({ ok: true, result: true }));
    app.all('/bot:token/:method', (req, res, next) => {
        if (req.params.method !== 'sendPhoto' && req.params.method !== 'sendDocument')
            return next();
        const field = req.params.method === 'sendPhoto' ? 'photo' : 'document';
        const b = Object.assign({}, req.body || {});
        if (req.files && req.files[field])
            b[field] = req.files[field];
        if (!b.chat_id || !b[field])
            return fail(res, 400, `Bad Request: chat_id and ${field} are required`);
        if (b.parse_mode === 'HTML' && htmlProblem(String(b.caption || '')))
            return fail(res, 400, "Bad Request: can't parse entities in the caption");
        const msg = server.addBotMessage(Object.assign({}, b, { text: b.caption || '' }), req.params.token);
        msg[field] = typeof b[field] === 'string' ? b[field] : { file_id: 'up' + msg.message_id,
            size: b[field].size };
        res.json({ ok: true, result: msg });
    });
    app.all('/bot:token/getFile', (req, res) => {
        const id = (req.body || {}).file_id || req.query.file_id;
        const f = files.get(id);
        if (!f)
            return fail(res, 400, 'Bad Request: invalid file_id');
        res.json({ ok: true, result: { file_id: id, file_unique_id: 'u' + id, file_size: f.size,
            file_path: f.file_path } });
    });
    app.get('/file/bot:token/*path', (req, res) => {
        const path = [].concat(req.params.path).join('/');
        const f = [...files.values()].find((x) => x.file_path === path);
        if (!f)
            return res.status(404).json({ ok: false, error_code: 404, description: 'Not Found' });
        const serve = () => res.type('application/octet-stream').send(f.data || Buffer.alloc(f.size, 'x'));
        if (fileHold.left > 0) { // a slow download: served when the test releases it
            fileHold.left--;
            const release = () => {
                res.off('close', forget);
                if (!res.destroyed)
                    serve();
            };
            const forget = () => fileHold.held.splice(fileHold.held.indexOf(release) >>> 0, 1);
            res.on('close', forget);
            fileHold.held.push(release);
            return;
        }
        serve();
    });
    // The bodies are parsed once, here: the emulator's own parsers would find them consumed.
    const router = inner._router; // the emulator brings express 4
    router.stack = router.stack.filter((l) => !/^(jsonParser|urlencodedParser)$/.test(l.name));
    app.use(inner);
    server.webServer = app; // start() serves this one
    await server.start();
    process.stdout.write(`READY ${server.config.apiURL}\n`);
    const stop = () => {
        for (const r of hung)
            r.destroy();
        server.stop().then(() => process.exit(0), () => process.exit(1));
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}

main().catch((e) => {
    process.stderr.write(`tg-server: ${e && e.stack ? e.stack : e}\n`);
    process.exit(1);
});
