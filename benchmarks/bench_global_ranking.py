"""What MODEL.RS.RANKING_POOL "global" costs: bytes sent and received per iteration, and the
time of the pooled RS Loss against the per-process one, at COCO scale, simulated with
gloo processes on the CPU.

Each process holds the ranking inputs of the RS heads of R-50-FPN RS-Mask R-CNN on 2 COCO
images at 800 x 1333 (padded to 800 x 1344): the RS-RPN's 268,569 anchors per image (P2-P6,
3 anchors per position, one objectness logit each), and the RS RoI head's 1,000 proposals
(+ ground truth) per image x 80 classes; positives as in training (RPN: 150 anchors per
image; RoI head: 200 proposals per image, one class each). Two score distributions:
"early" (every logit near every other: all negatives are relevant, the worst case) and
"late" (positives well above most negatives: the relevant negatives are those within δ of
the lowest positive). The pooled loss sends each process's positives and relevant negatives
(a float32 score and a float32 target each) to every other process.

    python benchmarks/bench_global_ranking.py --world-size 8 --images-per-process 2

Times on a CPU with fewer cores than processes are contended (all processes compute at
once): read them as an upper bound; the byte counts are exact.
"""
import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rs_detectron2.losses import pooled_rank_sort_loss  # noqa: E402
from rs_detectron2.losses.ranking_pool import gather_ranking_pool, ranking_pool_members  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine_line  # noqa: E402

RPN_ANCHORS_PER_IMAGE = 3 * sum(((800 + s - 1) // s) * ((1344 + s - 1) // s) for s in (4, 8, 16, 32, 64))
HEADS = {  # head -> (entries per image, positives per image, classes)
    "rpn": (RPN_ANCHORS_PER_IMAGE, 150, 1),
    "roi": (1000 + 7, 200, 80),
}


def head_inputs(head: str, images: int, distribution: str, seed: int):
    rows_per_image, pos_per_image, classes = HEADS[head]
    g = torch.Generator().manual_seed(seed)
    rows = rows_per_image * images
    if distribution == "early":
        logits = torch.randn(rows, classes, generator=g) * 0.05
    else:
        logits = torch.randn(rows, classes, generator=g) * 1.5 - 6.0
    targets = torch.zeros(rows, classes)
    pos_rows = torch.randperm(rows, generator=g)[: pos_per_image * images]
    pos_classes = torch.randint(0, classes, (len(pos_rows),), generator=g)
    targets[pos_rows, pos_classes] = torch.rand(len(pos_rows), generator=g).clamp(min=0.05)
    if distribution == "late":
        logits[pos_rows, pos_classes] = torch.randn(len(pos_rows), generator=g) + 1.0
    return logits, targets


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _worker(rank, world, port, images, repeats, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    rows = []
    for distribution in ("early", "late"):
        for head in HEADS:
            logits, targets = head_inputs(head, images, distribution, seed=1000 * rank + 7)
            x = logits.requires_grad_(True)
            # what each process sends: its positives and relevant negatives (the pool)
            _, pooled_targets = gather_ranking_pool(x.detach(), targets, 0.5)
            kept = torch.tensor([int(ranking_pool_members(x, targets, 0.5).sum())])
            counts = [torch.zeros_like(kept) for _ in range(world)]
            dist.all_gather(counts, kept)
            counts = [int(c) for c in counts]
            assert sum(counts) == pooled_targets.numel()

            def local():
                x.grad = None
                a, b = pooled_rank_sort_loss(x, targets, 0.5, pool="process")
                (a + b).backward()

            def pooled():
                x.grad = None
                a, b = pooled_rank_sort_loss(x, targets, 0.5, pool="global")
                (a + b).backward()

            t_local, t_pooled = _timed(local, repeats), _timed(pooled, repeats)
            rows.append({
                "distribution": distribution, "head": head, "entries_per_process": logits.numel(),
                "sent_entries": counts[rank], "received_entries": sum(counts) - counts[rank],
                # 4-byte score + 4-byte target per entry, plus the two length / minimum messages
                "bytes_sent": 8 * counts[rank] * (world - 1),
                "bytes_received": 8 * (sum(counts) - counts[rank]),
                "s_local": round(t_local, 4), "s_pooled": round(t_pooled, 4),
            })
    torch.save(rows, f"{path}.{rank}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--images-per-process", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                         "results", "bench_global_ranking_cpu.json"))
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows")
        mp.spawn(_worker, args=(args.world_size, port, args.images_per_process, args.repeats, path),
                 nprocs=args.world_size, join=True)
        per_rank = [torch.load(f"{path}.{r}") for r in range(args.world_size)]
    summary = []
    for i, row in enumerate(per_rank[0]):
        ranks = [r[i] for r in per_rank]
        summary.append({
            "distribution": row["distribution"], "head": row["head"],
            "entries_per_process": row["entries_per_process"],
            "pooled_entries": sum(r["sent_entries"] for r in ranks),
            "MB_received_per_process": round(max(r["bytes_received"] for r in ranks) / 1e6, 2),
            "MB_sent_per_process": round(max(r["bytes_sent"] for r in ranks) / 1e6, 2),
            "s_local_median_over_ranks": statistics.median(r["s_local"] for r in ranks),
            "s_pooled_median_over_ranks": statistics.median(r["s_pooled"] for r in ranks),
        })
    report = {"machine": machine_line(), "world_size": args.world_size,
              "images_per_process": args.images_per_process, "repeats": args.repeats,
              "torch_threads_per_process": 1, "rows": summary}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print(report["machine"], f"world size {args.world_size}, {args.images_per_process} images each")
    print("| scores | head | entries / process | pooled entries | MB received / process | "
          "MB sent / process | s local | s pooled |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        print(f"| {r['distribution']} | {r['head']} | {r['entries_per_process']:,} | "
              f"{r['pooled_entries']:,} | {r['MB_received_per_process']} | {r['MB_sent_per_process']} | "
              f"{r['s_local_median_over_ranks']:.3f} | {r['s_pooled_median_over_ranks']:.3f} |")


if __name__ == "__main__":
    main()
