// Drives nexo with the official OpenAI SDK. Usage: node openai_chat.cjs BASE_URL API_KEY MODEL MODE [TEXT]
// MODE: chat | stream | models. Prints one JSON line: the result, or {error:{status,name,...}}.
const OpenAI = require('openai');
const [baseURL, apiKey, model, mode, text] = process.argv.slice(2);
(async () => {
  const c = new OpenAI({ apiKey, baseURL, maxRetries: 0, timeout: 30000 });
  const messages = [{ role: 'user', content: text || 'hi' }];
  try {
    if (mode === 'models') {
      const l = await c.models.list();
      console.log(JSON.stringify({ ids: l.data.map((m) => m.id), object: l.object }));
    } else if (mode === 'stream') {
      const s = await c.chat.completions.create({ model, stream: true, messages,
                                                  stream_options: { include_usage: true } });
      let out = '', chunks = 0, finish = null, usage = null, nullUsage = 0;
      for await (const ch of s) {
        chunks++;
        if (ch.usage) usage = ch.usage;
        if (ch.usage === null) nullUsage++; // include_usage: every other chunk says usage: null
        const choice = ch.choices[0];
        if (choice) { out += choice.delta?.content || ''; finish = choice.finish_reason || finish; }
      }
      console.log(JSON.stringify({ text: out, chunks, finish, usage, nullUsage }));
    } else {
      const r = await c.chat.completions.create({ model, messages, user: process.env.NEXO_USER });
      console.log(JSON.stringify({ text: r.choices[0].message.content, finish: r.choices[0].finish_reason,
                                   usage: r.usage, object: r.object, id: r.id, model: r.model }));
    }
  } catch (e) {
    console.log(JSON.stringify({ error: { status: e.status, name: e.constructor.name, message: e.message,
                                          code: e.code, type: e.type } }));
  }
})();
