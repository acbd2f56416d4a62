"""Adversarial training: the step trains on the attack's images, the attack leaves no gradient behind,
DDP's wrapper is not attacked, the config keys are checked, and a PGD run resumes exactly."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from miniplaces.attacks import AttackSpec, fgsm, make_adversary, pgd
from miniplaces.cli import main
from miniplaces.config import ConfigError, TrainConfig, load_config, resolve, save_config
from miniplaces.engine.checkpoint import load_checkpoint
from miniplaces.engine.distributed import unwrap_model
from miniplaces.engine.schedule import warmup_cosine
from miniplaces.engine.train import train_one_epoch
from miniplaces.models import create_model
from miniplaces.workflows.train import train

CPU = torch.device("cpu")
EPS = 8 / 255


TORCH_THREADS = 1  # tiny tensors: a second thread only adds contention


class Spy(nn.Module):
    """Records every input the wrapped model sees, with the mode it was in."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.detach().clone(), self.training))
        return self.inner(x)


def one_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], adversary=None) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = warmup_cosine(opt, total_steps=1, warmup_steps=0)
    return train_one_epoch(model, [batch], opt, sched, device=CPU, criterion=nn.CrossEntropyLoss(),
                           adversary=adversary, progress=False)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(6, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 3, 0, 1])


