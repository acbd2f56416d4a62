"""Training throughput: the engine's `train_one_epoch` against a minimal hand-written loop.

Both train the same model on the same batches (already on the device, so data loading
is out of the picture) with the same optimiser; rounds alternate between the two so that
a busy machine slows both alike. The engine's extra work per step (top-k counts, running
sums, the scheduler, the non-finite check) must cost < 5 % of the images per second.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from miniplaces.engine.schedule import warmup_cosine
from miniplaces.engine.train import train_one_epoch
from miniplaces.models import create_model

VARIANTS = ("fp32", "channels_last", "bf16", "bf16+channels_last")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(model_name: str, device: torch.device, channels_last: bool, seed: int) -> tuple[nn.Module, Any]:
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=100).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def hand_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]],
              device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool) -> None:
    """The baseline: forward, loss, backward, step; nothing else."""
    model.train()
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def measure_train_throughput(
    *,
    model_name: str = "simplenet",
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    image_size: int = 128,
    steps: int = 20,
    rounds: int = 5,
    variants: tuple[str, ...] = VARIANTS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows of {variant, loop, images_per_s (median over rounds), ratio}: the engine's ratio is
    engine / hand loop of the same variant, the hand loop's is against the fp32 hand loop."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.rand(batch_size, 3, image_size, image_size, generator=gen).to(device),
                torch.randint(0, 100, (batch_size,), generator=gen).to(device)) for _ in range(steps)]
    rows: list[dict[str, Any]] = []
    for variant in variants:
        channels_last = "channels_last" in variant
        amp = torch.bfloat16 if "bf16" in variant else None
        hand_model, hand_opt = _setup(model_name, device, channels_last, seed)
        eng_model, eng_opt = _setup(model_name, device, channels_last, seed)
        scheduler = warmup_cosine(eng_opt, total_steps=steps * (rounds + 1), warmup_steps=steps)

        runs: dict[str, Callable[[], Any]] = {
            "engine": partial(train_one_epoch, eng_model, batches, eng_opt, scheduler, device=device,
                              criterion=nn.CrossEntropyLoss(), amp_dtype=amp, channels_last=channels_last,
                              progress=False),
            "hand": partial(hand_loop, hand_model, hand_opt, batches, device, amp, channels_last),
        }
        times: dict[str, list[float]] = {"engine": [], "hand": []}
        for r in range(rounds + 1):  # round 0 warms up (allocator, kernels, caches)
            order = ("engine", "hand") if r % 2 else ("hand", "engine")
            for name in order:
                _sync(device)
                t0 = time.perf_counter()
                runs[name]()
                _sync(device)
                if r:
                    times[name].append(time.perf_counter() - t0)
        for name in ("hand", "engine"):
            rows.append({"variant": variant, "loop": name,
                         "images_per_s": steps * batch_size / statistics.median(times[name])})
    base = next(r["images_per_s"] for r in rows if r["variant"] == "fp32" and r["loop"] == "hand") \
        if "fp32" in variants else None
    for row in rows:
        if row["loop"] == "engine":
            hand_rate = next(r["images_per_s"] for r in rows if r["variant"] == row["variant"] and r["loop"] == "hand")
            row["ratio"] = row["images_per_s"] / hand_rate
            row["against"] = "hand loop, same variant"
        else:
            row["ratio"] = row["images_per_s"] / base if base else float("nan")
            row["against"] = "fp32 hand loop"
    return rows
