"""PGD / FGSM: budgets, strength on a trained model, side effects, and agreement with torch.func."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from miniplaces.attacks import (
    AttackSpec,
    attack_batch,
    evaluate_attack,
    fgsm,
    least_likely_labels,
    pgd,
    robustness_sweep,
)
from miniplaces.errors import MiniPlacesError
from miniplaces.pixels import parse_eps, parse_eps_list

CLASSES = 4
SIZE = 16


def make_images(n: int, generator: torch.Generator, protos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class is a 4×4 colour pattern scaled up to 16×16, plus pixel noise."""
    y = torch.arange(n) % CLASSES
    x = F.interpolate(protos[y], size=SIZE, mode="nearest") * 0.6 + 0.2
    return (x + 0.08 * torch.randn(n, 3, SIZE, SIZE, generator=generator)).clamp(0, 1), y


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, CLASSES),
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny CNN trained to ~100 % on synthetic 16×16 images, and 64 held-out images."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    protos = torch.rand(CLASSES, 3, 4, 4, generator=generator)
    x_train, y_train = make_images(256, generator, protos)
    x_val, y_val = make_images(64, generator, protos)
    model = tiny_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        index = torch.randint(0, len(x_train), (64,), generator=generator)
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, x_val, y_val


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


ATTACKS = {
    "least-likely": lambda m, x, y, eps: pgd(m, x, y, eps=eps, mode="least-likely"),
    "untargeted": lambda m, x, y, eps: pgd(m, x, y, eps=eps, mode="untargeted"),
    "least-likely-random-start": lambda m, x, y, eps: pgd(m, x, y, eps=eps, random_start=True),
    "untargeted-random-start": lambda m, x, y, eps: pgd(m, x, y, eps=eps, mode="untargeted", random_start=True,
                                                       steps=5, step_size=eps / 2),
    "fgsm": lambda m, x, y, eps: fgsm(m, x, y, eps=eps),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("eps", [2 / 255, 8 / 255, 0.1])
def test_perturbation_within_budget_and_pixel_range(trained, name: str, eps: float) -> None:
    model, x, y = trained
    x = x.clone()
    x[:8, :, :4] = 0.0  # saturated pixels: the clamp to [0, 1] must hold there too
    x[8:16, :, :4] = 1.0
    x_adv = ATTACKS[name](model, x, y, eps)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (x_adv != x).any()


def test_pgd_lowers_accuracy_and_more_eps_never_helps(trained) -> None:
    model, x, y = trained
    loader = DataLoader(TensorDataset(x, y), batch_size=24)
    eps_list = [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255]
    rows = robustness_sweep(model, loader, AttackSpec(target="untargeted"), eps_list)
    assert [row["eps"] for row in rows] == eps_list
    clean = rows[0]["clean_top1"]
    assert clean >= 90.0
    assert rows[0]["adv_top1"] == clean and rows[0]["mean_linf"] == 0.0
    robust = [row["adv_top1"] for row in rows]
    assert all(later <= earlier for earlier, later in zip(robust, robust[1:], strict=False)), robust
    assert robust[-1] <= 20.0, robust
    assert rows[-1]["success_rate"] >= 80.0
    # The budget is spent: PGD ends on the corners of the ε-ball, mostly.
    assert rows[-1]["mean_linf"] == pytest.approx(16 / 255, abs=1e-6)
    assert 0 < rows[-1]["mean_l2"] <= 16 / 255 * (3 * SIZE * SIZE) ** 0.5 + 1e-6


def test_least_likely_mode_reaches_its_target(trained) -> None:
    model, x, y = trained
    target = least_likely_labels(model, x)
    assert (target != y).all()
    x_adv = pgd(model, x, y, eps=32 / 255)  # default mode: least-likely
    with torch.no_grad():
        reached = (model(x_adv).argmax(1) == target).float().mean().item()
    assert reached >= 0.8
    result = evaluate_attack(model, DataLoader(TensorDataset(x, y), batch_size=16),
                             AttackSpec(target="least-likely", eps=32 / 255), limit=40)
    assert result["images"] == 40
    assert result["success_rate"] >= 80.0
    assert result["steps"] == 10 and result["step_size"] == pytest.approx(3.2 / 255)


def test_attacks_leave_the_model_as_they_found_it(trained) -> None:
    model, x, y = trained
    model.train()
    model[0].eval()  # a mixed state: each module's own mode must come back
    model[2].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    try:
        pgd(model, x, y, eps=8 / 255, mode="untargeted", random_start=True)
        pgd(model, x, y, eps=8 / 255, mode="least-likely")
        fgsm(model, x, y, eps=8 / 255)
        evaluate_attack(model, DataLoader(TensorDataset(x, y), batch_size=32), AttackSpec(eps=4 / 255))
        assert [p.requires_grad for p in model.parameters()] == flags
        assert [m.training for m in model.modules()] == modes
        assert all(p.grad is None for p in model.parameters())
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    finally:
        model[2].weight.requires_grad_(True)
        model.eval()


def test_attack_runs_in_eval_mode() -> None:
    """Dropout would make the gradient random; with eval mode two runs agree exactly."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 8 * 8, 5)).train()
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6) % 5
    assert torch.equal(pgd(model, x, y, eps=0.05, mode="untargeted"), pgd(model, x, y, eps=0.05, mode="untargeted"))
    assert model.training


def oracle_loss_grad(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The input gradient from torch.func, written independently of our code."""
    return torch.func.grad(lambda inp: F.cross_entropy(model(inp), labels, reduction="sum"))(x)


def test_fgsm_and_pgd_match_a_torch_func_reference(trained) -> None:
    model, x, y = trained
    x = x[:16]
    y = y[:16]
    eps = 8 / 255
    expected_fgsm = (x + eps * oracle_loss_grad(model, x, y).sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, eps=eps), expected_fgsm)

    # Least-likely PGD, three steps, written out: descend towards argmin of the clean logits.
    with torch.no_grad():
        target = model(x).argmin(1)
    x_ref = x.clone()
    for _ in range(3):
        x_ref = x_ref - eps / 10 * oracle_loss_grad(model, x_ref, target).sign()
        x_ref = torch.clamp(torch.clamp(x_ref, x - eps, x + eps), 0, 1)
    torch.testing.assert_close(pgd(model, x, None, eps=eps, steps=3), x_ref)


