"""Benchmark: our RS Loss against a loop that works the way the published one does.

Both run forward + backward on the same inputs in the same run. The loop is a Python
loop over the positives in ascending score order, vectorised over the relevant
negatives, in float32, as in the paper's code. Each case runs in its own subprocess so
that its extra peak memory can be read cleanly: on CPU the rise of the process's peak
resident memory over what it held before the call (inputs already allocated), on CUDA
the rise of ``torch.cuda.max_memory_allocated``. Both include the returned gradient.

    python benchmarks/bench_rank_sort_loss.py                # CPU, all sizes
    python benchmarks/bench_rank_sort_loss.py --device cuda
    python benchmarks/bench_rank_sort_loss.py --sizes 100:100000 --repeats 5
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rs_detectron2.losses import rank_sort_loss  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine_line  # noqa: E402  (benchmarks/machine.py)

DEFAULT_SIZES = "100:100000,1000:2000000,2000:8000000"
DISTRIBUTIONS = ("early", "late")


class LoopRankSort(torch.autograd.Function):
    """RS Loss as the published code computes it: one Python iteration per positive."""

    @staticmethod
    def forward(ctx, logits, targets, delta=0.5, eps=1e-10):
        grad = torch.zeros_like(logits)
        pos = targets > 0
        pos_logits, pos_targets = logits[pos], targets[pos]
        num_pos = len(pos_logits)
        threshold = torch.min(pos_logits) - delta
        neg = (targets == 0) & (logits >= threshold)
        neg_logits = logits[neg]
        neg_grad = torch.zeros_like(neg_logits)
        pos_grad = torch.zeros_like(pos_logits)
        rank_err = torch.zeros_like(pos_logits)
        sort_err = torch.zeros_like(pos_logits)
        for i in torch.argsort(pos_logits):
            h_pos = torch.clamp((pos_logits - pos_logits[i]) / (2 * delta) + 0.5, 0, 1)
            h_neg = torch.clamp((neg_logits - pos_logits[i]) / (2 * delta) + 0.5, 0, 1)
            rank_pos = h_pos.sum()
            fp = h_neg.sum()
            rank_err[i] = fp / (rank_pos + fp)
            current = (h_pos * (1 - pos_targets)).sum() / rank_pos
            above = pos_targets >= pos_targets[i]
            h_target = above * h_pos
            target = (h_target * (1 - pos_targets)).sum() / h_target.sum()
            sort_err[i] = current - target
            if fp > eps:
                pos_grad[i] -= rank_err[i]
                neg_grad += h_neg * (rank_err[i] / fp)
            h_mis = (~above) * h_pos
            denom = h_mis.sum()
            if denom > eps:
                pos_grad[i] -= sort_err[i]
                pos_grad += h_mis * (sort_err[i] / denom)
        grad[pos] = pos_grad / num_pos
        grad[neg] = neg_grad / num_pos
        ctx.save_for_backward(grad)
        return rank_err.mean(), sort_err.mean()

    @staticmethod
    def backward(ctx, grad_rank, grad_sort):
        (grad,) = ctx.saved_tensors
        return grad * grad_rank, None, None, None


def make_inputs(num_pos, num_entries, distribution, seed, device):
    """Scores and IoU targets: 'early' has positives among the negatives, 'late' well apart."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.zeros(num_entries)
    pos = torch.randperm(num_entries, generator=gen)[:num_pos]
    targets[pos] = 0.5 + 0.5 * torch.rand(num_pos, generator=gen)
    if distribution == "early":
        logits = torch.randn(num_entries, generator=gen)
        logits[pos] += 0.5 * torch.rand(num_pos, generator=gen)
    else:
        logits = -6.0 + 1.5 * torch.randn(num_entries, generator=gen)
        logits[pos] = 2.0 + torch.randn(num_pos, generator=gen)
    return logits.to(device), targets.to(device)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_forward_backward(fn, logits, targets, device, repeats):
    times, result = [], None
    for _ in range(repeats):
        x = logits.detach().clone().requires_grad_()
        _sync(device)
        start = time.perf_counter()
        loss_rank, loss_sort = fn(x, targets)
        (loss_rank + loss_sort).backward()
        _sync(device)
        times.append(time.perf_counter() - start)
        result = (float(loss_rank.detach()), float(loss_sort.detach()), x.grad)
    return statistics.median(times), result


