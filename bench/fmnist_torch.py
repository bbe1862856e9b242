#!/usr/bin/python3
"""bench/fmnist_torch.py -- PyTorch reference for Dive's Fashion-MNIST
examples (examples/fmnist_mlp.cfg, examples/fmnist_cnn.cfg): the same model,
Adam lr 1e-3, batch 64, inputs scaled by 1/255, one thread by default.

    /usr/bin/python3 bench/fmnist_torch.py --model mlp --epochs 1 --eval
    /usr/bin/python3 bench/fmnist_torch.py --model cnn --steps 200
    python3 bench/fmnist_torch.py --model cnn --batch 512 --device cuda

On a GPU (--device cuda) the whole training set is moved to the GPU once and
batches are gathered there (PyTorch eager at its fastest: no host copies),
fp32 matmuls and convolutions (TF32 off) unless --tf32; timing brackets
torch.cuda.synchronize().

Prints exactly one line `torch <model> batch <B>: <X> samples/s`, X measured
over the training steps after the first 5 (warm-up), and with --eval a second
line `torch <model> test accuracy: <A>`. Reads the IDX .gz files of the Debian
package dataset-fashion-mnist directly (launch/deps --bench --data), or with
--h5 FILE the HDF5 file Dive trains on (bench/fmnist.sh passes
datasets/fmnist.h5, so both sides read the same bytes).
"""
import argparse
import gzip
import os
import sys
import time

import numpy as np
import torch
from torch import nn

from torch_setup import torch_setup

WARMUP = 5


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08: unsigned byte
        sys.exit(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(data_dir, split, h5=None):
    if h5:  # the file Dive reads (launch/import-fmnist): /train or /test, x and y
        import h5py
        with h5py.File(h5, "r") as f:
            x, y = f[f"{split}/x"][()], f[f"{split}/y"][()]
    else:
        prefix = "train" if split == "train" else "t10k"
        x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(x.astype(np.float32) * (1.0 / 255.0)).reshape(-1, 1, 28, 28)
    return x, torch.from_numpy(y.astype(np.int64))


def build(model):
    if model == "mlp":  # examples/fmnist_mlp.cfg
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 256), nn.ReLU(),
            nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, 10))
    # examples/fmnist_cnn.cfg
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, stride=1, padding=2), nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 5, stride=1, padding=2), nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 1024), nn.ReLU(),
        nn.Linear(1024, 10))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0,
                    help="stop after this many training steps in all (warm-up included)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--eval", action="store_true", help="print test accuracy")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on a GPU")
    ap.add_argument("--data-dir", default=os.environ.get(
        "FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--h5", help="read Dive's HDF5 file (e.g. datasets/fmnist.h5) "
                    "instead of the IDX files")
    a = ap.parse_args()
    if a.steps and a.steps <= WARMUP:
        ap.error(f"--steps must exceed the {WARMUP} warm-up steps")

    dev, gpu = torch_setup(a)
    x, y = load(a.data_dir, "train", a.h5)
    if a.model == "mlp":
        x = x.reshape(len(x), 784)
    x, y = x.to(dev), y.to(dev)
    net = build(a.model).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    loss_fn = nn.CrossEntropyLoss()

    step = 0
    timed_samples = 0
    t0 = None
    done = False
    net.train()
    for epoch in range(a.epochs):
        perm = torch.from_numpy(np.random.default_rng(a.seed + epoch).permutation(len(x))).to(dev)
        for i in range(0, len(x) - a.batch + 1, a.batch):  # full batches only
            if step == WARMUP:
                if gpu:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            idx = perm[i:i + a.batch]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            step += 1
            if step > WARMUP:
                timed_samples += a.batch
            if a.steps and step >= a.steps:
                done = True
                break
        if done:
            break
    if t0 is None or timed_samples == 0:
        sys.exit("too few steps to time (need more than the 5 warm-up steps)")
    if gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    print(f"torch {a.model} batch {a.batch}: {timed_samples / elapsed:.1f} samples/s", flush=True)

    if a.eval:
        xt, yt = load(a.data_dir, "test", a.h5)
        if a.model == "mlp":
            xt = xt.reshape(len(xt), 784)
        xt, yt = xt.to(dev), yt.to(dev)
        net.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(xt), 1000):
                correct += (net(xt[i:i + 1000]).argmax(1) == yt[i:i + 1000]).sum().item()
        print(f"torch {a.model} test accuracy: {correct / len(xt):.4f}")


if __name__ == "__main__":
    main()
