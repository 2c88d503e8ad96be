// s3rver.js: start @20minutes/s3rver (which checks SigV4 signatures) on 127.0.0.1 for tests.
// The package ships without its bin/ launcher, so this is ours. Run with node
// --openssl-legacy-provider (node 20 otherwise fails paginated listings with 500).
//   node --openssl-legacy-provider s3rver.js [--dir D] [--bucket B ...] [--port N]
// Prints "PORT <n>" on stdout once listening; credentials are S3RVER / S3RVER.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');

const here = __dirname;
const S3rver = require(path.join(here, '..', '..', 'tools', 'node_modules', '@20minutes',
  's3rver', 'lib', 's3rver.js'));

const args = process.argv.slice(2);
let dir = null, port = 0;
const buckets = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--dir') dir = args[++i];
  else if (args[i] === '--bucket') buckets.push({ name: args[++i], configs: [] });
  else if (args[i] === '--port') port = Number(args[++i]);
  else { console.error('s3rver.js: unknown argument ' + args[i]); process.exit(2); }
}
if (!dir) dir = fs.mkdtempSync(path.join(os.tmpdir(), 'st-s3rver-'));
fs.mkdirSync(dir, { recursive: true });

const server = new S3rver({
  address: '127.0.0.1',
  port,
  silent: true,
  directory: dir,
  configureBuckets: buckets,
  vhostBuckets: false,
});
server.run().then((addr) => {
  process.stdout.write('PORT ' + addr.port + '\n');
}).catch((e) => { console.error('s3rver.js: ' + e.stack); process.exit(1); });
process.on('SIGTERM', () => { server.close().finally(() => process.exit(0)); });
