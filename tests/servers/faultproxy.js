// faultproxy.js: an HTTP proxy for tests and benchmarks that injects faults and latency between
// a client and a real server (nginx or s3rver) on loopback.
//   node faultproxy.js --target 127.0.0.1:PORT [--port 0] [--seed N]
//        [--fault-rate 0.3] [--faults reset,truncate,slowdown,500,429,stall]
//        [--retry-after S] [--stall-ms MS] [--latency MS] [--rate BYTES_PER_S]
//        [--skip-first N] [--fault-first N]
// Prints "PORT <n>" on stdout once listening, and on SIGUSR2 / at exit a JSON line of counts to
// stderr. Each request is faulted with probability fault-rate (seeded PRNG, one draw per
// request; --fault-first N faults the first N requests, cycling through the kinds); the fault
// is one of the listed kinds:
//   reset     forward the head and part of the body, then reset the connection (RST)
//   truncate  forward the head (full Content-Length) and part of the body, then close (FIN)
//   slowdown  503 SlowDown with Retry-After (S3's throttling answer)
//   500       500 InternalError
//   429       429 Too Many Requests with Retry-After
//   stall     forward the head and part of the body, then send nothing for stall-ms, then close
// --latency delays every request before it is forwarded (there is no netem on this machine);
// --rate caps each client connection's download rate (token bucket), as object stores cap each
// connection. Requests are forwarded with their headers untouched (Host included), so SigV4
// signatures made for the proxy's address verify at s3rver.
'use strict';
const http = require('http');

const args = process.argv.slice(2);
const opt = { target: null, port: 0, seed: 1, faultRate: 0, faults: ['reset', 'truncate',
  'slowdown', '500', '429', 'stall'], retryAfter: 0, stallMs: 3000, latency: 0, rate: 0,
  skipFirst: 0, faultFirst: 0 };
for (let i = 0; i < args.length; i++) {
  const a = args[i], v = args[i + 1];
  if (a === '--target') { opt.target = v; i++; }
  else if (a === '--port') { opt.port = Number(v); i++; }
  else if (a === '--seed') { opt.seed = Number(v); i++; }
  else if (a === '--fault-rate') { opt.faultRate = Number(v); i++; }
  else if (a === '--faults') { opt.faults = v.split(',').filter((x) => x); i++; }
  else if (a === '--retry-after') { opt.retryAfter = Number(v); i++; }
  else if (a === '--stall-ms') { opt.stallMs = Number(v); i++; }
  else if (a === '--latency') { opt.latency = Number(v); i++; }
  else if (a === '--rate') { opt.rate = Number(v); i++; }
  else if (a === '--skip-first') { opt.skipFirst = Number(v); i++; }
  else if (a === '--fault-first') { opt.faultFirst = Number(v); i++; }
  else { console.error('faultproxy.js: unknown argument ' + a); process.exit(2); }
}
if (!opt.target) { console.error('faultproxy.js: --target host:port is required'); process.exit(2); }
const [thost, tport] = opt.target.split(':');