def peak_extra_bytes(logits, targets, device):
    """Extra peak memory of one forward + backward of our loss."""
    x = logits.detach().clone().requires_grad_()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss_rank, loss_sort = rank_sort_loss(x, targets)
        (loss_rank + loss_sort).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss_rank, loss_sort = rank_sort_loss(x, targets)
    (loss_rank + loss_sort).backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


def run_case(num_pos, num_entries, distribution, seed, device, repeats, loop_repeats):
    # Warm up on a tiny input so one-time library start-up is not counted as memory.
    time_forward_backward(rank_sort_loss, *make_inputs(10, 1000, distribution, seed, device), device, 1)
    logits, targets = make_inputs(num_pos, num_entries, distribution, seed, device)
    # Memory first, while the process's peak is still the inputs' (CPU peak RSS only rises).
    extra = peak_extra_bytes(logits, targets, device)
    ours_t, ours = time_forward_backward(rank_sort_loss, logits, targets, device, repeats)
    loop_t, loop = time_forward_backward(LoopRankSort.apply, logits, targets, device, loop_repeats)
    rel_negatives = int(((targets == 0) & (logits >= logits[targets > 0].min() - 0.5)).sum())
    return dict(
        num_pos=num_pos,
        num_entries=num_entries,
        distribution=distribution,
        seed=seed,
        relevant_negatives=rel_negatives,
        ours_s=ours_t,
        loop_s=loop_t,
        speedup=loop_t / ours_t,
        extra_bytes=extra,
        extra_bytes_per_entry=extra / num_entries,
        max_abs_loss_diff=max(abs(ours[0] - loop[0]), abs(ours[1] - loop[1])),
        max_abs_grad_diff=float((ours[2] - loop[2]).abs().max()),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="P:M pairs, comma separated")
    parser.add_argument("--distributions", default=",".join(DISTRIBUTIONS))
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (median)")
    parser.add_argument("--loop-repeats", type=int, default=1, help="runs of the loop (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON out
    args = parser.parse_args()

    if args.case:
        num_pos, num_entries, distribution, seed = args.case.split(":")
        result = run_case(
            int(num_pos), int(num_entries), distribution, int(seed), args.device,
            args.repeats, args.loop_repeats,
        )
        print(json.dumps(result))
        return

    print(f"machine: {machine_line(args.device)}; device {args.device}")
    print(f"forward + backward, delta 0.5; ours: median of {args.repeats}, loop: median of "
          f"{args.loop_repeats}")
    header = (
        f"{'P':>6} {'entries':>9} {'dist':>6} {'seed':>4} {'rel.neg':>9} {'loop s':>9} "
        f"{'ours s':>8} {'speedup':>8} {'extra MB':>9} {'B/entry':>8} {'|dloss|':>8} {'|dgrad|':>8}"
    )
    print(header)
    results = []
    for k, pair in enumerate(args.sizes.split(",")):
        num_pos, num_entries = (int(float(v)) for v in pair.split(":"))
        for d, distribution in enumerate(args.distributions.split(",")):
            seed = args.seed + 10 * k + d
            cmd = [
                sys.executable, os.path.abspath(__file__), "--device", args.device,
                "--repeats", str(args.repeats), "--loop-repeats", str(args.loop_repeats),
                "--case", f"{num_pos}:{num_entries}:{distribution}:{seed}",
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results.append(r)
            print(
                f"{r['num_pos']:>6} {r['num_entries']:>9.0e} {distribution:>6} {seed:>4} "
                f"{r['relevant_negatives']:>9} {r['loop_s']:>9.3f} {r['ours_s']:>8.4f} "
                f"{r['speedup']:>7.1f}x {r['extra_bytes'] / 2**20:>9.1f} "
                f"{r['extra_bytes_per_entry']:>8.1f} {r['max_abs_loss_diff']:>8.1e} "
                f"{r['max_abs_grad_diff']:>8.1e}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine_line(args.device), results=results), f, indent=1)


if __name__ == "__main__":
    main()
