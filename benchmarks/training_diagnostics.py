#!/usr/bin/env python
"""Train any config with :class:`RSTrainer` and record, every ``--probe-period`` iterations,
what the losses do to the network: the gradient norm each loss sends into the backbone
(its gradient w.r.t. the FPN outputs), the gradient norm each loss puts on the RoI box
head's layers, and the fraction of the box head's FC ReLU units that are dead (never
active over the RoIs of the current batch). The run itself is the normal training of the
config (same data, schedule, clipping and evaluation): probing only reads gradients.

    python benchmarks/training_diagnostics.py --config-file configs/Synthetic/rs_faster_rcnn_R_18_FPN.yaml \\
        --probe-period 50 --out /tmp/diag.jsonl SOLVER.BASE_LR 0.01

Each probe is one JSON line: ``{"iteration", "backbone_grad": {loss: norm},
"head_grad": {loss: {layer: norm}}, "dead_relu": {fc1: frac, fc2: frac},
"mean_act": {fc1, fc2}}``. The balancing coefficients are in the run's metrics.json.
Used for docs/rs_vs_stock.md.
"""
import json
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.engine.train_loop import SimpleTrainer  # noqa: E402
from rs_detectron2.engine import RSTrainer, default_rs_setup  # noqa: E402


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


class ProbingTrainer(RSTrainer):
    """RSTrainer whose training step also probes per-loss gradients every few iterations."""

    probe_period = 50
    probe_out = None

    def __init__(self, cfg):
        super().__init__(cfg)
        model = _unwrap(self.model)
        self._features: Dict[str, torch.Tensor] = {}
        self._acts: Dict[str, torch.Tensor] = {}
        model.backbone.register_forward_hook(lambda m, i, o: self._features.update(o))
        box_head = getattr(model.roi_heads, "box_head", None)
        if box_head is None:  # cascade: first stage
            box_head = model.roi_heads.box_head[0]
        self._box_head = box_head
        for name in ("fc_relu1", "fc_relu2"):
            if hasattr(box_head, name):
                getattr(box_head, name).register_forward_hook(
                    lambda m, i, o, name=name: self._acts.__setitem__(name, o.detach())
                )

    def _head_params(self):
        model = _unwrap(self.model)
        out = {}
        for name in ("fc1", "fc2"):
            if hasattr(self._box_head, name):
                out[name] = getattr(self._box_head, name).weight
                out[name + ".bias"] = getattr(self._box_head, name).bias
        predictor = getattr(model.roi_heads, "box_predictor", None)
        if isinstance(predictor, torch.nn.ModuleList):
            predictor = predictor[0]
        out["cls_score"] = predictor.cls_score.weight
        out["bbox_pred"] = predictor.bbox_pred.weight
        return out

    def _probe(self, loss_dict: Dict[str, torch.Tensor]) -> dict:
        feats: List[torch.Tensor] = list(self._features.values())
        head = self._head_params()
        record = {"iteration": self.iter, "backbone_grad": {}, "head_grad": {}, "dead_relu": {}, "mean_act": {}}
        for name, loss in loss_dict.items():
            if not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss, feats + list(head.values()), retain_graph=True, allow_unused=True)
            fg, hg = grads[: len(feats)], grads[len(feats):]
            record["backbone_grad"][name] = float(
                torch.sqrt(sum((g.float() ** 2).sum() for g in fg if g is not None) + 0.0)
            )
            record["head_grad"][name] = {
                k: (float(g.norm()) if g is not None else 0.0) for k, g in zip(head, hg)
                if not k.endswith(".bias")
            }
            # Sum of the bias gradient: > 0 means that this loss lowers the layer's
            # pre-activations on average (gradient descent), i.e. pushes its ReLUs to die.
            record.setdefault("bias_grad_sum", {})[name] = {
                k: (float(g.sum()) if g is not None else 0.0) for k, g in zip(head, hg)
                if k.endswith(".bias")
            }
        for name, act in self._acts.items():
            active = (act > 0).any(dim=0)
            record["dead_relu"][name] = float(1.0 - active.float().mean())
            record["mean_act"][name] = float(act.mean())
        record["loss"] = {k: float(v) for k, v in loss_dict.items()}
        return record

    def run_step(self):
        self._trainer.iter = self.iter
        if self.iter % self.probe_period != 0 and self.iter != self.max_iter - 1:
            return SimpleTrainer.run_step(self._trainer)
        t = self._trainer
        data = next(t._data_loader_iter)
        loss_dict = t.model(data)
        record = self._probe(loss_dict)
        with open(self.probe_out, "a") as f:
            f.write(json.dumps(record) + "\n")
        losses = sum(loss_dict.values())
        t.optimizer.zero_grad()
        losses.backward()
        t._write_metrics(loss_dict, 0.0)
        t.optimizer.step()


def main(args):
    cfg = default_rs_setup(args)
    ProbingTrainer.probe_period = args.probe_period
    ProbingTrainer.probe_out = args.out
    if os.path.exists(args.out):
        os.remove(args.out)
    trainer = ProbingTrainer(cfg)
    trainer.resume_or_load(resume=False)
    if args.stop_at:
        # Stop early on the config's own schedule (the LR scheduler still spans MAX_ITER).
        trainer.max_iter = min(trainer.max_iter, args.stop_at)
    return trainer.train()


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--probe-period", type=int, default=50)
    parser.add_argument("--out", default="diagnostics.jsonl")
    parser.add_argument("--stop-at", type=int, default=0,
                        help="stop after this many iterations of the config's schedule (0: MAX_ITER)")
    main(parser.parse_args())
