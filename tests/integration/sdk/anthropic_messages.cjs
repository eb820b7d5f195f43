// Drives nexo with the official Anthropic SDK (1.x sends Authorization: Bearer, 0.x sends x-api-key).
// Usage: node anthropic_messages.cjs MODULE BASE_URL API_KEY MODEL MODE [TEXT [SYSTEM]]
//   MODE: chat | stream | count (messages.countTokens)
const [mod, baseURL, apiKey, model, mode, text, system] = process.argv.slice(2);
const Anthropic = require(mod);
(async () => {
  const c = new Anthropic({ apiKey, baseURL, maxRetries: 0, timeout: 30000 });
  const req = { model, max_tokens: 256, messages: [{ role: 'user', content: text || 'hi' }] };
  try {
    if (mode === 'count') {
      const r = await c.messages.countTokens({ model, messages: req.messages, ...(system ? { system } : {}) });
      console.log(JSON.stringify(r));
    } else if (mode === 'stream') {
      const s = await c.messages.create({ ...req, stream: true });
      let out = '', types = [], usage = null;
      for await (const ev of s) {
        types.push(ev.type);
        if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') out += ev.delta.text;
        if (ev.type === 'message_delta') usage = ev.usage;
      }
      console.log(JSON.stringify({ text: out, types, usage }));
    } else {
      const r = await c.messages.create(req);
      console.log(JSON.stringify({ text: r.content[0].text, stop_reason: r.stop_reason, usage: r.usage,
                                   type: r.type, role: r.role, id: r.id }));
    }
  } catch (e) {
    console.log(JSON.stringify({ error: { status: e.status, name: e.constructor.name, message: e.message,
                                          type: e.error && e.error.error && e.error.error.type } }));
  }
})();
