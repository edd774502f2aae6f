"""The report of an output folder: results.csv, results.md and curves_<dataset>_<pair>.png.

Made from the result JSONs alone (after every run, and by ``--report-only``): per dataset
and pair, the chosen learning rate and val AP of every model, RS minus each stock model,
the learning-rate grids with their holdout AP, and the learning curves.
"""
import csv
import json
import os
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .layout import MASK_PAIRS, CONFIG_DIRS, DATASETS, PAIRS, SIDES, lr_tag, model_name, pair_sides
from .results import load_results, select_lr, val_metric


def fmt(x: Optional[float], digits: int = 1) -> str:
    """A number for the report ("n/a" for None)."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """The mean of the values that are not None (None if there are none)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def setting(result: dict, key: str) -> Any:
    """A setting of a result, for the report; results made before regimes existed are
    scratch ones."""
    return result.get(key, "scratch" if key == "regime" else None)


def summarize(results: Sequence[dict]) -> "OrderedDict[Tuple[str, str], Dict[str, dict]]":
    """(dataset, pair) -> side -> {"grid", "chosen", "finals"}."""
    out: "OrderedDict[Tuple[str, str], Dict[str, dict]]" = OrderedDict()
    order = {name: i for i, name in enumerate(DATASETS)}
    keys = sorted({(r["dataset"], r["pair"]) for r in results},
                  key=lambda k: (order.get(k[0], 99), k[0], PAIRS.index(k[1]) if k[1] in PAIRS else 9))
    for dataset, pair in keys:
        sides = {}
        present = {r["side"] for r in results if (r["dataset"], r["pair"]) == (dataset, pair)}
        known = pair_sides(dataset, pair) if dataset in DATASETS and pair in PAIRS else []
        for side in [s for s in SIDES if s in known or s in present]:
            mine = [r for r in results if (r["dataset"], r["pair"], r["side"]) == (dataset, pair, side)]
            grid = [r for r in mine if r["role"] == "grid"]
            if grid:  # the grid seed: the seed most grid runs have (normally the only one)
                seeds = sorted({r["seed"] for r in grid})
                grid_seed = max(seeds, key=lambda s: sum(r["seed"] == s for r in grid))
                grid = sorted([r for r in grid if r["seed"] == grid_seed], key=lambda r: r["lr"])
            chosen = select_lr(grid)
            finals = []
            if chosen is not None:
                finals = [chosen] + sorted(
                    [r for r in mine if r["role"] == "seed" and r["lr"] == chosen["lr"]
                     and r["status"] == "ok"], key=lambda r: r["seed"])
            sides[side] = dict(grid=grid, chosen=chosen, finals=finals, all=mine)
        out[(dataset, pair)] = sides
    return out


CSV_FIELDS = ["regime", "dataset", "pair", "side", "model", "config", "lr", "seed", "role", "status",
              "chosen", "max_iter", "ims_per_batch", "num_fit_images", "num_holdout_images",
              "num_val_images", "holdout_box_AP", "val_box_AP", "val_box_AP50", "val_box_AP75",
              "val_box_APs", "val_box_APm", "val_box_APl", "val_mask_AP", "val_mask_AP50",
              "val_mask_AP75", "train_seconds", "seconds_per_iter", "eval_seconds",
              "curve_eval_seconds", "wall_seconds", "final_total_loss_median20", "curve",
              "error", "result"]


