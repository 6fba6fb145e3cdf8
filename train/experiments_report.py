#!/usr/bin/env python3
"""experiments_report.py: loss curves and tables of `make experiments` (train/experiments.sh).

  experiments_report.py EXP_DIR IMG_DIR

Reads EXP_DIR/<run>/metrics.jsonl (written by `t5gemma train`: progress lines with "loss" every
log_every steps, validation lines with "val_loss" every eval_every steps), EXP_DIR/<run>/step0.json
(the validation loss of the run's starting point on the run's own validation batches: one step
with lr 0, then validation)
and EXP_DIR/<run>/final.txt (`t5gemma eval` on the whole validation split), and writes
  IMG_DIR/experiments-pretrain.png   causal pretraining of the two decoder-only models
  IMG_DIR/experiments-adapt.png      claim 1: adapted vs from scratch, by PrefixLM step and by
                                     total steps including pretraining
  IMG_DIR/experiments-encoder.png    claim 2: bidirectional vs causal encoder
  IMG_DIR/experiments-unequal.png    claim 3: unequal pair, cross-attention warm-up vs none
  EXP_DIR/results.md                 the tables quoted in docs/experiments.md
Plots need matplotlib (Debian python3-matplotlib, /usr/bin/python3).
"""
import json
import math
import os
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def load(exp, run):
    d = os.path.join(exp, run)
    tr, va = [], []
    with open(os.path.join(d, 'metrics.jsonl')) as f:
        for line in f:
            o = json.loads(line)
            if 'val_loss' in o:
                va.append((o['step'], o['val_loss']))
            elif 'loss' in o:
                tr.append((o['step'], o['loss'], o.get('elapsed_s', 0.0)))
    p0 = os.path.join(d, 'step0.json')
    if os.path.exists(p0):
        with open(p0) as f:
            va.insert(0, (0, json.loads(f.read())['val_loss']))
    t = {}
    if os.path.exists(os.path.join(d, 'time.json')):
        with open(os.path.join(d, 'time.json')) as f:
            t = json.load(f)
    return {'train': tr, 'val': va, 'final': read_eval(os.path.join(d, 'final.txt')),
            'wall': t.get('wall_s', tr[-1][2] if tr else float('nan')), 'cpu': t.get('cpu_s', float('nan'))}