def test_attack_works_inside_no_grad_and_eps_zero_is_identity(trained) -> None:
    model, x, y = trained
    with torch.no_grad():
        x_adv = pgd(model, x, y, eps=8 / 255, mode="untargeted")
    assert (x_adv != x).any()
    assert torch.equal(pgd(model, x, y, eps=0.0, random_start=True), x)
    batch = attack_batch(model, x, y, AttackSpec(kind="fgsm", target="untargeted", eps=8 / 255))
    assert batch.target is None and batch.adv_logits.shape == (len(x), CLASSES)


def test_bad_arguments_are_clear_errors(trained) -> None:
    model, x, y = trained
    with pytest.raises(MiniPlacesError, match="true label"):
        pgd(model, x, None, eps=0.01, mode="untargeted")
    with pytest.raises(MiniPlacesError, match="unknown PGD mode"):
        pgd(model, x, y, eps=0.01, mode="sideways")  # type: ignore[arg-type]
    with pytest.raises(MiniPlacesError, match="float images"):
        pgd(model, (x * 255).to(torch.uint8), y, eps=0.01)
    with pytest.raises(MiniPlacesError, match="choose one of least-likely, untargeted, fgsm"):
        AttackSpec.from_mode("pgd", eps=0.01)
    with pytest.raises(MiniPlacesError, match="labelled"):
        evaluate_attack(model, [(x, torch.full_like(y, -1))], AttackSpec.from_mode("fgsm", eps=0.01))


@pytest.mark.parametrize(("text", "value"), [("6/255", 6 / 255), ("0.0235", 0.0235), (" 0 ", 0.0), ("1", 1.0),
                                             ("8 / 255", 8 / 255), (0.1, 0.1)])
def test_parse_eps(text: str | float, value: float) -> None:
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize(("text", "message"), [("", "empty"), ("abc", "cannot read ε 'abc'"),
                                               ("6/0", "divides by zero"), ("-1/255", "≥ 0"),
                                               ("6", "did you mean 6/255"), ("nan", "finite"), ("1/2/3", "cannot")])
def test_parse_eps_errors(text: str, message: str) -> None:
    with pytest.raises(MiniPlacesError, match=message):
        parse_eps(text)


def test_parse_eps_list() -> None:
    assert parse_eps_list("0,1/255, 2/255,") == pytest.approx([0, 1 / 255, 2 / 255])
    with pytest.raises(MiniPlacesError, match="no ε"):
        parse_eps_list(" , ")


def test_attack_cost_rows() -> None:
    from miniplaces.bench.attack import measure_attack_cost

    rows = measure_attack_cost(num_classes=4, batch_size=2, image_size=32, steps=2, repeats=1)
    assert [row["name"] for row in rows] == ["2 × forward+backward", "PGD-2 least-likely", "PGD-2 untargeted",
                                             "forward+backward", "FGSM"]
    assert rows[0]["ratio"] == 1.0 and all(row["ms_per_image"] > 0 for row in rows)
