#!/usr/bin/python3
"""bench/seq_torch.py -- PyTorch reference for Dive's sequence examples
(examples/fortunes_lstm.cfg, examples/fortunes_gpt.cfg): the same model, the
same optimizer and schedule, trained on the same kind of batches of
datasets/fortunes.h5, one thread by default.

    /usr/bin/python3 bench/seq_torch.py --model lstm --steps 200
    /usr/bin/python3 bench/seq_torch.py --model gpt --steps 200 --batch 32 --T 128
    python3 bench/seq_torch.py --model gpt --steps 500 --device cuda
    /usr/bin/python3 bench/seq_torch.py --model gpt --dive-checkpoint runs/fortunes_gpt/last.h5

Data as Dive reads it: window k of a split is tokens[k*T .. k*T+T] (T + 1
tokens: the first T are the inputs, the last T the targets), (n - 1) // T
windows; training draws full batches of windows in a fresh random order each
epoch; the validation loss is the mean per-token cross-entropy over every
window of /val/tokens, in eval mode (no dropout).

Models:
  lstm  embedding V -> 64 (no positions), nn.LSTM(64, 256, 2 layers), a
        linear 256 -> V at every position; Adam lr 0.002, clip_norm 1.0.
  gpt   token embedding V -> 128 plus learned positions (T, 128), 4 pre-norm
        blocks (causal self-attention, 4 heads; MLP 512 with tanh-GELU;
        dropout 0.1 after the attention projection and after the MLP), a
        final LayerNorm, logits = h E^T + b with E the token embedding;
        AdamW lr 0.001 weight decay 0.01 on every parameter, 100 linear
        warm-up steps then cosine to 1e-4 over the run, clip_norm 1.0.

Initialisation follows Dive's, so the two start from the same distribution
(not the same numbers): embeddings, positions and attention/MLP weights
normal(0, 0.02), with the attention projection and the second MLP layer at
0.02 / sqrt(2 * blocks) (GPT-2); biases zeros, LayerNorm ones/zeros; the LSTM
uniform(-1/sqrt(H), 1/sqrt(H)) with b_hh zero and frozen, since Dive keeps
one bias (b_ih + b_hh) per layer drawn from that uniform; the LSTM model's output
layer Xavier-uniform.

On a GPU (--device cuda) the token arrays live on the GPU and windows are
gathered there; fp32 matmuls (TF32 off) unless --tf32; attention uses
F.scaled_dot_product_attention where this PyTorch has it (2.0 and later),
the explicit softmax(q k^T / sqrt(d)) v otherwise; timing brackets
torch.cuda.synchronize().

Prints exactly one line
    torch <model>: <X> tokens/s, val loss <L> after <N> steps
X measured over the training steps after the first 2 (warm-up); a step's
time includes gathering its batch, as Dive's does. With --dive-checkpoint it
trains nothing: it loads the weights of a Dive checkpoint of the same model
(parameter names as model/layer_rnn.c and model/layer_seq.c write them)
and prints `torch <model>: val loss <L> of <H5>`, which should match
`dive eval CONFIG --checkpoint H5` to about 6 digits.
"""
import argparse
import math
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_setup import torch_setup

WARMUP = 2


# ---- models -----------------------------------------------------------------

class LSTMModel(nn.Module):
    def __init__(self, V, dim=64, units=256, layers=2):
        super().__init__()
        self.emb = nn.Embedding(V, dim)
        self.lstm = nn.LSTM(dim, units, layers, batch_first=True)
        self.head = nn.Linear(units, V)
        nn.init.normal_(self.emb.weight, 0.0, 0.02)
        bound = 1.0 / math.sqrt(units)
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias_hh"):
                # frozen at zero: b_ih alone plays Dive's one bias, so Adam
                # and the clipping norm see each bias gradient once
                nn.init.zeros_(p)
                p.requires_grad_(False)
            else:
                nn.init.uniform_(p, -bound, bound)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx):  # idx (B, T) -> logits (B, T, V)
        h, _ = self.lstm(self.emb(idx))
        return self.head(h)


HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


class Block(nn.Module):
    def __init__(self, C, heads, hidden, dropout, res_std):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(C, eps=1e-5)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C, eps=1e-5)
        self.fc = nn.Linear(C, hidden)
        self.fc2 = nn.Linear(hidden, C)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        for lin, std in ((self.qkv, 0.02), (self.proj, res_std), (self.fc, 0.02),
                         (self.fc2, res_std)):
            nn.init.normal_(lin.weight, 0.0, std)
            nn.init.zeros_(lin.bias)

    def attn(self, x):  # (B, T, C), causal, no dropout on the probabilities (as Dive)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        if HAVE_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu_(1)
            y = att.masked_fill(mask, float("-inf")).softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x):
        x = x + self.drop1(self.attn(self.ln1(x)))
        return x + self.drop2(self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh")))


class GPTModel(nn.Module):
    def __init__(self, V, T, C=128, heads=4, blocks=4, dropout=0.1):
        super().__init__()
        self.tok = nn.Embedding(V, C)
        self.pos = nn.Parameter(torch.empty(T, C))
        res_std = 0.02 / math.sqrt(2.0 * blocks)
        self.blocks = nn.ModuleList(Block(C, heads, 4 * C, dropout, res_std) for _ in range(blocks))
        self.ln = nn.LayerNorm(C, eps=1e-5)
        self.bias = nn.Parameter(torch.zeros(V))  # the tied output layer's own bias
        nn.init.normal_(self.tok.weight, 0.0, 0.02)
        nn.init.normal_(self.pos, 0.0, 0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.size(1)]
        for b in self.blocks:
            x = b(x)
        return F.linear(self.ln(x), self.tok.weight, self.bias)


def trainable(net):
    return [p for p in net.parameters() if p.requires_grad]


def load_dive(net, path):
    """Copy the weights of a Dive checkpoint of the same model into net."""
    with h5py.File(path, "r") as f:
        g = {f"{layer}/{name}": torch.from_numpy(np.asarray(d[...]))
             for layer, grp in f["/model"].items() for name, d in grp.items()}
    sd = {}
    if isinstance(net, LSTMModel):
        layer = lambda pre: next(k.split("/")[0] for k in g if k.startswith(pre))
        emb, rnn, out = layer("embedding"), layer("lstm"), layer("dense")
        sd["emb.weight"] = g[f"{emb}/weight"]
        for k in range(net.lstm.num_layers):
            for n in ("weight_ih", "weight_hh"):
                sd[f"lstm.{n}_l{k}"] = g[f"{rnn}/{n}_{k}"]
            sd[f"lstm.bias_ih_l{k}"] = g[f"{rnn}/bias_{k}"]
            sd[f"lstm.bias_hh_l{k}"] = torch.zeros_like(g[f"{rnn}/bias_{k}"])
        sd["head.weight"], sd["head.bias"] = g[f"{out}/weight"], g[f"{out}/bias"]
    else:
        names = {"ln1_gamma": "ln1.weight", "ln1_beta": "ln1.bias", "qkv_weight": "qkv.weight",
                 "qkv_bias": "qkv.bias", "proj_weight": "proj.weight", "proj_bias": "proj.bias",
                 "ln2_gamma": "ln2.weight", "ln2_beta": "ln2.bias", "fc_weight": "fc.weight",
                 "fc_bias": "fc.bias", "fc2_weight": "fc2.weight", "fc2_bias": "fc2.bias"}
        sd["tok.weight"], sd["pos"] = g["tok/weight"], g["tok/position"]
        for i in range(len(net.blocks)):
            for a, b in names.items():
                sd[f"blocks.{i}.{b}"] = g[f"transformer_{i + 1}/{a}"]
        sd["ln.weight"], sd["ln.bias"] = g["layernorm_1/gamma"], g["layernorm_1/beta"]
        sd["bias"] = g["dense_1/bias"]
    net.load_state_dict(sd)


# ---- schedule (run/settings.c: dv_lr_at) -------------------------------------

def lr_at(step, lr, warmup, cosine, total, lr_min):
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if cosine:
        t = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
        return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * t))
    return lr


