// tokenizer_oracle.mjs: Hugging Face `tokenizers` (npm) as the reference for streamtune's tokenizer.
// Usage: node tools/tokenizer_oracle.mjs TOKENIZER_JSON CORPUS_JSONL [LIMIT] > out.jsonl
// For each corpus line (a JSON string) prints one JSON object:
//   {"ids": [...] (add_special_tokens=true), "plain": [...] (false),
//    "decode": decode(ids, skip_special=false), "decode_skip": decode(ids, skip_special=true)}
import { createRequire } from "module";
import fs from "fs";
import path from "path";
import { fileURLToPath } from "url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "package.json"));
const { Tokenizer } = require("tokenizers");

const [tokPath, corpusPath, limitArg] = process.argv.slice(2);
if (!tokPath || !corpusPath) {
  console.error("usage: node tools/tokenizer_oracle.mjs TOKENIZER_JSON CORPUS_JSONL [LIMIT]");
  process.exit(2);
}
const tok = Tokenizer.fromFile(tokPath);
const lines = fs.readFileSync(corpusPath, "utf8").split("\n").filter((l) => l.length > 0);
const limit = limitArg ? Math.min(Number(limitArg), lines.length) : lines.length;
const out = [];
for (let i = 0; i < limit; i++) {
  const text = JSON.parse(lines[i]);
  const enc = await tok.encode(text, null, { addSpecialTokens: true });
  const plain = await tok.encode(text, null, { addSpecialTokens: false });
  const ids = enc.getIds();
  out.push(JSON.stringify({
    ids,
    plain: plain.getIds(),
    decode: await tok.decode(ids, false),
    decode_skip: await tok.decode(ids, true),
  }));
}
process.stdout.write(out.join("\n") + "\n");
