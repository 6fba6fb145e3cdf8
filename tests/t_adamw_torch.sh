#!/usr/bin/env bash
# t_adamw_torch.sh: our AdamW + global-norm clipping against torch.optim.AdamW (float64) and
# torch.nn.utils.clip_grad_norm_ on the same initial parameters and gradients, over 7 steps with
# decayed and undecayed parameter groups, a changing learning rate, clipped and unclipped steps,
# an entry frozen for the first 3 steps (torch: .grad = None, so its per-parameter state starts
# later, like our per-entry step counter) and an entry frozen at one step only.
# The C side (tests/test_optim.c, exchange mode) writes inputs and its results to a text file.
set -u
cd "$(dirname "$0")/.."
bin=""
for b in "${BUILD:-}" "$(dirname "${T5G_BIN:-./t5gemma}")" build; do
  [ -n "$b" ] && [ -x "$b/tests/test_optim" ] && { bin="$b/tests/test_optim"; break; }
done
if [ -z "$bin" ]; then echo "FAIL adamw_torch: tests/test_optim not built (looked in \$BUILD, next to \$T5G_BIN, build/)"; exit 1; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if ! T5G_ADAMW_EXCHANGE="$tmp/x.txt" "$bin" >"$tmp/log" 2>&1; then
  echo "FAIL adamw_torch: $bin in exchange mode failed: $(tail -n 3 "$tmp/log")"; exit 1
fi
/usr/bin/python3 - "$tmp/x.txt" <<'EOF'
import sys
try:
    import torch
except Exception as e:
    print("FAIL adamw_torch: /usr/bin/python3 cannot import torch: %s" % e); sys.exit(1)
tok = open(sys.argv[1]).read().split()
pos = 0
def nxt():
    global pos
    pos += 1
    return tok[pos - 1]
beta1, beta2, eps, wd, max_norm = (float(nxt()) for _ in range(5))
decay_embed, nsteps, nent = int(nxt()), int(nxt()), int(nxt())
names, groups, params = [], [], []
for _ in range(nent):
    name, g, n = nxt(), int(nxt()), int(nxt())
    names.append(name); groups.append(g)
    params.append(torch.tensor([float(nxt()) for _ in range(n)], dtype=torch.float64))
# our groups: 0 PG_MATRIX (decayed), 1 PG_NORM (never), 2 PG_EMBED (decayed iff decay_embed)
decayed = [g == 0 or (g == 2 and decay_embed) for g in groups]
pg = [{"params": [p for p, d in zip(params, decayed) if d], "weight_decay": wd},
      {"params": [p for p, d in zip(params, decayed) if not d], "weight_decay": 0.0}]
opt = torch.optim.AdamW(pg, lr=1e-3, betas=(beta1, beta2), eps=eps, foreach=False)
fails = 0
worst = 0.0
for s in range(nsteps):
    lr = float(nxt())
    for i in range(nent):
        frozen = int(nxt())
        g = torch.tensor([float(nxt()) for _ in range(params[i].numel())], dtype=torch.float64)
        params[i].grad = None if frozen else g
    live = [p for p in params if p.grad is not None]
    norm = float(torch.nn.utils.clip_grad_norm_(live, max_norm))
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    ours_norm = float(nxt())
    if abs(ours_norm - norm) > 1e-9 * norm:
        print("FAIL adamw_torch_norm: step %d: ours %.17g torch %.17g" % (s, ours_norm, norm)); fails += 1
    for i in range(nent):
        ours = torch.tensor([float(nxt()) for _ in range(params[i].numel())], dtype=torch.float64)
        diff = (ours - params[i]).abs()
        tol = 2e-6 + 1e-5 * params[i].abs()
        worst = max(worst, float((diff / tol).max()))
        if bool((diff > tol).any()):
            j = int((diff - tol).argmax())
            print("FAIL adamw_torch: step %d %s[%d]: ours %.9g torch %.9g" % (s, names[i], j, float(ours[j]), float(params[i][j])))
            fails += 1
if pos != len(tok):
    print("FAIL adamw_torch: exchange file has %d unread tokens" % (len(tok) - pos)); fails += 1
if fails == 0:
    print("PASS adamw_torch (%d steps, %d entries, worst |diff|/tol %.3f)" % (nsteps, nent, worst))
sys.exit(1 if fails else 0)
EOF
