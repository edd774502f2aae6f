#!/usr/bin/env python
"""One table of every head-to-head in several output folders of compare_to_detectron2.py.

Each folder holds one regime and one schedule; this puts them side by side, one row per
model: the learning rate chosen on the holdout (marked "edge" when it is the smallest or
largest of the model's grid, i.e. the optimum is not bracketed), the mean val box AP of
its seeds (and each seed), the mean mask AP, and RS minus the model. Usage::

    python benchmarks/summarize_comparisons.py benchmarks/results/compare_to_detectron2_scratch \\
        benchmarks/results/compare_to_detectron2_pretrained ...
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare.layout import MODEL_NAMES  # noqa: E402
from compare.report import fmt, mean, summarize  # noqa: E402
from compare.results import load_results, val_metric  # noqa: E402


def _row_values(side: dict):
    finals = side["finals"]
    box = [val_metric(r, "bbox", "AP") for r in finals]
    mask = [val_metric(r, "segm", "AP") for r in finals]
    return finals, box, mask


def summary_table(folders: Sequence[str]) -> str:
    """The markdown table of every model of every (dataset, pair) in ``folders``."""
    lines = ["| regime | iterations | dataset | pair | model | chosen lr (grid) | val box AP, mean (seeds) | mask AP | RS − model (box) |",
             "|---|---:|---|---|---|---|---|---:|---:|"]
    for folder in folders:
        results = load_results(folder)
        if not results:
            continue
        regime = results[0].get("regime", "scratch")
        max_iter = results[0].get("max_iter")
        for (dataset, pair), sides in summarize(results).items():
            rs_box: Optional[float] = None
            if "rs" in sides and sides["rs"]["finals"]:
                rs_box = mean(_row_values(sides["rs"])[1])
            for side_name, side in sides.items():
                grid_lrs = [r["lr"] for r in side["grid"]]
                chosen = side["chosen"]
                finals, box, mask = _row_values(side)
                if chosen is None:
                    lr = "(grid not done)"
                else:
                    edge = " edge" if chosen["lr"] in (min(grid_lrs), max(grid_lrs)) else ""
                    lr = f"{chosen['lr']:g}{edge} ({' / '.join(f'{x:g}' for x in grid_lrs)})"
                seeds = ", ".join(fmt(b) for b in box) or "–"
                box_mean = mean(box)
                diff = ("" if side_name == "rs" or rs_box is None or box_mean is None
                        else f"{rs_box - box_mean:+.1f}")
                n = f" (1 seed)" if len(finals) == 1 else ""
                lines.append(
                    f"| {regime} | {max_iter} | {dataset} | {pair} | "
                    f"{MODEL_NAMES.get((pair, side_name), side_name)} | {lr} | "
                    f"**{fmt(box_mean)}** ({seeds}){n} | {fmt(mean(mask))} | {diff} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", help="output folders of compare_to_detectron2.py")
    print(summary_table(parser.parse_args(argv).folders))


if __name__ == "__main__":
    main()
