#!/usr/bin/python3
"""bench/gpt_torch.py -- PyTorch side of bench/gpt.sh: a GPT of any size
(bench/seq_torch.py's GPTModel) trained on datasets/fortunes.h5 the way Dive
trains the config gpt.sh writes, in fp32 (TF32 off) or bf16 autocast, eager
or under torch.compile, reporting tokens/s, peak memory and the validation
loss after the steps.

    python3 bench/gpt_torch.py --device cuda --precision bf16 --compile \\
        --blocks 12 --width 768 --heads 12 --T 1024 --batch 16 --steps 100
    /usr/bin/python3 bench/gpt_torch.py --blocks 2 --width 64 --heads 2 --T 64 --batch 8 --steps 10

Model, data, initialisation and optimizer are seq_torch.py's (pre-norm
blocks, MLP 4 x width with tanh-GELU, learned positions, the output layer
tied to the token embedding with its own bias, Dive's initialisation,
AdamW on every parameter, linear warm-up then cosine to --lr-min over
--steps, clip_norm 1.0, window k = tokens[k*T .. k*T+T], full batches in a
fresh order each epoch); the vocabulary comes from the file.

  --precision fp32   every matmul in fp32, TF32 off (torch.backends)
  --precision bf16   torch.autocast(bfloat16) around forward and loss;
                     fp32 master weights, gradients and AdamW state
  --compile          torch.compile(model) (default mode). Compilation
                     happens in the first, untimed step; if it fails the
                     script prints `compile failed: <reason>` and goes on
                     eager ("compiled": false in the result)

Timing: the --warmup-steps first steps (default 2) are left out; the rest
are bracketed by torch.cuda.synchronize(); a step's time includes gathering
its batch. Peak memory: torch.cuda.max_memory_allocated() over the
training, less the token arrays (kept on the GPU here; Dive's loader keeps
them on the host); n/a on the CPU. Validation: the mean per-token
cross-entropy over every window of /val/tokens, eval mode, eager (the
compiled module shares its weights), in the training precision, batch
--batch. FLOPs per token: docs/gpu.md "Throughput and MFU",
6 N + 6 L C (T + 1) with N = L (12 C^2) + C V.

Ends with one line `RESULT {json}`:
  status        "ok", or "oom" when the batch does not fit (CUDA or host
                out of memory, in training or evaluation)
  tokens_per_s, val_loss, peak_mib (null on the CPU), steps, batch, T,
  precision, compiled, compile_error (null or the reason), flops_per_token,
  warmup_s (untimed steps, compilation included), train_s (timed steps),
  eval_s.
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seq_torch import GPTModel, load_tokens, lr_at, trainable, windows
from torch_setup import torch_setup


def flops_per_token(L, C, T, V):
    """docs/gpu.md, "Throughput and MFU": 6 N + 6 L C (T + 1)."""
    N = L * 12 * C * C + C * V
    return 6 * N + 6 * L * C * (T + 1)


def is_oom(e):
    if hasattr(torch.cuda, "OutOfMemoryError") and isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    s = str(e)
    # compiled code and the CPU allocator raise other types with these words
    return ("out of memory" in s.lower() or "can't allocate memory" in s
            or "CUBLAS_STATUS_ALLOC_FAILED" in s)


def result(**kw):
    print("RESULT " + json.dumps(kw), flush=True)


@torch.no_grad()
def evaluate(net, toks, T, batch, ctx):
    net.eval()
    n = (toks.numel() - 1) // T
    total, count = 0.0, 0
    for i in range(0, n, batch):
        ks = torch.arange(i, min(i + batch, n), device=toks.device)
        x, y = windows(toks, ks, T)
        with ctx():
            logits = net(x)
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                                     reduction="sum").item()
        count += y.numel()
    net.train()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--T", type=int, default=1024, help="tokens per window")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=100, help="training steps in all (warm-up included)")
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed first steps")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--lr-min", type=float, default=6e-5)
    ap.add_argument("--lr-warmup", type=int, default=10, help="linear learning-rate warm-up steps")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--data", default="datasets/fortunes.h5")
    a = ap.parse_args()
    a.tf32 = False
    if a.steps <= a.warmup_steps or a.warmup_steps < 1:
        ap.error(f"--steps must exceed --warmup-steps ({a.warmup_steps}), which must be >= 1")
    if a.width % a.heads:
        ap.error("--width must be a multiple of --heads")

    dev, gpu = torch_setup(a)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    if a.precision == "bf16":
        ctx = lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    else:
        import contextlib
        ctx = contextlib.nullcontext

    train, V = load_tokens(a.data, "train", dev)
    val, _ = load_tokens(a.data, "val", dev)
    T, B = a.T, a.batch
    nwin = (train.numel() - 1) // T
    per_epoch = nwin // B  # full batches only, as Dive
    if per_epoch == 0:
        sys.exit(f"{a.data}: {nwin} training windows of {T} tokens, fewer than a batch of {B}")
    fpt = flops_per_token(a.blocks, a.width, T, V)
    base = {"T": T, "batch": B, "steps": a.steps, "precision": a.precision,
            "flops_per_token": fpt, "device": a.device}
    if gpu:
        sync()
        data_bytes = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    compiled, compile_error = False, None
    try:
        net = GPTModel(V, T, C=a.width, heads=a.heads, blocks=a.blocks, dropout=a.dropout).to(dev)
        nparams = sum(p.numel() for p in net.parameters())
        print(f"gpt_torch: {a.blocks} x {a.width}, {a.heads} heads, T {T}, vocab {V}, batch {B}, "
              f"{nparams} parameters, {a.precision}{', compiled' if a.compile else ''}, "
              f"{fpt:.4g} train FLOPs per token", flush=True)
        params = trainable(net)
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
        sched = dict(lr=a.lr, warmup=a.lr_warmup, cosine=True, total=a.steps, lr_min=a.lr_min)
        model = net
        if a.compile:
            if hasattr(torch, "compile"):
                model = torch.compile(net)
                compiled = True
            else:
                compile_error = f"torch {torch.__version__} has no torch.compile"
                print(f"compile failed: {compile_error}", flush=True)

        def step_once(x, y, lr):
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            with ctx():
                logits = model(x)
                loss = F.cross_entropy(logits.reshape(-1, V).float(), y.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return loss

        step, timed_tokens, t_start, t0 = 0, 0, time.perf_counter(), None
        warmup_s = 0.0
        epoch = 0
        net.train()
        while step < a.steps:
            perm = torch.from_numpy(np.random.default_rng(a.seed + epoch).permutation(nwin)).to(dev)
            for i in range(per_epoch):
                if step == a.warmup_steps:
                    sync()
                    t0 = time.perf_counter()
                    warmup_s = t0 - t_start
                x, y = windows(train, perm[i * B:(i + 1) * B], T)
                lr = lr_at(step, **sched)
                if compiled:  # compilation happens in the first call (and any recompile)
                    try:
                        loss = step_once(x, y, lr)
                        if step < a.warmup_steps:
                            sync()
                    except Exception as e:  # noqa: BLE001 -- any compiler failure
                        if is_oom(e):
                            raise
                        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                        compile_error = f"{type(e).__name__}: {msg}"[:300]
                        print(f"compile failed: {compile_error}", flush=True)
                        compiled, model = False, net
                        opt.zero_grad(set_to_none=True)
                        loss = step_once(x, y, lr)
                else:
                    loss = step_once(x, y, lr)
                step += 1
                if step > a.warmup_steps:
                    timed_tokens += B * T
                if step >= a.steps:
                    break
            epoch += 1
        sync()
        train_s = time.perf_counter() - t0
        last = loss.item()
        peak_mib = (torch.cuda.max_memory_allocated() - data_bytes) / 2**20 if gpu else None
        if not math.isfinite(last):
            sys.exit(f"gpt_torch: training loss is {last}")
        t1 = time.perf_counter()
        vloss = evaluate(net, val, T, B, ctx)
        eval_s = time.perf_counter() - t1
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        print(f"gpt_torch: out of memory at batch {B}: {str(e).strip().splitlines()[0]}"[:400],
              flush=True)
        result(status="oom", compiled=compiled, compile_error=compile_error, **base)
        return
    rate = timed_tokens / train_s
    print(f"gpt_torch: {rate:.1f} tokens/s, train loss {last:.4f}, val loss {vloss:.4f} "
          f"after {step} steps; warm-up {warmup_s:.1f} s, timed {train_s:.1f} s, eval "
          f"{eval_s:.1f} s" + (f", peak {peak_mib:.1f} MiB" if peak_mib is not None else ""),
          flush=True)
    result(status="ok", tokens_per_s=rate, val_loss=vloss, train_loss=last, peak_mib=peak_mib,
           compiled=compiled, compile_error=compile_error, warmup_s=warmup_s, train_s=train_s,
           eval_s=eval_s, **base)


if __name__ == "__main__":
    main()
