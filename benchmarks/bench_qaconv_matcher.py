"""Throughput of the QAConv matcher (``QAConv.forward``, eval mode) against a direct einsum baseline.

Both score the same query-gallery pairs of random unit-norm Market-like maps (C=128, h=24, w=8, L=192), gallery
``--chunk`` maps per call as a test-time evaluator does. The baseline writes the same maths in the most direct
way: one float32 einsum materialising the [P, chunk, L, L] similarity tensor, max in both directions, scalar BN,
shared fc, sum, logit BN (QAConv 2.1). Reported: pairs/s, the speed ratio, the peak memory, the largest score
difference, and on CUDA the achieved TFLOP/s (2 * C * L * L FLOPs per pair).

Peak memory: on CPU each variant runs in a fresh child process and the figure is the growth of its peak resident
set (``ru_maxrss``) over its resident set before the run; on CUDA ``torch.cuda.max_memory_allocated``.

Usage:
    python benchmarks/bench_qaconv_matcher.py [--pairs 4096] [--probes 16] [--chunk 64] [--device auto]
        [--dtype auto|float32|float16|bfloat16] [--repeat 3]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qaconv.qaconv import QAConv, flops_per_pair  # noqa: E402

C, H, W = 128, 24, 8


def make_matcher(seed: int = 0) -> QAConv:
    """A v2.1 matcher in eval mode with non-trivial BN statistics and fc weights."""
    torch.manual_seed(seed)
    q = QAConv(C, H, W, version="2.1").eval()
    with torch.no_grad():
        q.bn.running_mean.fill_(0.3)
        q.bn.running_var.fill_(0.02)
        q.fc.weight.add_(0.001 * torch.randn_like(q.fc.weight))
        q.logit_bn.running_mean.fill_(0.1)
        q.logit_bn.running_var.fill_(4.0)
    return q


def make_maps(probes: int, gallery: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prob = F.normalize(torch.randn(probes, C, H, W, generator=g), dim=1)
    gal = F.normalize(torch.randn(gallery, C, H, W, generator=g), dim=1)
    return prob, gal


def naive_scores(q: QAConv, prob: torch.Tensor, gal: torch.Tensor) -> torch.Tensor:
    """The same maths as ``QAConv.forward`` (v2.1, eval) with one fp32 einsum over the whole [P, G, L, L] tensor."""
    n_p, n_g, L = prob.size(0), gal.size(0), H * W
    s = torch.einsum("pcs,gcr->pgrs", prob.float().reshape(n_p, C, L), gal.float().reshape(n_g, C, L))
    x = torch.cat((s.max(dim=2).values, s.max(dim=3).values), dim=-1)  # [P, G, 2L], probe half first
    bn, fc, lbn = q.bn, q.fc, q.logit_bn
    x = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    z = x[..., :L] @ fc.weight[0] + x[..., L:] @ fc.weight[0] + 2 * fc.bias
    return (z - lbn.running_mean) / torch.sqrt(lbn.running_var + lbn.eps) * lbn.weight + lbn.bias


def score_all(fn, prob, gal, chunk):
    """Scores (P, G) float32 on the host, gallery in chunks of ``chunk`` maps."""
    return torch.cat([fn(prob, gal[i:i + chunk]).float() for i in range(0, gal.size(0), chunk)], dim=1)


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def run_variant(name, probes, gallery, chunk, device, dtype, repeat, seed):
    """Time one variant. Returns (best seconds, peak extra memory in MiB, scores (P, G) on the CPU)."""
    torch.set_grad_enabled(False)
    dev = torch.device(device)
    q = make_matcher(seed).to(dev)
    prob, gal = make_maps(probes, gallery, seed)
    if name == "qaconv":
        prob, gal = prob.to(dev, dtype), gal.to(dev, dtype)
        fn = q
    else:
        prob, gal = prob.to(dev), gal.to(dev)
        fn = lambda p, g: naive_scores(q, p, g)  # noqa: E731

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    score_all(fn, prob[:1], gal[:chunk], chunk)  # warm-up (kernels, allocator)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kib()
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = score_all(fn, prob, gal, chunk)
        sync()
        best = min(best, time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return best, peak, out.cpu()


def _child(queue, *args):
    t, peak, out = run_variant(*args)
    queue.put((t, peak, out.numpy()))  # a NumPy array: torch would share the tensor through the dying child


def run_isolated(*args):
    """``run_variant`` in a fresh process (CPU), so that each variant's peak resident set is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, *args))
    proc.start()
    t, peak, out = queue.get()
    proc.join()
    return t, peak, torch.from_numpy(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4096, help="query-gallery pairs scored per timed run")
    parser.add_argument("--probes", type=int, default=16, help="probe maps (gallery = pairs / probes)")
    parser.add_argument("--chunk", type=int, default=64, help="gallery maps per matcher call")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="QAConv input dtype; auto = float16 on CUDA (as the original's test), float32 on CPU")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per variant (best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    dtype_name = args.dtype if args.dtype != "auto" else ("float16" if device == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    probes = min(args.probes, args.pairs)
    gallery = max(1, -(-args.pairs // probes))
    pairs = probes * gallery
    common = (probes, gallery, args.chunk, device, dtype, args.repeat, args.seed)
    runner = run_isolated if device == "cpu" else run_variant
    results = {"naive": runner("naive", *common), "qaconv": runner("qaconv", *common)}
    diff = (results["naive"][2] - results["qaconv"][2]).abs().max().item()
    flop = flops_per_pair(C, H * W)
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"QAConv matcher, C={C}, h={H}, w={W} (L={H * W}); {probes} probes x {gallery} gallery = {pairs} pairs, "
          f"gallery chunk {args.chunk}; {where}; best of {args.repeat}")
    head = f"{'variant':<26} {'dtype':>9} {'pairs/s':>10} {'ratio':>6} {'peak MiB':>9} {'TFLOP/s':>8}"
    print(head + "\n" + "-" * len(head))
    for name, label, dt in (("naive", "naive einsum [P,G,L,L]", "float32"), ("qaconv", "QAConv.forward", dtype_name)):
        t, peak, _ = results[name]
        rate = pairs / t
        ratio = rate / (pairs / results["naive"][0])
        tflops = f"{rate * flop / 1e12:8.2f}" if device == "cuda" else f"{'-':>8}"
        print(f"{label:<26} {dt:>9} {rate:>10.0f} {ratio:>5.2f}x {peak:>9.0f} {tflops}")
    print(f"max |score difference| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
