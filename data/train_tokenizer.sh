#!/usr/bin/env bash
# train_tokenizer.sh: train a small SentencePiece BPE tokenizer with Gemma's layout.
#
#   data/train_tokenizer.sh --out DIR [--vocab-size N] [--input-sentence-size N] [--threads N] CORPUS...
#
# CORPUS files are plain UTF-8 text, one sentence or document per line. Writes DIR/tokenizer.model
# (and DIR/tokenizer.vocab, the pieces with their scores) via spm_train (Debian package
# sentencepiece), then checks the special-token ids. The layout is Gemma 2's (spec section 5):
#   <pad>=0 <eos>=1 <bos>=2 <unk>=3 (control/unknown pieces), then user-defined symbols
#   <mask>=4 <2mass>=5 [@BOS@]=6 <unused0>..<unused98>=7..105 <start_of_turn>=106 <end_of_turn>=107,
#   then the 256 byte pieces <0x00>..<0xFF>, then the learned pieces.
# Options as in Gemma's tokenizer: model_type=bpe, byte_fallback (no <unk> for unseen
# characters), split_digits, identity normalisation, no dummy "▁" prefix, whitespace kept as is
# (no removal of leading/trailing/repeated spaces), whitespace-only pieces allowed ("▁▁").
# Default vocabulary size 8000 (must exceed 108 + 256 + the characters kept).
# Note: spm_train 0.1.97's BPE trainer crashes (segfault) on pathological lines such as one
# 60 KB "word" of "abcabc..."; train on ordinary text.
# Exit status 0, or 1 with a message naming what failed.
set -euo pipefail

die() { echo "train_tokenizer.sh: $*" >&2; exit 1; }
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

out=""; vocab=8000; sentences=0; threads=2; inputs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --vocab-size) vocab=${2:?--vocab-size needs a number}; shift 2 ;;
    --input-sentence-size) sentences=${2:?--input-sentence-size needs a number}; shift 2 ;;
    --threads) threads=${2:?--threads needs a number}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) inputs+=("$1"); shift ;;
  esac
done
[ -n "$out" ] || die "--out DIR is required (see --help)"
[ ${#inputs[@]} -gt 0 ] || die "no corpus files given (see --help)"
[[ "$vocab" =~ ^[0-9]+$ ]] && [ "$vocab" -ge 500 ] || die "--vocab-size must be an integer >= 500, got '$vocab'"
command -v spm_train >/dev/null || die "spm_train not found: install the Debian package 'sentencepiece' (make deps)"
command -v spm_export_vocab >/dev/null || die "spm_export_vocab not found: install the Debian package 'sentencepiece'"
for f in "${inputs[@]}"; do [ -r "$f" ] && [ -s "$f" ] || die "$f: corpus file missing, unreadable or empty"; done
mkdir -p "$out"

# the 104 user-defined symbols, in id order 4..107
user=("<mask>" "<2mass>" "[@BOS@]")
for i in $(seq 0 98); do user+=("<unused$i>"); done
user+=("<start_of_turn>" "<end_of_turn>")
user_csv=$(IFS=,; echo "${user[*]}")

tmp=$(mktemp -d "$out/.train_tokenizer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
input_csv=$(IFS=,; echo "${inputs[*]}")

spm_train \
  --input="$input_csv" --model_prefix="$tmp/tokenizer" --model_type=bpe --vocab_size="$vocab" \
  --pad_id=0 --eos_id=1 --bos_id=2 --unk_id=3 \
  --pad_piece="<pad>" --eos_piece="<eos>" --bos_piece="<bos>" --unk_piece="<unk>" \
  --user_defined_symbols="$user_csv" \
  --byte_fallback=true --split_digits=true --normalization_rule_name=identity \
  --add_dummy_prefix=false --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true \
  --character_coverage=0.9995 --max_sentence_length=1000000 \
  --input_sentence_size="$sentences" --shuffle_input_sentence=true \
  --num_threads="$threads" --minloglevel=1 >"$tmp/spm_train.log" 2>&1 \
  || { tail -n 20 "$tmp/spm_train.log" >&2; die "spm_train failed (log above)"; }

# check the layout: piece of every id 0..107 and the byte pieces
spm_export_vocab --model="$tmp/tokenizer.model" --output_format=vocab >"$tmp/vocab.tsv" 2>/dev/null \
  || die "spm_export_vocab could not read the trained model"
expected=("<pad>" "<eos>" "<bos>" "<unk>" "${user[@]}")
mapfile -t got < <(cut -f1 "$tmp/vocab.tsv" | head -n ${#expected[@]})
for i in "${!expected[@]}"; do
  [ "${got[$i]:-}" = "${expected[$i]}" ] || die "trained model has '${got[$i]:-<none>}' at id $i, expected '${expected[$i]}'"
done
for b in 00 0A 20 41 FF; do
  grep -q "^<0x$b>	" "$tmp/vocab.tsv" || die "trained model lacks the byte piece <0x$b> (byte_fallback)"
done
n=$(wc -l <"$tmp/vocab.tsv")
[ "$n" -eq "$vocab" ] || die "trained model has $n pieces, expected $vocab"

mv -f "$tmp/tokenizer.model" "$out/tokenizer.model"
mv -f "$tmp/tokenizer.vocab" "$out/tokenizer.vocab"
echo "train_tokenizer.sh: wrote $out/tokenizer.model ($vocab pieces; <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4 <start_of_turn>=106 <end_of_turn>=107)"
