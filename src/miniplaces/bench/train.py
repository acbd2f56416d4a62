"""Training throughput: the engine's `train_one_epoch` against a minimal hand-written loop.

Both train the same model on the same batches (already on the device, so data loading
is out of the picture) with the same optimiser; rounds alternate between the two so that
a busy machine slows both alike. The engine's extra work per step (top-k counts, running
sums, the scheduler, the non-finite check) must cost < 5 % of the images per second.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from miniplaces.bench.result import BenchResult
from miniplaces.bench.timing import medians, time_interleaved
from miniplaces.engine.optim import build_optimizer
from miniplaces.engine.schedule import warmup_cosine
from miniplaces.engine.train import train_one_epoch
from miniplaces.errors import MiniPlacesError
from miniplaces.models import create_model, model_card

VARIANTS = ("fp32", "channels_last", "bf16", "bf16+channels_last")


def _setup(model_name: str, device: torch.device, channels_last: bool, seed: int) -> tuple[nn.Module, Any]:
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=100).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer, lr, weight_decay = model_card(model_name).optimizer_defaults()  # the card's: AdamW for a ViT
    return model, build_optimizer(model, optimizer, lr=lr, weight_decay=weight_decay)


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
    unknown = [variant for variant in variants if variant not in VARIANTS]
    if unknown or not variants:
        what = f"unknown training variant {unknown[0]!r}" if unknown else "no training variant"
        raise MiniPlacesError(f"{what}; choose among {', '.join(VARIANTS)}")
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
        times = medians(time_interleaved(runs, device, repeats=rounds, warmup=1))
        for name in ("hand", "engine"):
            rows.append({"variant": variant, "loop": name, "images_per_s": steps * batch_size / times[name]})
    base = next(r["images_per_s"] for r in rows if r["variant"] == "fp32" and r["loop"] == "hand") \
        if "fp32" in variants else None
    for row in rows:
        if row["loop"] == "engine":
            hand_rate = next(r["images_per_s"] for r in rows if r["variant"] == row["variant"] and r["loop"] == "hand")
            row["ratio"] = row["images_per_s"] / hand_rate
            row["against"] = "hand loop, same variant"
        else:
            # Without an fp32 run there is nothing to compare the hand loops with.
            row["ratio"] = row["images_per_s"] / base if base else None
            row["against"] = "fp32 hand loop" if base else "(fp32 not run)"
    return rows


def run(*, device: torch.device, model: str = "simplenet", batch_size: int = 256, image_size: int = 128,
        steps: int = 20, rounds: int = 5, variants: tuple[str, ...] = VARIANTS, seed: int = 0) -> BenchResult:
    """`measure_train_throughput` as a `BenchResult`."""
    rows = measure_train_throughput(model_name=model, device=device, batch_size=batch_size, image_size=image_size,
                                    steps=steps, rounds=rounds, variants=tuple(variants), seed=seed)
    settings: dict[str, Any] = {"device": device, "model": model, "batch_size": batch_size,
                                "image_size": image_size, "steps": steps, "rounds": rounds,
                                "variants": list(variants), "seed": seed}
    return BenchResult("train", settings, "engine: the hand loop of the same variant; hand loop: the fp32 hand "
                       "loop (images/s, median of interleaved rounds)", rows)


def table(result: BenchResult) -> str:
    """Markdown: images/s of each loop and variant, with its ratio and what the ratio is against."""
    lines = ["| Variant | Loop | Images/s | Ratio | Against |", "|---|---|---:|---:|---|"]
    for r in result.rows:
        lines.append(f"| {r['variant']} | {r['loop']} | {r['images_per_s']:.1f} | "
                     f"{'—' if r['ratio'] is None else format(r['ratio'], '.3f')} | "
                     f"{r['against']} |")
    return "\n".join(lines) + "\n"
