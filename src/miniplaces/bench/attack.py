"""The cost of an attack: PGD-k against k forward+backward passes, measured in the same run.

One PGD step is one forward and one backward with respect to the input, so PGD-10 should cost
about ten of them; the least-likely mode adds one forward to find its targets, and the
projection and clamp are cheap element-wise work. The baseline and the attacks are timed in
alternation, so a machine shared with other jobs slows them alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from miniplaces.attacks import fgsm, pgd
from miniplaces.bench.result import BenchResult
from miniplaces.bench.timing import medians, time_interleaved
from miniplaces.models import create_model


def measure_attack_cost(
    *,
    model_name: str = "simplenet",
    num_classes: int = 100,
    batch_size: int = 32,
    image_size: int = 128,
    steps: int = 10,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Median time per image of a forward+backward (input gradient), `steps` of them, PGD-`steps` and FGSM.

    Returns rows `{"name", "ms_per_image", "ratio"}`, the ratio against `steps` × forward+backward.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=num_classes).to(device).eval()
    x = torch.rand(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    eps = 6 / 255

    def forward_backward() -> None:
        inp = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(inp), y, reduction="sum"), inp)

    def k_forward_backward() -> None:
        for _ in range(steps):
            forward_backward()

    candidates: dict[str, Callable[[], Any]] = {
        f"{steps} × forward+backward": k_forward_backward,
        f"PGD-{steps} least-likely": lambda: pgd(model, x, y, eps=eps, steps=steps, mode="least-likely"),
        f"PGD-{steps} untargeted": lambda: pgd(model, x, y, eps=eps, steps=steps, mode="untargeted"),
        "forward+backward": forward_backward,
        "FGSM": lambda: fgsm(model, x, y, eps=eps),
    }
    times = medians(time_interleaved(candidates, device, repeats=repeats, warmup=1))
    per_image = {name: seconds / batch_size * 1e3 for name, seconds in times.items()}
    baseline = per_image[f"{steps} × forward+backward"]
    return [{"name": name, "ms_per_image": ms, "ratio": ms / baseline} for name, ms in per_image.items()]


def run(*, device: torch.device, model: str = "simplenet", num_classes: int = 100, batch_size: int = 32,
        image_size: int = 128, steps: int = 10, repeats: int = 5, seed: int = 0) -> BenchResult:
    """`measure_attack_cost` as a `BenchResult`."""
    rows = measure_attack_cost(model_name=model, num_classes=num_classes, batch_size=batch_size,
                               image_size=image_size, steps=steps, repeats=repeats, device=device, seed=seed)
    settings: dict[str, Any] = {"device": device, "model": model, "num_classes": num_classes,
                                "batch_size": batch_size, "image_size": image_size, "steps": steps,
                                "repeats": repeats, "seed": seed}
    return BenchResult("attack", settings, f"{steps} × forward+backward with respect to the input "
                       "(median of interleaved rounds)", rows)


def table(result: BenchResult) -> str:
    """Markdown: milliseconds per image of each candidate and its ratio to k forward+backward passes."""
    lines = ["| Candidate | ms/image | Ratio |", "|---|---:|---:|"]
    for r in result.rows:
        lines.append(f"| {r['name']} | {r['ms_per_image']:.2f} | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"