// mulberry32: a small seeded PRNG so a run's fault pattern is reproducible
let st = opt.seed >>> 0;
function rand() {
  st = (st + 0x6d2b79f5) >>> 0;
  let t = st;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

const counts = { requests: 0, faulted: 0 };
for (const f of opt.faults) counts[f] = 0;
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

// per-connection token bucket
function throttle(sock) {
  if (!sock._tb) sock._tb = { tokens: opt.rate * 0.05, last: Date.now() };
  const b = sock._tb, now = Date.now();
  b.tokens = Math.min(opt.rate * 0.05, b.tokens + (now - b.last) / 1000 * opt.rate);
  b.last = now;
  return b;
}

function sendThrottled(req, res, up, sock, onChunk, done) {
  // 'end' can come right after the last 'data' even while we pace that chunk (a paused stream
  // still ends once its buffer is empty), so the end waits for the pacing to finish.
  let pacing = false, ended = false;
  up.on('data', (chunk) => {
    if (!onChunk(chunk)) return;
    if (!opt.rate) { if (!res.write(chunk)) { up.pause(); res.once('drain', () => up.resume()); } return; }
    up.pause();
    pacing = true;
    let off = 0;
    const step = () => {
      if (res.destroyed) return;
      const b = throttle(sock);
      if (b.tokens < 1) { setTimeout(step, Math.max(1, Math.ceil((1 - b.tokens) / opt.rate * 1000))); return; }
      const n = Math.min(chunk.length - off, Math.floor(b.tokens));
      b.tokens -= n;
      res.write(chunk.subarray(off, off + n));
      off += n;
      if (off < chunk.length) { setTimeout(step, Math.max(1, Math.ceil(Math.min(n, 65536) / opt.rate * 1000))); return; }
      pacing = false;
      if (ended) done(); else up.resume();
    };
    step();
  });
  up.on('end', () => { ended = true; if (!pacing) done(); });
  up.on('error', () => res.destroy());
}

function errorBody(code, msg) {
  return '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>' + code + '</Code><Message>' +
    msg + '</Message></Error>';
}

const server = http.createServer((req, res) => {
  req.pause(); // keep the request body (and its 'end') until it is forwarded, after the latency
  req.socket.setNoDelay(true); // paced small writes must not wait for delayed ACKs (Nagle)
  counts.requests++;
  let fault = null;
  const draw = rand(), pick = rand(), frac = rand();
  if (counts.requests <= opt.faultFirst && opt.faults.length) {
    fault = opt.faults[(counts.requests - 1) % opt.faults.length];
    counts.faulted++;
    counts[fault]++;
  } else if (counts.requests > opt.skipFirst && draw < opt.faultRate && opt.faults.length) {
    fault = opt.faults[Math.floor(pick * opt.faults.length)];
    counts.faulted++;
    counts[fault]++;
  }
  const go = () => {
    if (fault === 'slowdown' || fault === '500' || fault === '429') {
      const status = fault === 'slowdown' ? 503 : fault === '429' ? 429 : 500;
      const body = fault === 'slowdown' ? errorBody('SlowDown', 'Please reduce your request rate.')
        : fault === '429' ? errorBody('TooManyRequests', 'Too many requests')
        : errorBody('InternalError', 'We encountered an internal error. Please try again.');
      const h = { 'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(body) };
      if (fault !== '500') h['Retry-After'] = String(opt.retryAfter);
      req.resume();
      res.writeHead(status, h);
      res.end(body);
      return;
    }
    const up = http.request({ host: thost, port: Number(tport), method: req.method, path: req.url,
      headers: req.headers, agent }, (ur) => {
      const headers = Object.assign({}, ur.headers);
      delete headers['connection'];
      delete headers['keep-alive'];
      res.writeHead(ur.statusCode, headers);
      const sock = req.socket;
      const total = Number(ur.headers['content-length'] || 0);
      const cut = fault && total > 0 ? Math.floor(frac * total) : -1;
      let sent = 0;
      sendThrottled(req, res, ur, sock, (chunk) => {
        if (cut < 0) return true;
        if (sent + chunk.length <= cut) { sent += chunk.length; return true; }
        // deliver up to the cut, then misbehave
        const part = chunk.subarray(0, cut - sent);
        sent = cut;
        if (part.length) res.write(part);
        ur.destroy();
        if (fault === 'reset') { setImmediate(() => sock.resetAndDestroy()); }
        else if (fault === 'truncate') { setImmediate(() => sock.end()); }
        else if (fault === 'stall') { setTimeout(() => sock.destroy(), opt.stallMs); }
        return false;
      }, () => { if (cut < 0 || cut >= total) res.end(); });
    });
    up.on('error', () => { if (!res.headersSent) { res.writeHead(502); res.end(); } else res.destroy(); });
    req.pipe(up);
  };
  if (opt.latency > 0) setTimeout(go, opt.latency); else go();
});
server.keepAliveTimeout = 60000;
server.listen(opt.port, '127.0.0.1', () => {
  process.stdout.write('PORT ' + server.address().port + '\n');
});
const report = () => console.error(JSON.stringify(counts));
process.on('SIGUSR2', report);
process.on('SIGTERM', () => { report(); process.exit(0); });
