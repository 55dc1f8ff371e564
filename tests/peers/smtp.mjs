// A real SMTP server for the twokey tests (the npm package `smtp-server`), with a small HTTP
// control API. Prints one line to stdout: `{"smtp": PORT, "http": PORT}`.
//
//   GET  /messages          every message received so far: [{from, to, raw, subject, text, html, headers}]
//   POST /mode?state=down   refuse every connection with 421 (a mail outage); state=up to recover
//   POST /reset             forget the messages
//
// No TLS and no auth (a plain local relay); the tests only bind 127.0.0.1.
import { SMTPServer } from 'smtp-server';
import { simpleParser } from 'mailparser';
import http from 'node:http';

const messages = [];
let down = false;

const smtp = new SMTPServer({
  authOptional: true,
  disabledCommands: ['STARTTLS', 'AUTH'],
  logger: false,
  onConnect(session, cb) {
    if (down) {
      const err = new Error('Service not available (test outage)');
      err.responseCode = 421;
      return cb(err);
    }
    cb();
  },
  onData(stream, session, cb) {
    const chunks = [];
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', async () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const parsed = await simpleParser(raw);
      const headers = {};
      for (const [k, v] of parsed.headers) headers[k] = typeof v === 'string' ? v : JSON.stringify(v);
      messages.push({
        from: session.envelope.mailFrom && session.envelope.mailFrom.address,
        to: session.envelope.rcptTo.map((r) => r.address),
        raw,
        subject: parsed.subject || '',
        text: parsed.text || '',
        html: parsed.html || '',
        headers,
        messageId: parsed.messageId || '',
      });
      cb();
    });
  },
});

const control = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (req.method === 'GET' && url.pathname === '/messages') {
    res.setHeader('content-type', 'application/json');
    return res.end(JSON.stringify(messages));
  }
  if (req.method === 'POST' && url.pathname === '/mode') {
    down = url.searchParams.get('state') === 'down';
    return res.end('ok');
  }
  if (req.method === 'POST' && url.pathname === '/reset') {
    messages.length = 0;
    return res.end('ok');
  }
  res.statusCode = 404;
  res.end('not found');
});

smtp.listen(0, '127.0.0.1', () => {
  control.listen(0, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ smtp: smtp.server.address().port, http: control.address().port }) + '\n');
  });
});

// Exit with the test process: stdin closes when the parent goes away.
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