def write_csv(out: str, results: Sequence[dict], chosen_names: Set[str]) -> str:
    """results.csv: one row per run (CSV_FIELDS); returns its path."""
    rows = []
    for r in sorted(results, key=lambda r: (r["dataset"], PAIRS.index(r["pair"]),
                                            SIDES.index(r["side"]), r["seed"], r["lr"])):
        row = {k: r.get(k) for k in CSV_FIELDS}
        row["regime"] = setting(r, "regime")
        row["chosen"] = r["name"] in chosen_names
        for task, prefix in (("bbox", "val_box_"), ("segm", "val_mask_")):
            for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                if prefix + metric in CSV_FIELDS:
                    row[prefix + metric] = val_metric(r, task, metric)
        row["curve"] = ";".join(f"{p['iter']}:{fmt(p['box_AP'], 2)}" + (
            f"/{fmt(p['mask_AP'], 2)}" if p.get("mask_AP") is not None else "")
            for p in r.get("curve") or [])
        row["result"] = os.path.relpath(r["result"], out) if r.get("result") else ""
        rows.append(row)
    path = os.path.join(out, "results.csv")
    os.makedirs(out, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _header(results: Sequence[dict]) -> List[str]:
    """Title, regime, machine, versions, schedule and time of all the runs."""
    regimes = sorted({setting(r, "regime") for r in results})
    max_iters = sorted({r["max_iter"] for r in results})
    pairs = {r["pair"] for r in results}
    title = ("# RS Loss vs the other ranking losses (AP Loss, aLRP Loss)" if pairs == {"ranking"}
             else "# RS-PAA vs PAA with its standard losses (focal loss + GIoU)" if pairs == {"paa"}
             else "# RS-YOLACT vs YOLACT with its standard losses" if pairs == {"yolact"}
             else "# RS-SOLOv2 vs SOLOv2 with its standard losses (focal loss + Dice)"
             if pairs == {"solov2"}
             else "# RS detectors vs detectron2's stock detectors")
    if results:
        title += (f" ({' / '.join(regimes)} regime, "
                  f"{' / '.join(str(n) for n in max_iters)} iterations)")
    md = [title, ""]
    if not results:
        return md + ["No finished runs yet.", ""]
    r0 = results[0]
    m = r0.get("machine", {})
    v = r0.get("versions", {})
    return md + [
        f"Regime: {' / '.join(regimes)} (configs in "
        + ", ".join(f"{CONFIG_DIRS.get(g, g)}/" for g in regimes) + "; backbone "
        + "; ".join(_backbone_text(b) for b in sorted(
            {json.dumps(r.get("backbone"), sort_keys=True) for r in results})) + ").",
        f"Machine: {m.get('cpu')}, {m.get('usable_cores')} usable cores, torch threads "
        f"{r0.get('torch_threads', m.get('torch_threads'))}, GPU: {m.get('gpu') or 'none'}.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"Schedule: --max-iter {' / '.join(str(n) for n in max_iters)} "
        f"iterations of batch {r0.get('ims_per_batch')}; "
        f"learning rate chosen on the holdout part ({r0['holdout_fraction']:.0%} of train, "
        f"last image ids) by box AP; val AP of the seeds at the chosen learning rate. "
        f"Training time: {sum(r.get('train_seconds', 0) for r in results) / 3600:.2f} h, "
        f"whole runs with their evaluations: "
        f"{sum(r.get('wall_seconds', 0) + r.get('curve_wall_seconds', 0) for r in results) / 3600:.2f} h "
        f"({len(results)} runs).", ""]


def _model_table(pair: str, sides: Dict[str, dict]) -> List[str]:
    """Chosen LR and val AP of every model of a pair, then RS - each stock model."""
    mask = pair in MASK_PAIRS
    head = "| model | chosen LR | box AP (mean) | box AP per seed | AP50 | AP75 |"
    rule = "|---|---:|---:|---|---:|---:|"
    if mask:
        head += " mask AP (mean) | mask AP per seed | mask AP50 | mask AP75 |"
        rule += "---:|---|---:|---:|"
    md = [head + " s/iter |", rule + "---:|"]
    means = {}
    for side, s in sides.items():
        finals = s["finals"]
        model = model_name(pair, side)
        if not finals:
            why = "(no runs yet)" if not s["grid"] else "(no LR gave a holdout AP)"
            md.append(f"| {model} | {why} |" + " |" * (9 if mask else 5))
            continue
        box = [val_metric(r, "bbox", "AP") for r in finals]
        means[side] = mean(box)
        line = (f"| {model} | {lr_tag(s['chosen']['lr'])} | **{fmt(means[side])}** | "
                + ", ".join(f"{fmt(b)} (seed {r['seed']})" for b, r in zip(box, finals))
                + f" | {fmt(mean([val_metric(r, 'bbox', 'AP50') for r in finals]))}"
                + f" | {fmt(mean([val_metric(r, 'bbox', 'AP75') for r in finals]))} |")
        if mask:
            seg = [val_metric(r, "segm", "AP") for r in finals]
            line += (f" {fmt(mean(seg))} | "
                     + ", ".join(f"{fmt(x)} (seed {r['seed']})" for x, r in zip(seg, finals))
                     + f" | {fmt(mean([val_metric(r, 'segm', 'AP50') for r in finals]))}"
                     + f" | {fmt(mean([val_metric(r, 'segm', 'AP75') for r in finals]))} |")
        line += f" {fmt(mean([r.get('seconds_per_iter') for r in finals]), 3)} |"
        md.append(line)
    deltas = [f"RS - {side}, mean val box AP: {means['rs'] - means[side]:+.1f} "
              f"({model_name(pair, 'rs')} - {model_name(pair, side)})."
              for side in sides if side != "rs" and means.get(side) is not None
              and means.get("rs") is not None]
    return md + ([""] + deltas if deltas else [])


def _grid_table(pair: str, sides: Dict[str, dict]) -> List[str]:
    """Holdout and val AP of every learning rate of the grids."""
    mask = pair in MASK_PAIRS
    md = ["", "Learning-rate grid (first seed; holdout = held-out train images):", "",
          "| model | LR | holdout box AP | val box AP | " + ("val mask AP | " if mask else "")
          + "s/iter | status |",
          "|---|---:|---:|---:|" + ("---:|" if mask else "") + "---:|---|"]
    for side, s in sides.items():
        for r in s["grid"]:
            chosen = s["chosen"] is not None and r["name"] == s["chosen"]["name"]
            md.append(f"| {model_name(pair, side)} | {lr_tag(r['lr'])}{' (chosen)' if chosen else ''} | "
                      f"{fmt(r.get('holdout_box_AP'))} | {fmt(val_metric(r, 'bbox', 'AP'))} | "
                      + (f"{fmt(val_metric(r, 'segm', 'AP'))} | " if mask else "")
                      + f"{fmt(r.get('seconds_per_iter'), 3)} | {r['status']} |")
    return md


def _curve_table(pair: str, sides: Dict[str, dict]) -> List[str]:
    """Val AP over training of the seed runs (none if no run has a curve)."""
    mask = pair in MASK_PAIRS
    curve_rows = [(side, r) for side, s in sides.items() for r in s["finals"] if r.get("curve")]
    if not curve_rows:
        return []
    its = sorted({p["iter"] for _, r in curve_rows for p in r["curve"]})
    md = ["", "Val AP over training (box" + (" / mask" if mask else "") + "):", "",
          "| model | seed | " + " | ".join(f"iter {it}" for it in its) + " |",
          "|---|---:|" + "---:|" * len(its)]
    for side, r in curve_rows:
        by_iter = {p["iter"]: p for p in r["curve"]}
        cells = [(fmt(by_iter[it]["box_AP"]) + (f" / {fmt(by_iter[it].get('mask_AP'))}" if mask else ""))
                 if it in by_iter else "" for it in its]
        md.append(f"| {model_name(pair, side)} | {r['seed']} | " + " | ".join(cells) + " |")
    return md


def write_report(out: str, quiet: bool = False) -> Dict[str, str]:
    """results.csv, results.md and curves_*.png from the result JSONs in ``out``; returns
    their paths (keys csv, md, png_<dataset>_<pair>). Prints results.md unless ``quiet``."""
    results = load_results(out)
    summary = summarize(results)
    chosen_names = {s["chosen"]["name"] for sides in summary.values() for s in sides.values()
                    if s["chosen"] is not None}
    paths = {"csv": write_csv(out, results, chosen_names)}
    md = _header(results)
    for (dataset, pair), sides in summary.items():
        mine = [r for s in sides.values() for r in s["all"]]
        schedules = " / ".join(str(n) for n in sorted({r["max_iter"] for r in mine}))
        md += [f"## {dataset}, {pair}", "", f"Schedule: {schedules} iterations.", ""]
        md += _model_table(pair, sides) + _grid_table(pair, sides) + _curve_table(pair, sides)
        md.append("")
        png = plot_curves(out, dataset, pair, sides)
        if png:
            paths[f"png_{dataset}_{pair}"] = png
            md += [f"![curves]({os.path.basename(png)})", ""]
    paths["md"] = os.path.join(out, "results.md")
    with open(paths["md"], "w") as f:
        f.write("\n".join(md) + "\n")
    if not quiet:
        print("\n".join(md))
    return paths


def _backbone_text(backbone_json: str) -> str:
    """A run's backbone initialisation (weights, norm, frozen stages) for the header."""
    b = json.loads(backbone_json)
    if not b:
        return "not recorded"
    return (f"MODEL.WEIGHTS {b['weights']!r}" + (" (from scratch)" if not b["weights"] else "")
            + f", RESNETS.NORM {b['norm']}, BACKBONE.FREEZE_AT {b['freeze_at']}")


def plot_curves(out: str, dataset: str, pair: str, sides: Dict[str, dict]) -> Optional[str]:
    """curves_<dataset>_<pair>.png: val box AP (and mask AP) over iterations."""
    finals = [(side, r) for side, s in sides.items() for r in s["finals"] if r.get("curve")]
    if not finals:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("compare_to_detectron2: matplotlib is missing, no curve plots "
              "(pip install matplotlib)", file=sys.stderr)
        return None
    tasks = [("box_AP", "val box AP")] + ([("mask_AP", "val mask AP")] if pair in MASK_PAIRS else [])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    colors = {"stock": "tab:blue", "stock_gn": "tab:green", "rs": "tab:red"}
    styles = ["-", "--", ":", "-."]
    for ax, (key, title) in zip(axes[0], tasks):
        for side, r in finals:
            seed_index = sides[side]["finals"].index(r)
            pts = [(p["iter"], p.get(key)) for p in r["curve"] if p.get(key) is not None]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    color=colors.get(side), linestyle=styles[seed_index % len(styles)],
                    label=f"{model_name(pair, side)}, lr {lr_tag(r['lr'])}, seed {r['seed']}")
        ax.set_xlabel("iteration")
        ax.set_ylabel(title)
        ax.set_title(f"{dataset}, {pair} ({setting(finals[0][1], 'regime')}): {title}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, f"curves_{dataset}_{pair}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
