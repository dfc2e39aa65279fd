"""Forward + backward cost of ProLIP's PPCL against the SigLIP loss on the same features (CPU, one process).

Cases, all on the same random features (B pairs, D dims, gradients w.r.t. means, log-variances, scale, bias):

- ``prolip``: ``probclip.losses.ProLIPLoss`` with its defaults (PPCL + inclusion + VIB, no masked views);
- ``ppcl``: the same with inclusion and VIB weights 0 (PPCL alone);
- ``siglip``: ``probclip.losses.SigLIPLoss`` (sigmoid loss on the means);
- ``siglip_open_clip``: ``open_clip.loss.SigLipLoss``, the usual dense formulation (baseline);
- ``ppcl_naive``: PPCL with the uncertainty term built as a ``[B, B, D]`` tensor, as the reference does
  (only where that tensor fits in the available memory).

Time: median wall time of ``--repeats`` runs in this process, the cases interleaved round-robin so that
machine noise falls on all of them alike. Peak memory: measured in one child process running every case
in turn: the increase of the resident set during one forward + backward, read from ``VmHWM`` after
resetting it (``/proc/self/clear_refs``), relative to the resident set just before (features allocated,
gradients freed; the gradients of the features count in the peak). The child runs with
``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed tensor memory to the system at once and the
resident set follows the live tensors (that setting would slow the timed runs, hence two processes).
Linux only.

Usage: ``python benchmarks/bench_loss.py [--sizes 2048 4096] [--dim 768] [--repeats 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from probclip import ProbEmbedding
from probclip.losses import ProLIPLoss, SigLIPLoss


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key} line")


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def _release_free_memory() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_extra_bytes(step) -> int:
    """Peak increase of the resident set (bytes) while ``step()`` runs."""
    _release_free_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _proc_status_bytes("VmRSS")
    step()
    return _proc_status_bytes("VmHWM") - before


def make_features(batch: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for side in ("image", "text"):
        feats[f"{side}_mean"] = F.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_()
        feats[f"{side}_logvar"] = (-8 + 4 * torch.rand(batch, dim, generator=g)).requires_grad_()
    feats["logit_scale"] = torch.tensor(10.0).log().requires_grad_()
    feats["logit_bias"] = torch.tensor(-10.0).requires_grad_()
    return feats


def naive_ppcl(f) -> torch.Tensor:
    """PPCL with the pairwise uncertainty sum materialised as [B, B, D] (the reference's formulation)."""
    mi, mt = f["image_mean"], f["text_mean"]
    var_sum = (f["image_logvar"].exp()[:, None, :] + f["text_logvar"].exp()[None, :, :]).sum(-1)
    logits = f["logit_scale"].exp() * (mi @ mt.T - var_sum / 2) + f["logit_bias"]
    labels = 2 * torch.eye(len(mi)) - 1
    return -F.logsigmoid(labels * logits).sum() / len(mi)


def build_cases(batch: int, dim: int):
    from open_clip.loss import SigLipLoss

    prolip, ppcl_only = ProLIPLoss(), ProLIPLoss(inclusion_alpha=0, inclusion_alpha_occ=0, vib_beta=0)
    siglip, open_clip_siglip = SigLIPLoss(), SigLipLoss()

    def emb(f, side):
        return ProbEmbedding(f[f"{side}_mean"], f[f"{side}_logvar"])

    cases = {
        "prolip": lambda f: prolip(emb(f, "image"), emb(f, "text"), f["logit_scale"], f["logit_bias"])["loss"],
        "ppcl": lambda f: ppcl_only(emb(f, "image"), emb(f, "text"), f["logit_scale"], f["logit_bias"])["loss"],
        "siglip": lambda f: siglip(emb(f, "image"), emb(f, "text"), f["logit_scale"], f["logit_bias"])["loss"],
        "siglip_open_clip": lambda f: open_clip_siglip(
            f["image_mean"], f["text_mean"], f["logit_scale"].exp(), f["logit_bias"]
        ),
    }
    naive_tensor = batch * batch * dim * 4
    if 1.5 * naive_tensor < _available_bytes():
        cases["ppcl_naive"] = naive_ppcl
    else:
        print(f"# B={batch}: ppcl_naive skipped: its [B, B, D] tensor alone needs {naive_tensor / 2**30:.1f} GiB, "
              f"{_available_bytes() / 2**30:.1f} GiB available", flush=True)
    return cases


def _step(fn, feats):
    for t in feats.values():
        t.grad = None
    fn(feats).backward()


def measure_peaks(batch: int, dim: int) -> dict:
    """``{case: peak extra bytes}``; call in a process started with ``MALLOC_MMAP_THRESHOLD_`` set."""
    feats = make_features(batch, dim)
    peaks = {}
    for name, fn in build_cases(batch, dim).items():
        _step(fn, feats)  # warm-up
        peaks[name] = peak_extra_bytes(lambda: _step(fn, feats))
    return peaks


def measure_times(batch: int, dim: int, repeats: int) -> dict:
    """``{case: median seconds}`` of forward + backward, cases interleaved."""
    feats = make_features(batch, dim)
    cases = build_cases(batch, dim)
    times = {name: [] for name in cases}
    for fn in cases.values():
        _step(fn, feats)  # warm-up
    for _ in range(repeats):
        for name, fn in cases.items():
            for t in feats.values():
                t.grad = None
            gc.collect()
            start = time.perf_counter()
            _step(fn, feats)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _peaks_in_child(sizes, dim) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", "--dim", str(dim), "--threads",
           str(torch.get_num_threads()), "--sizes", *map(str, sizes)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    sys.stdout.write("".join(line + "\n" for line in done.stdout.splitlines() if line.startswith("#")))
    return {int(b): peaks for b, peaks in json.loads(done.stdout.splitlines()[-1]).items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="batch sizes B")
    parser.add_argument("--dim", type=int, default=768, help="embedding size D")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: steadier "
                        "timings on a shared machine)")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps({b: measure_peaks(b, args.dim) for b in args.sizes}))
        return 0
    peaks = _peaks_in_child(args.sizes, args.dim)
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, D={args.dim}, time: median of {args.repeats}"
    )
    print(
        "| B | case | peak extra memory (MiB) | x siglip | x siglip_open_clip "
        "| time (ms) | x siglip | x siglip_open_clip |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.sizes:
        times = measure_times(batch, args.dim, args.repeats)
        mem = peaks[batch]
        for name, t in times.items():
            m = mem.get(name)
            mem_cols = (
                f"{m / 2**20:.0f} | {m / mem['siglip']:.2f} | {m / mem['siglip_open_clip']:.2f}" if m else "n/a | | "
            )
            print(
                f"| {batch} | {name} | {mem_cols} | {1000 * t:.0f} | {t / times['siglip']:.2f} | "
                f"{t / times['siglip_open_clip']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
