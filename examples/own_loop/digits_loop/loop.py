"""The training loop: the function the study names as ``training.function: digits_loop.loop:train``.

gnp-study calls it once per trial with a context (``gnp_study.own_loop.TrialContext``) and decides on the
metric the study names (``metric: {name: accuracy, mode: max}``), which it reports each epoch; everything
else here is the user's choice.
"""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader


def _accuracy(model, loader, device) -> float:
    """Percent of correctly classified samples of ``loader``."""
    model.eval()
    right = n = 0
    with torch.no_grad():
        for x, y in loader:
            pred = model(x.to(device)).argmax(1)
            right += int((pred == y.to(device)).sum())
            n += len(y)
    return 100.0 * right / max(1, n)


def train(ctx) -> None:
    """Train the study's model for ``ctx.epochs`` epochs with the trial's GNP optimizer; report each
    epoch's ``accuracy`` (% of test samples right: the study's metric), ``train_loss`` and ``grad_norm``;
    save what an exact resume needs."""
    model = ctx.build_model()  # first: the same initial weights for every configuration of a seed
    data = ctx.datasets()
    gen = torch.Generator().manual_seed(ctx.seed)  # the batch order: same for every configuration of a seed
    train_loader = DataLoader(data.train, batch_size=ctx.config["batch_size"], shuffle=True, generator=gen)
    test_loader = DataLoader(data.test, batch_size=512)
    opt = ctx.make_optimizer(model)
    sched = ctx.make_scheduler(opt, len(train_loader))
    if ctx.state is not None:  # a resumed trial: continue exactly where it stopped
        model.load_state_dict(ctx.state["model"])
        opt.load_state_dict(ctx.state["optimizer"])
        sched.load_state_dict(ctx.state["scheduler"])
        gen.set_state(ctx.state["generator"])
        torch.set_rng_state(ctx.state["torch_rng"])
    for _ in range(ctx.start_epoch + 1, ctx.epochs + 1):
        model.train()
        loss_sum = norm_sum = 0.0
        for x, y in train_loader:
            x, y = x.to(ctx.device), y.to(ctx.device)

            def closure():
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss

            loss = opt.step(closure)  # GNP: two gradients per step, mixed with alpha (Algorithm 1)
            sched.step()
            loss_sum += float(loss.detach()) * len(y)
            norm_sum += float(opt.last_grad_norm)
        ctx.report({"accuracy": _accuracy(model, test_loader, ctx.device),
                    "train_loss": loss_sum / len(data.train), "grad_norm": norm_sum / len(train_loader),
                    "lr": opt.param_groups[0]["lr"]},
                   state={"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "generator": gen.get_state(),
                          "torch_rng": torch.get_rng_state()})
