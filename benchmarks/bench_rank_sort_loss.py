"""Benchmark: our RS Loss against the published per-positive loop, the Bucketed RS Loss and
a sigmoid BCE pass.

Two suites, both forward + backward on the same inputs in the same process:

``loop``: ours against a loop that works the way the published code does (a Python loop
over the positives in ascending score order, vectorised over the relevant negatives, in
float32, as in the paper's code). Each case runs in its own subprocess so that its extra
peak memory can be read cleanly: on CPU the rise of the process's peak resident memory
over what it held before the call (inputs already allocated), on CUDA the rise of
``torch.cuda.max_memory_allocated``. Both include the returned gradient.

``versus``: ours, the Bucketed RS Loss (``benchmarks/bucketed_rs_loss.py``, written from
its paper; exact only at δ = 0) and one pass of ``F.binary_cross_entropy_with_logits``
over the same logits, called in turn in every round of one process, at every size of
``--grid`` (positives x logits, early-training scores), in every thread mode of
``--modes``: ``t1`` / ``t2`` (1 / 2 threads), ``t1_over`` / ``t2_over`` (the same while
two background processes started and stopped by this script keep the cores busy with
torch work on 2 threads each). Times are medians over rounds; the ratios RS / Bucketed
and RS / BCE are medians of the per-round ratios (measured side by side, so they hold up
when the machine's load drifts). Each (mode, size) runs in its own subprocess; results
go to ``--output`` (JSON, and a markdown table next to it) after every case, and
``--resume`` keeps the cases already there.

    python benchmarks/bench_rank_sort_loss.py                  # both suites (CPU)
    python benchmarks/bench_rank_sort_loss.py --suite versus   # RS vs Bucketed vs BCE
    python benchmarks/bench_rank_sort_loss.py --suite versus --resume
    python benchmarks/bench_rank_sort_loss.py --suite loop --sizes 100:100000 --repeats 5
    python benchmarks/bench_rank_sort_loss.py --quick --output /tmp/rs.json   # smoke test
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
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rs_detectron2.losses import rank_sort_loss  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bucketed_rs_loss import bucketed_rank_sort_loss  # noqa: E402
from machine import machine_info, machine_line, versions  # noqa: E402  (benchmarks/machine.py)

DEFAULT_SIZES = "100:100000,1000:2000000,2000:8000000"
DISTRIBUTIONS = ("early", "late")
# The versus suite: positives x logits, thread modes, and its output.
VERSUS_GRID = ",".join(f"{p}:{n}" for n in ("1e5", "1e6", "8e6") for p in (200, 2000, 20000))
VERSUS_MODES = "t1,t2,t1_over,t2_over"
QUICK_GRID = "20:10000,200:100000"
QUICK_MODES = "t1,t2_over"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "bench_rank_sort_loss_cpu.json")
# What keeps the cores busy in the *_over modes: processes x threads each.
BACKGROUND_PROCESSES, BACKGROUND_THREADS = 2, 2
BACKGROUND_WORK = (
    "import torch\n"
    f"torch.set_num_threads({BACKGROUND_THREADS})\n"
    "a = torch.randn(512, 512); b = torch.randn(1 << 21)\n"
    "while True:\n"
    "    for _ in range(4):\n"
    "        a = torch.tanh(a @ a * 1e-2)\n"
    "    b = torch.sin(b * 1.0001 + 0.5)\n"
)


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


# ---------------------------------------------------------------- versus suite


def _rs_pass(x, targets, delta):
    loss_rank, loss_sort = rank_sort_loss(x, targets, delta)
    (loss_rank + loss_sort).backward()
    return loss_rank, loss_sort


def _bucketed_pass(x, targets, delta):
    loss_rank, loss_sort = bucketed_rank_sort_loss(x, targets, delta)
    (loss_rank + loss_sort).backward()
    return loss_rank, loss_sort


def _bce_pass(x, bce_targets):
    loss = F.binary_cross_entropy_with_logits(x, bce_targets)
    loss.backward()
    return loss


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:4]  # 1, 5, 15 min, running/total
    except OSError:  # pragma: no cover (not Linux)
        return None


def run_versus_case(mode, num_pos, num_logits, seed, delta, device, rounds, budget_s):
    """One (mode, size) of the versus suite, in this process: RS, Bucketed and BCE in turn
    every round (the order rotates), after one warm-up round."""
    logits, targets = make_inputs(num_pos, num_logits, "early", seed, device)
    bce_targets = (targets > 0).to(logits.dtype)  # what a sigmoid head would train on
    passes = {
        "rs": lambda x: _rs_pass(x, targets, delta),
        "bucketed": lambda x: _bucketed_pass(x, targets, delta),
        "bce": lambda x: _bce_pass(x, bce_targets),
    }
    names = list(passes)
    load_start = _loadavg()

    def one_round(order):
        out = {}
        for name in order:
            x = logits.detach().requires_grad_()
            _sync(device)
            start = time.perf_counter()
            passes[name](x)
            _sync(device)
            out[name] = time.perf_counter() - start
        return out

    warm = one_round(names)
    planned = max(min(3, rounds), min(rounds, int(budget_s / max(sum(warm.values()), 1e-9))))
    times = {name: [] for name in names}
    for r in range(planned):
        got = one_round(names[r % 3:] + names[: r % 3])
        for name in names:
            times[name].append(got[name])
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731

    # Values for the record, and at δ = 0 (where Bucketed is exact) a cross-check.
    x = logits.detach().requires_grad_()
    ours = _rs_pass(x, targets, delta)
    theirs = _bucketed_pass(logits.detach().requires_grad_(), targets, delta)
    check = None
    if sum(warm.values()) < 2.0:
        xa, xb = logits.detach().requires_grad_(), logits.detach().requires_grad_()
        a, b = _rs_pass(xa, targets, 0.0), _bucketed_pass(xb, targets, 0.0)
        check = dict(
            max_abs_loss_diff=max(abs(float(a[0].detach()) - float(b[0].detach())),
                                  abs(float(a[1].detach()) - float(b[1].detach()))),
            max_abs_grad_diff=float((xa.grad - xb.grad).abs().max()),
        )
    threshold = float(logits[targets > 0].min()) - delta
    return dict(
        mode=mode,
        threads=torch.get_num_threads(),
        oversubscribed=mode.endswith("_over"),
        num_pos=num_pos,
        num_logits=num_logits,
        distribution="early",
        seed=seed,
        delta=delta,
        rounds=planned,
        relevant_negatives=int(((targets == 0) & (logits >= threshold)).sum()),
        rs_ms=1e3 * statistics.median(times["rs"]),
        bucketed_ms=1e3 * statistics.median(times["bucketed"]),
        bce_ms=1e3 * statistics.median(times["bce"]),
        rs_over_bucketed=ratio("rs", "bucketed"),
        rs_over_bce=ratio("rs", "bce"),
        rs_losses=[float(v.detach()) for v in ours],
        bucketed_losses=[float(v.detach()) for v in theirs],
        delta0_check=check,
        loadavg_start=load_start,
        loadavg_end=_loadavg(),
    )


def _mode_threads(mode):
    return {"t1": 1, "t2": 2, "t1_over": 1, "t2_over": 2}.get(mode)


def _start_background(count=BACKGROUND_PROCESSES):
    env = dict(os.environ, OMP_NUM_THREADS=str(BACKGROUND_THREADS))
    procs = [subprocess.Popen([sys.executable, "-c", BACKGROUND_WORK], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(count)]
    time.sleep(2.0)  # let them start their work
    return procs


def _stop_background(procs):
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


def _case_key(r):
    return (r["mode"], r["num_pos"], r["num_logits"], r["seed"], r["delta"])


def versus_markdown(report):
    """Markdown: one table per mode, then the ratios of every mode side by side."""
    results = report["results"]
    modes = [m for m in report["settings"]["modes"] if any(r["mode"] == m for r in results)]
    names = dict(t1="1 thread", t2="2 threads", t1_over="1 thread, over-subscribed",
                 t2_over="2 threads, over-subscribed")
    lines = [f"Machine: {report['machine_line']}.", ""]
    s = report["settings"]
    lines.append(
        f"Forward + backward, δ = {s['delta']}, early-training scores, float32, seeds from "
        f"{s['seed']}; times are medians over rounds, ratios medians of per-round ratios "
        f"(RS, Bucketed and BCE called in turn in one process). Over-subscribed: "
        f"{s['background']}." + (f" Note: {s['note']}" if s.get("note") else ""))
    lines.append("")
    for mode in modes:
        lines += [f"**{names.get(mode, mode)}**", "",
                  "| positives | logits | RS (ms) | Bucketed (ms) | BCE (ms) | RS / Bucketed | RS / BCE |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted((r for r in results if r["mode"] == mode),
                        key=lambda r: (r["num_logits"], r["num_pos"])):
            lines.append(
                f"| {r['num_pos']:,} | {r['num_logits']:.0e} | {r['rs_ms']:.1f} | "
                f"{r['bucketed_ms']:.1f} | {r['bce_ms']:.2f} | {r['rs_over_bucketed']:.3f} | "
                f"{r['rs_over_bce']:.2f} |")
        lines.append("")
    by_key = {(r["mode"], r["num_pos"], r["num_logits"]): r for r in results}
    cells = sorted({(r["num_logits"], r["num_pos"]) for r in results})
    header = "| positives | logits | " + " | ".join(
        f"RS / Bucketed, {m} | RS / BCE, {m}" for m in modes) + " |"
    lines += ["**Ratios side by side**", "", header,
              "|---:|---:|" + "---:|" * (2 * len(modes))]
    for n, p in cells:
        row = [f"{p:,}", f"{n:.0e}"]
        for m in modes:
            r = by_key.get((m, p, n))
            row += [f"{r['rs_over_bucketed']:.3f}", f"{r['rs_over_bce']:.2f}"] if r else ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main_versus(args):
    grid = args.grid or (QUICK_GRID if args.quick else VERSUS_GRID)
    modes = (args.modes or (QUICK_MODES if args.quick else VERSUS_MODES)).split(",")
    rounds = args.rounds if args.rounds else (2 if args.quick else 5)
    budget = args.case_budget if args.case_budget else (5.0 if args.quick else 60.0)
    if args.device != "cpu":
        modes = [args.device]
    sizes = [tuple(int(float(v)) for v in pair.split(":")) for pair in grid.split(",")]
    output = args.output if args.output else (None if args.quick else RESULTS)
    info, vers = machine_info(), versions(("torch", "numpy"))
    line = (f"{info['cpu']}, {info['cpu_count']} cores, torch {vers['torch']}, "
            f"Python {vers['python']}" + (f", GPU {info['gpu']}" if args.device != "cpu" else "")
            + "; threads per mode as stated")
    report = dict(
        machine_line=line,
        machine=info,
        versions=vers,
        settings=dict(grid=grid, modes=modes, rounds=rounds, case_budget_s=budget,
                      delta=args.delta, seed=args.seed, distribution="early",
                      device=args.device, note=args.note,
                      background=f"{BACKGROUND_PROCESSES} processes x {BACKGROUND_THREADS} "
                                 "threads of torch work (matmul, tanh, sin)"),
        results=[],
    )
    done = {}
    if args.resume and output and os.path.exists(output):
        with open(output) as f:
            for r in json.load(f).get("results", []):
                done[_case_key(r)] = r
    print(f"machine: {report['machine_line']}; versus suite, delta {args.delta}, early scores")
    print(f"{'mode':>8} {'P':>6} {'logits':>8} {'RS ms':>9} {'Bucketed ms':>12} {'BCE ms':>8} "
          f"{'RS/Buck':>8} {'RS/BCE':>7} {'rounds':>6}  load")

    def save():
        if output:
            os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
            with open(output, "w") as f:
                json.dump(report, f, indent=1)
            with open(os.path.splitext(output)[0] + ".md", "w") as f:
                f.write(versus_markdown(report))

    for mode in modes:
        background = []
        try:
            for k, (num_pos, num_logits) in enumerate(sizes):
                seed = args.seed + k
                key = (mode, num_pos, num_logits, seed, args.delta)
                if key in done:
                    r = done[key]
                else:
                    if mode.endswith("_over") and not background:
                        background = _start_background()
                    env = dict(os.environ)
                    threads = _mode_threads(mode)
                    if threads:
                        env["OMP_NUM_THREADS"] = str(threads)
                    cmd = [sys.executable, os.path.abspath(__file__), "--device", args.device,
                           "--delta", str(args.delta), "--rounds", str(rounds),
                           "--case-budget", str(budget),
                           "--versus-case", f"{mode}:{num_pos}:{num_logits}:{seed}"]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                         env=env).stdout
                    r = json.loads(out.strip().splitlines()[-1])
                report["results"].append(r)
                save()
                print(f"{r['mode']:>8} {r['num_pos']:>6} {r['num_logits']:>8.0e} {r['rs_ms']:>9.1f} "
                      f"{r['bucketed_ms']:>12.1f} {r['bce_ms']:>8.2f} {r['rs_over_bucketed']:>8.3f} "
                      f"{r['rs_over_bce']:>7.2f} {r['rounds']:>6}  {r['loadavg_start']}", flush=True)
        finally:
            _stop_background(background)
    return report


# ---------------------------------------------------------------- loop suite


def main_loop(args):
    sizes = "20:2000,100:20000" if args.quick and not args.sizes else (args.sizes or DEFAULT_SIZES)
    print(f"machine: {machine_line(args.device)}; device {args.device}")
    print(f"forward + backward, delta 0.5; ours: median of {args.repeats}, loop: median of "
          f"{args.loop_repeats}")
    header = (
        f"{'P':>6} {'entries':>9} {'dist':>6} {'seed':>4} {'rel.neg':>9} {'loop s':>9} "
        f"{'ours s':>8} {'speedup':>8} {'extra MB':>9} {'B/entry':>8} {'|dloss|':>8} {'|dgrad|':>8}"
    )
    print(header)
    results = []
    for k, pair in enumerate(sizes.split(",")):
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
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=("all", "loop", "versus"), default="all")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    # loop suite
    parser.add_argument("--sizes", help="loop suite: P:M pairs, comma separated")
    parser.add_argument("--distributions", default=",".join(DISTRIBUTIONS))
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (median)")
    parser.add_argument("--loop-repeats", type=int, default=1, help="runs of the loop (median)")
    parser.add_argument("--json", help="loop suite: also write its results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON out
    # versus suite
    parser.add_argument("--grid", help=f"versus suite: P:M pairs (default {VERSUS_GRID})")
    parser.add_argument("--modes", help=f"versus suite: of t1,t2,t1_over,t2_over "
                                        f"(default {VERSUS_MODES})")
    parser.add_argument("--rounds", type=int, help="versus suite: rounds per case (default 5)")
    parser.add_argument("--case-budget", type=float,
                        help="versus suite: seconds per case; slow cases get fewer rounds, "
                             "never under 3 (default 60)")
    parser.add_argument("--delta", type=float, default=0.5)
    parser.add_argument("--output", help=f"versus suite: JSON results, and .md next to it "
                                         f"(default {os.path.relpath(RESULTS)}; none with --quick)")
    parser.add_argument("--resume", action="store_true", help="versus suite: keep finished cases")
    parser.add_argument("--note", help="versus suite: recorded with the results (e.g. contention)")
    parser.add_argument("--versus-case", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()

    if args.case:
        num_pos, num_entries, distribution, seed = args.case.split(":")
        result = run_case(
            int(num_pos), int(num_entries), distribution, int(seed), args.device,
            args.repeats, args.loop_repeats,
        )
        print(json.dumps(result))
        return
    if args.versus_case:
        mode, num_pos, num_logits, seed = args.versus_case.split(":")
        threads = _mode_threads(mode)
        if threads:
            torch.set_num_threads(threads)
        result = run_versus_case(mode, int(num_pos), int(num_logits), int(seed), args.delta,
                                 args.device, args.rounds or 5, args.case_budget or 60.0)
        print(json.dumps(result))
        return
    if args.suite in ("all", "loop"):
        main_loop(args)
    if args.suite in ("all", "versus"):
        main_versus(args)


if __name__ == "__main__":
    main()
