"""MODEL.RS.RANKING_POOL "global" in the RS heads: RS-Mask R-CNN and RS-ATSS trained on 2
gloo processes x 2 images give the losses, balance coefficients and (DDP-averaged)
gradients of 1 process x 4 images; "process" does not."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from rs_detectron2.config import add_rs_config
from rs_detectron2.engine import RSTrainer

from .test_ranking_pool import _free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {name: os.path.join(ROOT, "configs", "Synthetic", "pretrained", f"rs_{name}_R_18_FPN.yaml")
           for name in ("mask_rcnn", "atss")}
BALANCES = {"mask_rcnn": ("rpn/box_balance", "roi_head/box_balance", "roi_head/mask_balance"),
            "atss": ("box_balance",)}


def _model(name, pool):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(CONFIGS[name])
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RS.RANKING_POOL = pool
    cfg.MODEL.RS.MAX_MASK_ROIS = 100000  # every positive RoI: no random subset per process
    torch.manual_seed(0)
    model = RSTrainer.build_model(cfg)
    model.train()
    return model


def _batch():
    g = torch.Generator().manual_seed(5)
    batch = []
    for i in range(4):
        image = torch.randint(0, 256, (3, 128, 160), generator=g).float()
        n = 2 + i % 2
        x0 = torch.randint(0, 80, (n,), generator=g).float()
        y0 = torch.randint(0, 60, (n,), generator=g).float()
        boxes = torch.stack([x0, y0, x0 + 40 + 10 * i, y0 + 30 + 5 * i], 1)
        masks = torch.zeros(n, 128, 160, dtype=torch.bool)
        for k, (a, b, c, d) in enumerate(boxes.long().tolist()):
            masks[k, b:d, a:c] = True
        inst = Instances((128, 160), gt_boxes=Boxes(boxes),
                         gt_classes=torch.tensor([(i + k) % 6 for k in range(n)]),
                         gt_masks=BitMasks(masks))
        batch.append({"image": image, "instances": inst, "height": 128, "width": 160})
    return batch


def _step(name, model, inputs):
    model.zero_grad()
    with EventStorage() as storage:
        losses = model(inputs)
        sum(losses.values()).backward()
        balances = {k: storage.latest()[k][0] for k in BALANCES[name]}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v) for k, v in losses.items()}, balances, grads


def _worker(rank, world, port, path, name, pool):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    batch = _batch()
    losses, balances, grads = _step(name, _model(name, pool), batch[2 * rank: 2 * rank + 2])
    for g in grads.values():  # what DistributedDataParallel does: the mean over processes
        dist.all_reduce(g)
        g /= world
    torch.save((losses, balances, grads), f"{path}.{rank}")
    dist.destroy_process_group()


def _two_processes(name, pool):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out")
        mp.spawn(_worker, args=(2, _free_port(), path, name, pool), nprocs=2, join=True)
        return [torch.load(f"{path}.{r}") for r in range(2)]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def one_process(request):
    return request.param, _step(request.param, _model(request.param, "global"), _batch())


def test_global_pool_on_two_processes_is_one_process_with_all_images(one_process):
    name, (losses, balances, grads) = one_process
    for rank_losses, rank_balances, rank_grads in _two_processes(name, "global"):
        assert sorted(rank_losses) == sorted(losses)
        for k in losses:
            assert rank_losses[k] == pytest.approx(losses[k], abs=1e-6), k
        for k in BALANCES[name]:
            assert rank_balances[k] == pytest.approx(balances[k], rel=1e-6), k  # float32 model
        assert sorted(rank_grads) == sorted(grads)
        worst = max(float((rank_grads[n] - grads[n]).abs().max() / grads[n].abs().max().clamp(min=1e-3))
                    for n in grads)
        print(f"worst relative gradient difference {worst:.2e}")
        assert worst <= 2e-5, worst  # float32 sums in another order (measured 2.9e-6)


def test_process_pool_on_two_processes_differs(one_process):
    """The control: the published per-process pool trains another loss on 2 x 2 images."""
    name, (losses, _, _) = one_process
    rank_losses = _two_processes(name, "process")[0][0]
    assert max(abs(rank_losses[k] - losses[k]) for k in losses if k.endswith("rank")) > 1e-4


def _recipe_inputs():
    """One head's candidates in float64: (R, K) logits, positives with boxes, split 23 / 37."""
    g = torch.Generator().manual_seed(11)
    rows, classes = 60, 3
    logits = torch.randn(rows, classes, generator=g, dtype=torch.float64)
    pos_rows = torch.tensor([1, 4, 9, 15, 22, 30, 31, 44, 50, 58])
    pos_classes = torch.randint(0, classes, (len(pos_rows),), generator=g)
    gt = torch.rand(len(pos_rows), 2, generator=g, dtype=torch.float64) * 50
    gt_boxes = torch.cat([gt, gt + 15], 1)
    pred_boxes = gt_boxes + torch.randn(len(pos_rows), 4, generator=g, dtype=torch.float64) * 3
    ignored = torch.zeros(rows, dtype=torch.bool)
    ignored[[3, 40]] = True
    return logits, ignored, pos_rows, pos_classes, pred_boxes, gt_boxes


def _recipe_step(logits, ignored, pos_rows, pos_classes, pred_boxes, gt_boxes, pool):
    from rs_detectron2.modeling.rs_head_recipe import rs_head_losses

    logits = logits.clone().requires_grad_(True)
    pred_boxes = pred_boxes.clone().requires_grad_(True)
    out = rs_head_losses(logits, ignored, pos_rows, pos_classes, pred_boxes, gt_boxes, 0.5,
                         ranking_pool=pool)
    (out.rank + out.sort + out.box).backward()
    return ([float(out.rank), float(out.sort), float(out.box), out.box_balance],
            logits.grad, pred_boxes.grad)


def _recipe_worker(rank, world, port, path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    logits, ignored, pos_rows, pos_classes, pred, gt = _recipe_inputs()
    rows = slice(0, 23) if rank == 0 else slice(23, None)
    mine = (pos_rows >= rows.start) & (pos_rows < (rows.stop or len(logits)))
    torch.save(_recipe_step(logits[rows], ignored[rows], pos_rows[mine] - rows.start,
                            pos_classes[mine], pred[mine], gt[mine], "global"), f"{path}.{rank}")
    dist.destroy_process_group()


def test_global_recipe_values_balance_and_gradients_in_float64():
    """rs_head_losses itself (RS Loss, balanced GIoU) split over two processes, float64:
    the rank, sort and box losses, the balance coefficient and the gradients of the logits
    and the boxes (/ world size) within 1e-6 of one process holding all candidates."""
    values, g_logits, g_boxes = _recipe_step(*_recipe_inputs(), "global")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out")
        mp.spawn(_recipe_worker, args=(2, _free_port(), path), nprocs=2, join=True)
        parts = [torch.load(f"{path}.{r}") for r in range(2)]
    pos_rows = _recipe_inputs()[2]
    for rank, (rank_values, rank_logits, rank_boxes) in enumerate(parts):
        assert rank_values == pytest.approx(values, abs=1e-6)
        rows = slice(0, 23) if rank == 0 else slice(23, None)
        mine = (pos_rows < 23) if rank == 0 else (pos_rows >= 23)
        torch.testing.assert_close(rank_logits / 2, g_logits[rows], atol=1e-6, rtol=0)
        torch.testing.assert_close(rank_boxes / 2, g_boxes[mine], atol=1e-6, rtol=0)