def read_eval(path):
    """The loss of a `t5gemma eval --data` results line ("... loss X  ppl ...")."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for line in f:
            if line.startswith('validation') and ' loss ' in line:
                return float(line.split(' loss ')[1].split()[0])
    return None


def steps_to(val, target):
    """First step at which the validation curve reaches target (linear interpolation between
    evaluations); None when it never does."""
    for (s0, v0), (s1, v1) in zip(val, val[1:]):
        if v0 <= target:
            return s0
        if v1 <= target:
            return s0 + (s1 - s0) * (v0 - target) / (v0 - v1)
    if val and val[-1][1] <= target:
        return val[-1][0]
    return None


def smooth(ys, k=5):
    out = []
    for i in range(len(ys)):
        w = ys[max(0, i - k + 1):i + 1]
        out.append(sum(w) / len(w))
    return out


def plot(ax, r, label, color, shift=0, train=True, style='-'):
    if train and r['train']:
        xs = [s + shift for s, _, _ in r['train']]
        ax.plot(xs, smooth([l for _, l, _ in r['train']]), style, color=color, alpha=0.3, lw=1)
    xs = [s + shift for s, _ in r['val']]
    ax.plot(xs, [v for _, v in r['val']], style, marker='o', ms=3, color=color, label=label)


def finish(ax, top=None):
    """Grid and legend of a loss panel; top: the upper y limit (the curves start near ln V)."""
    if top is not None:
        ax.set_ylim(top=top)
    ax.grid(alpha=0.3)
    ax.legend()


def save(fig, img, name):
    fig.tight_layout()
    fig.savefig(os.path.join(img, 'experiments-%s.png' % name), dpi=90)
    plt.close(fig)


def fmt(x, nd=3):
    return '-' if x is None or (isinstance(x, float) and math.isnan(x)) else ('%.*f' % (nd, x))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    exp, img = sys.argv[1], sys.argv[2]
    os.makedirs(img, exist_ok=True)
    R = {}
    for run in sorted(os.listdir(exp)):
        if os.path.exists(os.path.join(exp, run, 'metrics.jsonl')):
            R[run] = load(exp, run)
    need = ['pretrain-small', 'pretrain-large', 'decoder-continued', 'adapted', 'scratch-lr1e-3', 'scratch-lr2e-3', 'scratch-long',
            'causal-encoder', 'ul2-bidirectional', 'ul2-causal-encoder', 'unequal-warmup', 'unequal-nowarmup',
            'unequal-warmup-rewarm', 'adapted-long', 'causal-encoder-long', 'decoder-continued-long']
    missing = [n for n in need if n not in R]
    if missing:
        sys.exit('experiments_report.py: missing runs in %s: %s' % (exp, ', '.join(missing)))
    pre_steps = R['pretrain-small']['train'][-1][0]
    md = []

    # pretraining
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    plot(ax, R['pretrain-small'], 'demo-gemma2 (2.0M, encoder+decoder source)', 'C0')
    plot(ax, R['pretrain-large'], 'demo-gemma2-large (larger encoder source)', 'C1')
    ax.set_xlabel('causal LM step (16 x 256 tokens)')
    ax.set_ylabel('loss (nats/token)')
    ax.set_title('Decoder-only pretraining (thin: training, dots: validation)')
    finish(ax, top=8.5)
    save(fig, img, 'pretrain')

    # claim 1
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    plot(a1, R['adapted'], 'adapted from the pretrained Gemma 2 (lr 1e-3)', 'C0')
    plot(a1, R['scratch-lr1e-3'], 'from scratch, lr 1e-3', 'C3')
    plot(a1, R['scratch-lr2e-3'], 'from scratch, lr 2e-3', 'C1')
    a1.set_xlabel('PrefixLM step (16 x (128 + 128) tokens)')
    a1.set_ylabel('PrefixLM validation loss (nats/token)')
    a1.set_title('By encoder-decoder training step')
    plot(a2, R['adapted'], 'adapted (after %d pretraining steps)' % pre_steps, 'C0', shift=pre_steps)
    plot(a2, R['scratch-long'], 'from scratch, lr 2e-3, %d steps' % R['scratch-long']['train'][-1][0], 'C1')
    a2.axvline(pre_steps, color='gray', lw=0.8, ls=':')
    a2.set_xlabel('total steps incl. decoder-only pretraining (equal compute per step)')
    a2.set_title('By total training compute')
    for a in (a1, a2):
        finish(a, top=8.5)
    save(fig, img, 'adapt')

    best_scratch = min(('scratch-lr1e-3', 'scratch-lr2e-3'), key=lambda n: R[n]['val'][-1][1])
    md.append('### Encoder-decoder runs (validation loss of the run\'s own objective, nats/token)\n')
    md.append('| run | start (step 0) | val loss @100 | @200 | @300 | final (whole val split) | wall (s) | CPU (s) |')
    md.append('|---|---:|---:|---:|---:|---:|---:|---:|')
    for n in ('adapted', 'scratch-lr1e-3', 'scratch-lr2e-3', 'scratch-long', 'causal-encoder', 'ul2-bidirectional',
              'ul2-causal-encoder', 'unequal-warmup', 'unequal-nowarmup', 'unequal-warmup-rewarm', 'adapted-long',
              'causal-encoder-long'):
        v = dict(R[n]['val'])
        md.append('| %s | %s | %s | %s | %s | %s | %.0f | %.0f |' % (n, fmt(v.get(0)), fmt(v.get(100)), fmt(v.get(200)), fmt(v.get(300)),
                                                                   fmt(R[n]['final']), R[n]['wall'], R[n]['cpu']))
    md.append('')
    thr = R[best_scratch]['val'][-1][1]
    st = steps_to(R['adapted']['val'], thr)
    n_scr = R[best_scratch]['val'][-1][0]
    md.append('Threshold = the best %d-step from-scratch run\'s last validation loss (%s, %s): the adapted model '
              'reaches it after %s PrefixLM steps.' % (n_scr, best_scratch, fmt(thr),
                                                       fmt(st, 0) if st is not None else 'no step of its %d' % R['adapted']['val'][-1][0]))
    a_final = R['adapted']['val'][-1][1]
    n_long = R['scratch-long']['val'][-1][0]
    sl = steps_to(R['scratch-long']['val'], a_final)
    md.append('The adapted model\'s last validation loss (%s, after %d + %d = %d steps including pretraining) is reached '
              'by the %d-step from-scratch run %s.' % (fmt(a_final), pre_steps, R['adapted']['val'][-1][0],
                                                        pre_steps + R['adapted']['val'][-1][0], n_long,
                                                        'after %s steps' % fmt(sl, 0) if sl is not None else 'at none of its steps'))
    md.append('')

    hp = os.path.join(exp, 'heldout.json')
    if os.path.exists(hp):
        with open(hp) as f:
            H = json.load(f)
        sp = os.path.join(exp, 'heldout-swapped.json')
        S = {}
        if os.path.exists(sp):
            with open(sp) as f:
                S = json.load(f)
        md.append('### Held-out windows: loss of the second 128 tokens given the first 128 (nats/token)\n')
        md.append('Last column: the same targets given another window\'s first 128 tokens minus the loss given '
                  'their own: how much the model uses its context (a T5Gemma model: its encoder).\n')
        md.append('| model | held-out loss | perplexity | with another window\'s context | context gain |')
        md.append('|---|---:|---:|---:|---:|')
        names = {'pretrain-small': 'Gemma 2 demo-gemma2, %d causal steps (the start point)' % pre_steps,
                 'pretrain-large': 'Gemma 2 demo-gemma2-large, %d causal steps' % R['pretrain-large']['train'][-1][0],
                 'decoder-continued': 'demo-gemma2 + %d more causal steps' % R['decoder-continued']['train'][-1][0],
                 'adapted': 'T5Gemma adapted from demo-gemma2 + %d PrefixLM steps' % R['adapted']['train'][-1][0],
                 'scratch-lr1e-3': 'T5Gemma from scratch, %d PrefixLM steps, lr 1e-3' % R['scratch-lr1e-3']['train'][-1][0],
                 'scratch-lr2e-3': 'T5Gemma from scratch, %d PrefixLM steps, lr 2e-3' % R['scratch-lr2e-3']['train'][-1][0],
                 'scratch-long': 'T5Gemma from scratch, %d PrefixLM steps, lr 2e-3' % R['scratch-long']['train'][-1][0],
                 'causal-encoder': 'T5Gemma adapted, causal encoder, %d PrefixLM steps' % R['causal-encoder']['train'][-1][0],
                 'unequal-warmup': 'T5Gemma large encoder + small decoder, warm-up, %d steps' % R['unequal-warmup']['train'][-1][0],
                 'unequal-nowarmup': 'T5Gemma large encoder + small decoder, no warm-up, %d steps' % R['unequal-nowarmup']['train'][-1][0],
                 'unequal-warmup-rewarm': 'T5Gemma large encoder + small decoder, warm-up + lr ramp, %d steps'
                 % R['unequal-warmup-rewarm']['train'][-1][0],
                 'decoder-continued-long': 'demo-gemma2 + %d more causal steps' % R['decoder-continued-long']['train'][-1][0],
                 'adapted-long': 'T5Gemma adapted from demo-gemma2 + %d PrefixLM steps' % R['adapted-long']['train'][-1][0],
                 'causal-encoder-long': 'T5Gemma adapted, causal encoder, %d PrefixLM steps' % R['causal-encoder-long']['train'][-1][0]}
        for k, v in H.items():
            sw = S.get(k)
            md.append('| %s | %.4f | %.1f | %s | %s |' % (names.get(k, k), v, math.exp(v), '%.4f' % sw if sw is not None else '-',
                                                       '%.4f' % (sw - v) if sw is not None else '-'))
        md.append('')

    # claim 2
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    plot(a3, R['adapted-long'], 'bidirectional encoder (default)', 'C0')
    plot(a3, R['causal-encoder-long'], 'causal encoder (encoder_causal=1)', 'C2')
    a3.set_title('PrefixLM, %d steps' % R['adapted-long']['train'][-1][0])
    plot(a1, R['adapted'], 'bidirectional encoder (default)', 'C0')
    plot(a1, R['causal-encoder'], 'causal encoder (encoder_causal=1)', 'C2')
    a1.set_ylabel('validation loss (nats/token)')
    a1.set_title('PrefixLM')
    plot(a2, R['ul2-bidirectional'], 'bidirectional encoder (default)', 'C0')
    plot(a2, R['ul2-causal-encoder'], 'causal encoder (encoder_causal=1)', 'C2')
    a2.set_title('UL2 (t5gemma2 mixture)')
    for a, runs in ((a1, ('adapted', 'causal-encoder')), (a2, ('ul2-bidirectional', 'ul2-causal-encoder')),
                    (a3, ('adapted-long', 'causal-encoder-long'))):
        a.set_xlabel('training step (from the adapted demo-gemma2)')
        lo = min(v for n in runs for _, v in R[n]['val'])
        hi = max(v for n in runs for _, v in R[n]['val'][1:])
        a.set_ylim(lo - 0.05, hi + 0.1)
        finish(a)
    save(fig, img, 'encoder')

    # claim 3
    fig, (ax, az) = plt.subplots(1, 2, figsize=(11, 4.2))
    wsteps = None
    with open(os.path.join(exp, 'unequal-warmup', 'train_config.json')) as f:
        wsteps = json.load(f).get('warmup_cross_steps')
    plot(ax, R['unequal-warmup'], 'unequal, %s cross-attention-only steps' % wsteps, 'C4')
    plot(ax, R['unequal-nowarmup'], 'unequal, no warm-up', 'C5')
    plot(ax, R['unequal-warmup-rewarm'], 'unequal, warm-up, then a 20-step lr ramp', 'C3')
    plot(ax, R['adapted'], 'balanced small-small (reference)', 'C0', train=False, style='--')
    if wsteps:
        ax.axvline(wsteps, color='gray', lw=0.8, ls=':')
    ax.set_xlabel('PrefixLM step')
    ax.set_ylabel('PrefixLM validation loss (nats/token)')
    ax.set_title('Unequal pair: large encoder + small decoder')
    finish(ax, top=8.5)
    # the same from the end of the warm-up on, where the curves are within ~0.1 of each other
    z0 = wsteps or 0
    zs = []
    for n, lab, col, sty in (('unequal-warmup', 'warm-up', 'C4', '-'), ('unequal-nowarmup', 'no warm-up', 'C5', '-'),
                             ('unequal-warmup-rewarm', 'warm-up + lr ramp', 'C3', '-'), ('adapted', 'balanced (reference)', 'C0', '--')):
        v = [(st, y) for st, y in R[n]['val'] if st >= z0]
        zs += [y for _, y in v]
        az.plot([st for st, _ in v], [y for _, y in v], marker='.', color=col, ls=sty, label=lab)
    if zs:   # (a smoke run with a few steps has no validation after the warm-up)
        az.set_ylim(min(zs) - 0.02, max(zs) + 0.02)
    az.set_xlabel('PrefixLM step')
    az.set_title('validation loss from step %d (zoomed)' % z0)
    finish(az)
    save(fig, img, 'unequal')

    md.append('### Pretraining (decoder-only, causal LM)\n')
    md.append('| run | steps | last training loss | last validation loss | wall (s) | CPU (s) |')
    md.append('|---|---:|---:|---:|---:|---:|')
    for n in ('pretrain-small', 'pretrain-large'):
        md.append('| %s | %d | %s | %s | %.0f | %.0f |' % (n, R[n]['train'][-1][0], fmt(R[n]['train'][-1][1]), fmt(R[n]['val'][-1][1]),
                                                         R[n]['wall'], R[n]['cpu']))
    md.append('')
    with open(os.path.join(exp, 'results.md'), 'w') as f:
        f.write('\n'.join(md) + '\n')
    print('\n'.join(md))


if __name__ == '__main__':
    main()
