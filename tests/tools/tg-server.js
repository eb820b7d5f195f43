// The Telegram Bot API emulator (telegram-test-api, pinned in tests/npm) for integration tests.
// usage: NODE_PATH=<peers>/node_modules node tg-server.js [port]   (0 or none = a free port)
// Binds 127.0.0.1 and prints "READY <url>" once listening; SIGTERM/SIGINT stop it.
'use strict';
const TelegramServer = require('telegram-test-api');

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
    await server.start();
    process.stdout.write(`READY ${server.config.apiURL}\n`);
    const stop = () => server.stop().then(() => process.exit(0), () => process.exit(1));
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}

main().catch((e) => {
    process.stderr.write(`tg-server: ${e && e.stack ? e.stack : e}\n`);
    process.exit(1);
});