def test_fgsm_step_trains_on_the_adversarial_batch_and_leaks_no_gradient() -> None:
    torch.manual_seed(0)
    spy = Spy(create_model("simplenet", num_classes=4))
    plain = copy.deepcopy(spy.inner)
    x, y = batch()
    expected_adv = fgsm(copy.deepcopy(spy.inner).train(), x, y, eps=EPS)  # from the weights before the step

    one_step(spy, (x, y), adversary=make_adversary(AttackSpec(kind="fgsm", target="untargeted", eps=EPS)))
    attack_passes = [seen for seen, training in spy.seen if not training]
    trained_on = [seen for seen, training in spy.seen if training]
    assert len(attack_passes) == 1 and torch.equal(attack_passes[0], x)  # FGSM: one gradient pass, in eval mode
    assert len(trained_on) == 1  # the training forward ran in train mode, on the adversarial batch
    x_adv = trained_on[0]
    torch.testing.assert_close(x_adv, expected_adv, rtol=0, atol=1e-6)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > EPS / 2  # it did move the images
    assert spy.training and all(m.training for m in spy.modules())

    # The parameters' gradients are exactly those of a plain step on the adversarial batch.
    one_step(plain, (x_adv, y))
    for (name, p), q in zip(spy.inner.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_pgd_under_ddp_attacks_the_plain_module(tmp_path: Path) -> None:
    """A one-process gloo group: the attack gets the module inside DDP (whose forward would prepare a gradient
    reduction and broadcast buffers), and training with it equals training the plain model."""
    torch.manual_seed(0)
    model = create_model("simplenet", num_classes=4)
    reference = copy.deepcopy(model)
    given: list[type] = []

    def adversary(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        given.append(type(module))
        return pgd(module, x, y, eps=EPS, steps=2, mode="untargeted")

    x, y = batch()
    batches = [(x, y), (x.flip(-1), y)]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        assert unwrap_model(torch.compile(ddp)) is model  # compiled (not run here) and DDP wrappers both come off
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        out = train_one_epoch(ddp, batches, opt, warmup_cosine(opt, total_steps=2, warmup_steps=0), device=CPU,
                              criterion=nn.CrossEntropyLoss(), adversary=adversary, progress=False)
    finally:
        dist.destroy_process_group()
    assert out["completed"] and out["steps"] == 2
    assert given == [type(model), type(model)]
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    train_one_epoch(reference, batches, opt, warmup_cosine(opt, total_steps=2, warmup_steps=0), device=CPU,
                    criterion=nn.CrossEntropyLoss(), adversary=adversary, progress=False)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_config_keys(tmp_path: Path) -> None:
    config = resolve(load_config(None, ["root=x"]))
    assert (config.adv_train, config.adv_eps, config.adv_steps, config.adv_mode) == ("none", "6/255", 10, "untargeted")
    path = tmp_path / "adv.yaml"
    path.write_text("adv_train: pgd\nadv_eps: 4/255\nadv_steps: 3\nadv_step_size: 0.005\n")
    config = resolve(load_config(path, ["root=x", "adv_mode=least-likely"]))
    assert (config.adv_train, config.adv_eps, config.adv_steps, config.adv_step_size, config.adv_mode) == (
        "pgd", "4/255", 3, 0.005, "least-likely")
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config
    assert resolve(load_config(None, ["root=x", "adv_eps=0.03"])).adv_eps == "0.03"


@pytest.mark.parametrize(("overrides", "message"), [
    (["adv_train=bim"], "key 'adv_train' must be 'none' | 'pgd' | 'fgsm'"),
    (["adv_eps=6/0"], "key 'adv_eps': ε '6/0' divides by zero"),
    (["adv_eps=8"], "key 'adv_eps': .* did you mean 8/255"),
    (["adv_eps=lots"], "key 'adv_eps': cannot read ε 'lots'"),
    (["adv_step_size=-1/255"], "key 'adv_step_size': .* must be a finite number ≥ 0"),
    (["adv_steps=0"], "key 'adv_steps' must be ≥ 1"),
    (["adv_steps=2.5"], "key 'adv_steps' must be int"),
    (["adv_mode=fgsm"], "key 'adv_mode' must be 'untargeted' | 'least-likely'"),
])
def test_config_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        resolve(load_config(None, ["root=x", *overrides]))


def rows(run: Path) -> list[dict]:
    timing = {"epoch_time_s", "images_per_s", "peak_memory_mb"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


class Crash(Exception):
    pass


def test_pgd_run_from_the_cli_then_crash_and_resume_is_exact(synth_root: Path, tmp_path: Path) -> None:
    settings = dict(epochs=2, batch_size=8, lr=0.05, warmup_epochs=0.5, workers=0, image_size=32, device="cpu",
                    limit_train_batches=2, adv_steps=2)
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", "--model", "simplenet", "--root", str(synth_root), "--name", "adv", "--adv-train", "pgd",
                 "--adv-eps", "4/255", "--set", f"out_dir={tmp_path}", *sets]) == 0
    whole = tmp_path / "adv"
    saved = load_checkpoint(whole / "checkpoints" / "last.pt")
    assert (saved["config"]["adv_train"], saved["config"]["adv_eps"], saved["config"]["adv_steps"]) == ("pgd",
                                                                                                        "4/255", 2)
    base = dataclasses.replace(TrainConfig(root=str(synth_root), out_dir=str(tmp_path), adv_train="pgd",
                                           adv_eps="4/255"), **settings)
    calls = {"n": 0}

    def crash_in_epoch_two(step: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash

    with pytest.raises(Crash):
        train(dataclasses.replace(base, name="crashed"), on_step=crash_in_epoch_two, progress=False)
    resumed = train(dataclasses.replace(base, name="crashed"), resume=tmp_path / "crashed", progress=False)
    plain = train(dataclasses.replace(base, name="plain", adv_train="none"), progress=False)
    assert rows(resumed) == rows(whole) and len(rows(whole)) == 2
    final = load_checkpoint(resumed / "checkpoints" / "last.pt")["state_dict"]
    for key, value in saved["state_dict"].items():
        assert torch.equal(final[key], value), key
    # The same seed without the attack trains to other weights: the attack was applied.
    plain_weights = load_checkpoint(plain / "checkpoints" / "last.pt")["state_dict"]
    assert any(not torch.equal(plain_weights[k], v) for k, v in saved["state_dict"].items())
    assert rows(plain)[0]["train_loss"] < rows(whole)[0]["train_loss"]
