"""GNP under DistributedDataParallel: 2 gloo processes on CPU, different data per rank (pitfall 8).

The documented recipe (both passes synchronised, no ``no_sync``) must keep the replicas identical and equal
the single-process algorithm on the global batch; the common SAM recipe (first pass under ``no_sync``) is
run as a control to show that this test detects drift.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from gnp_study.optim import GNP
from helpers import free_port

STEPS, BATCH, ALPHA, R, LR, MOM = 3, 8, 0.5, 0.1, 0.2, 0.9
JOIN_TIMEOUT_S = 120


def _model(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    mid = [nn.BatchNorm1d(16)] if bn else []
    return nn.Sequential(nn.Linear(6, 16), *mid, nn.Tanh(), nn.Linear(16, 3)).double()


def _batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(BATCH, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (BATCH,), generator=g))
            for _ in range(STEPS)]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for recipe in ("gnp", "gnp_bn", "gnp_every3", "sam_no_sync_first"):
            ddp = DDP(_model(bn=recipe == "gnp_bn"))
            opt = GNP(ddp.parameters(), torch.optim.SGD, alpha=ALPHA, r=R, model=ddp, lr=LR, momentum=MOM,
                      every=3 if recipe == "gnp_every3" else 1)
            for x, y in _batches(rank):
                def closure():
                    loss = F.cross_entropy(ddp(x), y)
                    loss.backward()
                    return loss
                if recipe.startswith("gnp"):
                    opt.step(closure)
                else:
                    opt.zero_grad()
                    with ddp.no_sync():
                        closure()
                    opt.first_step()
                    closure()
                    opt.second_step()
            # Parameters only: DDP broadcasts rank 0's BN buffers at each forward, so between forwards
            # each rank's running stats hold its own last batch (plain DDP behaviour).
            flat = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            results[recipe] = gathered
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "params.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_processes_keep_replicas_identical():
    world = 2
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as out_dir:
        port = free_port()
        procs = [ctx.Process(target=_worker, args=(rank, world, port, out_dir)) for rank in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(JOIN_TIMEOUT_S)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        assert [p.exitcode for p in procs] == [0] * world, "a DDP worker failed or timed out"
        results = torch.load(os.path.join(out_dir, "params.pt"))

    gnp = results["gnp"]
    assert torch.equal(gnp[0], gnp[1]), "replicas drifted apart under the documented recipe"
    bn = results["gnp_bn"]                     # with batch norm (statistics frozen in the second pass)
    assert torch.equal(bn[0], bn[1]), "replicas (with batch norm) drifted apart"
    amortised = results["gnp_every3"]         # one full step, then two steps reusing the stored direction
    assert torch.equal(amortised[0], amortised[1]), "replicas drifted apart with the amortised second pass"
    assert not torch.equal(amortised[0], gnp[0])
    control = results["sam_no_sync_first"]
    assert (control[0] - control[1]).abs().max() > 1e-6, "control recipe should drift (local g1 enters g)"

    # Same as one process running GNP on the global batch (mean loss over both ranks' samples).
    for every, got in ((1, gnp[0]), (3, amortised[0])):
        model = _model()
        opt = GNP(model.parameters(), torch.optim.SGD, alpha=ALPHA, r=R, lr=LR, momentum=MOM, every=every)
        for (x0, y0), (x1, y1) in zip(_batches(0), _batches(1)):
            x, y = torch.cat([x0, x1]), torch.cat([y0, y1])

            def closure():
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)
        single = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(got, single, rtol=1e-10, atol=1e-12)
