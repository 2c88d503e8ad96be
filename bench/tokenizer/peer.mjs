// peer.mjs: Hugging Face `tokenizers` (npm) encode throughput on the same text, one thread
// (run with RAYON_NUM_THREADS=1). Usage: node peer.mjs TOKENIZER_JSON TEXT_FILE [SECONDS]
// Times both a per-line encode() loop and one encodeBatch() over all lines and reports the
// faster (the fairest number for the peer), as one JSON object like bench_tokenize's.
import { createRequire } from "module";
import fs from "fs";
import path from "path";
import { fileURLToPath } from "url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "..", "tools", "package.json"));
const { Tokenizer } = require("tokenizers");
const [tokPath, textPath, secArg] = process.argv.slice(2);
const budget = Number(secArg || 5) * 1000;
const tok = Tokenizer.fromFile(tokPath);
const text = fs.readFileSync(textPath, "utf8");
const lines = text.split("\n");
if (lines.length && lines[lines.length - 1] === "") lines.pop();
const bytes = lines.reduce((a, l) => a + Buffer.byteLength(l, "utf8"), 0);

async function loop() {
  let tokens = 0;
  for (const l of lines) tokens += (await tok.encode(l, null, { addSpecialTokens: true })).getIds().length;
  return tokens;
}
async function batch() {
  const encs = await tok.encodeBatch(lines, { addSpecialTokens: true });
  let tokens = 0;
  for (const e of encs) tokens += e.getIds().length;
  return tokens;
}
const result = {};
for (const [name, fn] of [["encode", loop], ["encodeBatch", batch]]) {
  let best = Infinity, tokens = 0, reps = 0;
  const start = performance.now();
  do {
    const t0 = performance.now();
    tokens = await fn();
    best = Math.min(best, performance.now() - t0);
    reps++;
  } while (performance.now() - start < budget / 2 || reps < 3);
  result[name] = { seconds: best / 1000, tokens, reps };
}
const b = result.encode.seconds < result.encodeBatch.seconds ? "encode" : "encodeBatch";
const r = result[b];
console.log(JSON.stringify({ bytes, lines: lines.length, tokens: r.tokens, seconds: r.seconds, mode: b,
  mb_per_s: bytes / r.seconds / 1e6, tokens_per_s: r.tokens / r.seconds,
  encode_s: result.encode.seconds, encodeBatch_s: result.encodeBatch.seconds }));
