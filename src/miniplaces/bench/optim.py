"""The cost of an optimiser step: SGD, AdamW and Muon on one model's parameters, against SGD's step.

An optimiser step is element-wise work on every parameter, except Muon's, which orthogonalises each filter
bank's update with five Newton–Schulz iterations (matrix products; `miniplaces.engine.muon`). This benchmark
says what that costs: each optimiser steps on the gradients of one forward+backward pass (the model's own
batch of random images, bf16 autocast and channels-last as the fast recipe trains), timed in alternation
with that pass, so each row gives its time per step, its ratio to SGD's and its share of a training step
(forward+backward plus the optimiser's step). Muon is timed with its Newton–Schulz iterations in bf16 and in
float32: `MuonSGD` picks bf16 where the device multiplies in it fast, and this is how much that choice saves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from miniplaces.bench.result import BenchResult
from miniplaces.bench.timing import medians, time_interleaved
from miniplaces.engine.muon import MuonSGD
from miniplaces.engine.optim import build_optimizer
from miniplaces.models import create_model
from miniplaces.models.registry import OPTIMIZER_DEFAULTS

# (row name, optimiser, Muon's Newton–Schulz dtype); the first is the baseline.
CANDIDATES = (("sgd", "sgd", None), ("adamw", "adamw", None), ("muon (Newton–Schulz in bf16)", "muon", torch.bfloat16),
              ("muon (Newton–Schulz in float32)", "muon", torch.float32))
FORWARD_BACKWARD = "forward+backward"
# Tiny rates: the rows time the steps, not their effect, and hundreds of steps on one gradient at a training
# rate would drive the weights to infinities, whose arithmetic some CPUs run at another speed.
RATE = 1e-6


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors an optimiser keeps between steps (momentum buffers, Adam's moments)."""
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if isinstance(value, torch.Tensor) and value.ndim > 0)


def measure_optimizer_steps(*, model_name: str = "fastnet", batch_size: int = 256, image_size: int = 56,
                            bf16: bool = True, repeats: int = 7, device: str | torch.device = "cpu",
                            seed: int = 0) -> list[dict[str, Any]]:
    """Median milliseconds of one step of each of `CANDIDATES` and of the forward+backward that feeds them.

    Returns rows `{"name", "ms_per_step", "ratio", "share", "state_mb"}`: the ratio against SGD's step, the
    share of a training step (the pass plus this step; None for the pass itself), the optimiser's state in MB.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=100).to(device).to(memory_format=torch.channels_last)
    x = torch.rand(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch_size,), device=device)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()

    optimizers: dict[str, torch.optim.Optimizer] = {}
    for name, kind, ns_dtype in CANDIDATES:
        weight_decay = OPTIMIZER_DEFAULTS[kind][1]
        optimizer = build_optimizer(model, kind, lr=RATE, weight_decay=weight_decay, momentum=0.9, nesterov=True,
                                    muon_lr=RATE)
        if isinstance(optimizer, MuonSGD):
            optimizer.ns_dtype = ns_dtype
        optimizers[name] = optimizer
    forward_backward()  # gradients for the warm-up round's steps
    candidates: dict[str, Callable[[], Any]] = {FORWARD_BACKWARD: forward_backward}
    candidates.update({name: optimizer.step for name, optimizer in optimizers.items()})
    times = medians(time_interleaved(candidates, device, repeats=repeats, warmup=1))
    pass_s, baseline = times[FORWARD_BACKWARD], times[CANDIDATES[0][0]]
    rows = [{"name": f"{FORWARD_BACKWARD} ({batch_size} images at {image_size} px{', bf16' if bf16 else ''})",
             "ms_per_step": pass_s * 1e3, "ratio": pass_s / baseline, "share": None, "state_mb": None}]
    for name, optimizer in optimizers.items():
        rows.append({"name": name, "ms_per_step": times[name] * 1e3, "ratio": times[name] / baseline,
                     "share": times[name] / (pass_s + times[name]), "state_mb": state_bytes(optimizer) / 2**20})
    return rows


def run(*, device: torch.device, model: str = "fastnet", batch_size: int = 256, image_size: int = 56,
        bf16: bool = True, repeats: int = 7, seed: int = 0) -> BenchResult:
    """`measure_optimizer_steps` as a `BenchResult`."""
    rows = measure_optimizer_steps(model_name=model, batch_size=batch_size, image_size=image_size, bf16=bf16,
                                   repeats=repeats, device=device, seed=seed)
    settings: dict[str, Any] = {"device": device, "model": model, "batch_size": batch_size,
                                "image_size": image_size, "bf16": bf16, "repeats": repeats, "seed": seed}
    return BenchResult("optim", settings, "one SGD step (Nesterov momentum) on the same gradients "
                       "(median of interleaved rounds)", rows)


def table(result: BenchResult) -> str:
    """Markdown: milliseconds per step, the ratio to SGD's, the share of a training step, the state's size."""
    lines = ["| Step | ms | × SGD | share of a training step | state MB |", "|---|---:|---:|---:|---:|"]
    for r in result.rows:
        share = "—" if r["share"] is None else f"{100 * r['share']:.1f} %"
        state = "—" if r["state_mb"] is None else f"{r['state_mb']:.1f}"
        lines.append(f"| {r['name']} | {r['ms_per_step']:.1f} | {r['ratio']:.2f} | {share} | {state} |")
    return "\n".join(lines) + "\n"
