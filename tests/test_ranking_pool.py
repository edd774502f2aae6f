"""The "global" ranking pool: RS Loss over the logits of all processes (two gloo processes
on the CPU) against one process holding all the data."""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rs_detectron2.losses import (
    alrp_loss,
    ap_loss,
    global_sum,
    pooled_alrp_loss,
    pooled_ap_loss,
    pooled_rank_sort_loss,
    rank_sort_loss,
)
from rs_detectron2.losses.ranking_pool import check_ranking_pool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cases(seed):
    """Random (logits, targets) pairs split unevenly between two processes, with ignored
    entries, ties, a process without positives and one without relevant negatives."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for case in range(12):
        n0, n1 = int(torch.randint(1, 400, (1,), generator=g)), int(torch.randint(1, 400, (1,), generator=g))
        logits = torch.randn(n0 + n1, generator=g, dtype=torch.float64) * (0.3 + case % 3)
        if case % 4 == 1:
            logits = (logits * 2).round() / 2  # ties
        targets = torch.zeros(n0 + n1, dtype=torch.float64)
        pos = torch.rand(n0 + n1, generator=g) < 0.1
        targets[pos] = torch.rand(int(pos.sum()), generator=g, dtype=torch.float64).clamp(min=0.05)
        targets[torch.rand(n0 + n1, generator=g) < 0.05] = -1.0
        if case == 5:
            targets[:n0][targets[:n0] > 0] = 0.0  # process 0 has no positive
        if case == 6:
            logits[:n0][targets[:n0] == 0] = -50.0  # process 0: no relevant negative
        if case == 7:
            targets[targets > 0] = 0.0  # no positive anywhere
        out.append((logits, targets, n0, [0.0, 0.5, 1.0][case % 3]))
    return out


def _regression(logits, targets):
    """A regression loss in [0, 2) for every entry (used at the positives)."""
    return (logits.detach().sin() + 1.0) * 0.9


def _worker(rank, world, port, path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    results = []
    for logits, targets, n0, delta in _cases(0):
        part = slice(0, n0) if rank == 0 else slice(n0, None)
        local = logits[part].clone().requires_grad_(True)
        loss_rank, loss_sort = pooled_rank_sort_loss(local, targets[part], delta, pool="global")
        (loss_rank + 2.0 * loss_sort).backward()
        # a score-weighted mean over the positives, pooled as the RS heads' box loss
        w = torch.linspace(0.1, 1.0, local.numel(), dtype=torch.float64)
        values = local.detach().clone().requires_grad_(True)
        mean = global_sum((values * w).sum()) / global_sum(w.sum())
        mean.backward()
        # AP Loss and aLRP Loss (regression losses of this process's positives, flat order)
        ap_in = logits[part].clone().requires_grad_(True)
        pooled_ap_loss(ap_in, targets[part], 1.0, pool="global").backward()
        alrp_in = logits[part].clone().requires_grad_(True)
        reg = _regression(logits, targets)[part][targets[part] > 0].clone().requires_grad_(True)
        out = pooled_alrp_loss(alrp_in, targets[part], reg, 1.0, pool="global")
        (out.loss_cls + 3.0 * out.loss_reg).backward()
        results.append({"rank": float(loss_rank), "sort": float(loss_sort),
                        "grad": local.grad.clone(), "mean": float(mean),
                        "mean_grad": values.grad.clone(),
                        "ap_grad": ap_in.grad.clone(), "alrp": (float(out.loss_cls), float(out.loss_reg)),
                        "alrp_grad": alrp_in.grad.clone(), "reg_grad": reg.grad.clone()})
    torch.save(results, f"{path}.{rank}")
    dist.destroy_process_group()


def test_two_processes_rank_as_one_holding_all_the_data():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out")
        mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
        per_rank = [torch.load(f"{path}.{r}") for r in range(2)]
    for k, (logits, targets, n0, delta) in enumerate(_cases(0)):
        x = logits.clone().requires_grad_(True)
        loss_rank, loss_sort = rank_sort_loss(x, targets, delta)
        (loss_rank + 2.0 * loss_sort).backward()
        w = torch.cat([torch.linspace(0.1, 1.0, n0, dtype=torch.float64),
                       torch.linspace(0.1, 1.0, logits.numel() - n0, dtype=torch.float64)])
        expected_mean = float((logits * w).sum() / w.sum())
        for rank, part in ((0, slice(0, n0)), (1, slice(n0, None))):
            got = per_rank[rank][k]
            assert got["rank"] == pytest.approx(float(loss_rank), abs=1e-6), (k, rank)
            assert got["sort"] == pytest.approx(float(loss_sort), abs=1e-6), (k, rank)
            # each process gets world_size x its part of the gradient (DDP then averages)
            torch.testing.assert_close(got["grad"] / 2, x.grad[part], atol=1e-6, rtol=0)
            assert got["mean"] == pytest.approx(expected_mean, abs=1e-9)
            torch.testing.assert_close(got["mean_grad"] / 2, (w / w.sum())[part], atol=1e-9, rtol=0)
        if k == 7:
            assert float(loss_rank) == 0.0 and float(x.grad.abs().sum()) == 0.0
        ap_x = logits.clone().requires_grad_(True)
        ap_loss(ap_x, targets, 1.0).backward()
        alrp_x = logits.clone().requires_grad_(True)
        reg = _regression(logits, targets)[targets > 0].clone().requires_grad_(True)
        out = alrp_loss(alrp_x, targets, reg, 1.0)
        (out.loss_cls + 3.0 * out.loss_reg).backward()
        n_pos0 = int((targets[:n0] > 0).sum())
        for rank, part, pos_part in ((0, slice(0, n0), slice(0, n_pos0)),
                                     (1, slice(n0, None), slice(n_pos0, None))):
            got = per_rank[rank][k]
            torch.testing.assert_close(got["ap_grad"] / 2, ap_x.grad[part], atol=1e-6, rtol=0)
            assert got["alrp"][0] == pytest.approx(float(out.loss_cls), abs=1e-6)
            assert got["alrp"][1] == pytest.approx(float(out.loss_reg), abs=1e-6)
            torch.testing.assert_close(got["alrp_grad"] / 2, alrp_x.grad[part], atol=1e-6, rtol=0)
            torch.testing.assert_close(got["reg_grad"] / 2, reg.grad[pos_part], atol=1e-6, rtol=0)


def test_one_process_is_the_per_process_loss_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(500, generator=g)
    targets = (torch.rand(500, generator=g) < 0.1).float() * 0.7
    for pool in ("process", "global"):
        a = pooled_rank_sort_loss(logits, targets, 0.5, pool=pool)
        b = rank_sort_loss(logits, targets, 0.5)
        assert [float(v) for v in a] == [float(v) for v in b]
    with pytest.raises(ValueError, match=r"MODEL.RS.RANKING_POOL\) must be one of"):
        check_ranking_pool("world")
    with pytest.raises(ValueError, match="ranking pool"):
        pooled_rank_sort_loss(logits, targets, 0.5, pool="batch")