# ---- data ---------------------------------------------------------------------

def load_tokens(path, split, dev):
    with h5py.File(path, "r") as f:
        toks = np.asarray(f[f"/{split}/tokens"][...], dtype=np.int64)
        V = int(f["/vocab"].attrs["size"]) if "/vocab" in f else int(toks.max()) + 1
    return torch.from_numpy(toks).to(dev), V


def windows(toks, starts, T):
    """(B,) window numbers -> inputs (B, T), targets (B, T)."""
    w = toks[(starts * T).unsqueeze(1) + torch.arange(T + 1, device=toks.device)]
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def evaluate(net, toks, T, batch):
    net.eval()
    n = (toks.numel() - 1) // T
    total, count = 0.0, 0
    for i in range(0, n, batch):
        ks = torch.arange(i, min(i + batch, n), device=toks.device)
        x, y = windows(toks, ks, T)
        logits = net(x)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                 reduction="sum").item()
        count += y.numel()
    net.train()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["lstm", "gpt"], default="lstm")
    ap.add_argument("--steps", type=int, default=200,
                    help="training steps in all (warm-up included)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=128, help="tokens per window")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on a GPU")
    ap.add_argument("--data", default="datasets/fortunes.h5")
    ap.add_argument("--dive-checkpoint", metavar="H5",
                    help="no training: load this Dive checkpoint of the same model "
                         "and print its val loss (checks that the forward passes agree)")
    a = ap.parse_args()
    if a.steps <= WARMUP:
        ap.error(f"--steps must exceed the {WARMUP} warm-up steps")

    dev, gpu = torch_setup(a)

    train, V = load_tokens(a.data, "train", dev)
    val, _ = load_tokens(a.data, "val", dev)
    T, B = a.T, a.batch
    nwin = (train.numel() - 1) // T
    per_epoch = nwin // B  # full batches only, as Dive
    if per_epoch == 0:
        sys.exit(f"{a.data}: {nwin} training windows of {T} tokens, fewer than a batch of {B}")

    if a.model == "lstm":
        net = LSTMModel(V).to(dev)
        opt = torch.optim.Adam(trainable(net), lr=0.002)
        sched = dict(lr=0.002, warmup=0, cosine=False, total=a.steps, lr_min=0.0)
    else:
        net = GPTModel(V, T).to(dev)
        opt = torch.optim.AdamW(trainable(net), lr=0.001, weight_decay=0.01)
        sched = dict(lr=0.001, warmup=100, cosine=True, total=a.steps, lr_min=1e-4)
    clip, params = 1.0, trainable(net)
    if a.dive_checkpoint:
        load_dive(net, a.dive_checkpoint)
        print(f"torch {a.model}: val loss {evaluate(net, val, T, 64):.6f} "
              f"of {a.dive_checkpoint}", flush=True)
        return

    step, timed_tokens, t0 = 0, 0, None
    net.train()
    epoch = 0
    while step < a.steps:
        perm = torch.from_numpy(np.random.default_rng(a.seed + epoch).permutation(nwin)).to(dev)
        for i in range(per_epoch):
            if step == WARMUP:
                if gpu:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            x, y = windows(train, perm[i * B:(i + 1) * B], T)
            lr = lr_at(step, **sched)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            logits = net(x)
            loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            step += 1
            if step > WARMUP:
                timed_tokens += B * T
            if step >= a.steps:
                break
        epoch += 1
    if gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    if not math.isfinite(loss.item()):
        sys.exit(f"torch {a.model}: training loss is {loss.item()}")
    vloss = evaluate(net, val, T, 64)
    print(f"torch {a.model}: {timed_tokens / elapsed:.1f} tokens/s, val loss {vloss:.4f} "
          f"after {step} steps", flush=True)


if __name__ == "__main__":
    main()
