"""Training throughput: the engine's `train_one_epoch` against a minimal hand-written loop.

Both train the same model on the same batches (already on the device, so data loading
is out of the picture) with the same optimiser; rounds alternate between the two so that
a busy machine slows both alike. The engine's extra work per step (top-k counts, running
sums, the scheduler, the non-finite check) must cost < 5 % of the images per second.

Each row also reports the achieved training FLOP/s (the FLOPs of one forward + backward counted by
torch's `FlopCounterMode`, times the images per second) and its fraction of a matmul peak measured in
the same run on the same device and dtype (a `peak_size`² matmul, float32 or bf16 as the variant): the
model FLOP utilisation that airbench and nanoGPT report. A variant ending in `+compile` (or `compile` alone)
runs both loops through `torch.compile`: whether the `compile` config key pays on this device.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from miniplaces.bench.result import BenchResult
from miniplaces.bench.timing import medians, time_interleaved
from miniplaces.engine.device import synchronize
from miniplaces.engine.optim import build_optimizer
from miniplaces.engine.schedule import warmup_cosine
from miniplaces.engine.train import train_one_epoch
from miniplaces.errors import MiniPlacesError
from miniplaces.models import create_model, model_card

VARIANTS = ("fp32", "channels_last", "bf16", "bf16+channels_last")  # the default set
# A variant is fp32 or these features joined by "+" in this order (`bf16+channels_last+compile`); `compile`
# runs both loops through `torch.compile`, whose compilation falls in the untimed warm-up round.
FEATURES = ("bf16", "channels_last", "compile")


def variant_features(variant: str) -> tuple[str, ...]:
    """The features a variant name turns on (none for `fp32`); an unknown name is an error that says the form."""
    parts = () if variant == "fp32" else tuple(variant.split("+"))
    if variant != "fp32" and (not all(parts) or any(p not in FEATURES for p in parts)
                              or list(parts) != sorted(set(parts), key=FEATURES.index)):
        raise MiniPlacesError(f"unknown training variant {variant!r}; choose among {', '.join(VARIANTS)}, each "
                              "but fp32 optionally followed by +compile, or compile alone")
    return parts


def check_compile_backend(backend: str) -> str:
    """`backend` when `torch.compile` knows it; else an error naming the ones it knows."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise MiniPlacesError(f"unknown compile backend {backend!r}; torch {torch.__version__} knows "
                              f"{', '.join(sorted(known))}")
    return backend


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


def training_flops_per_image(model: nn.Module, image_size: int, device: torch.device, batch: int = 2) -> float:
    """FLOPs of one forward + backward per image, counted by `FlopCounterMode` on a batch of `batch`.

    The count is analytic (matmuls and convolutions, whatever the dtype), so float32 counts bf16's too.
    """
    x = torch.rand(batch, 3, image_size, image_size, device=device)
    y = torch.zeros(batch, dtype=torch.int64, device=device)
    model.train()
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, windows: int = 5,
                window_s: float = 0.25) -> float:
    """FLOP/s of `size`² matmuls in `dtype` on `device`: the best of `windows` timed windows (one untimed first).

    Each window repeats the product into one preallocated output until at least `window_s` seconds have
    passed: a single timed product (and a fresh 16 MB output each time, page faults included) swung the fp32
    peak of a 2-core CPU between 104 and 165 GFLOP/s from run to run (docs/benchmarks.md).
    """
    import time

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(size, size, generator=gen).to(device, dtype)
    b = torch.rand(size, size, generator=gen).to(device, dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    best = 0.0
    for window in range(windows + 1):
        synchronize(device)
        start, count = time.perf_counter(), 0
        while True:
            torch.matmul(a, b, out=out)
            count += 1
            synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= window_s:
                break
        if window > 0:  # the first window warms up threads, caches and clocks
            best = max(best, 2 * size**3 * count / max(elapsed, 1e-9))
    return best


def measure_train_throughput(
    *,
    model_name: str = "simplenet",
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    image_size: int = 128,
    steps: int = 20,
    rounds: int = 5,
    variants: tuple[str, ...] = VARIANTS,
    peak_size: int = 2048,
    peak_window_s: float = 0.25,
    seed: int = 0,
    compile_backend: str = "inductor",
) -> list[dict[str, Any]]:
    """Rows of {model, variant, precision, loop, images_per_s (median over rounds), ratio, against, flop_per_s,
    peak_flop_per_s, peak_fraction}: the engine's ratio is engine / hand loop of the same variant, the hand
    loop's is against the fp32 hand loop (a `…+compile` variant's: against the same variant uncompiled, when
    it ran); the peak is a `peak_size`² matmul in the variant's dtype. `compile_backend`: `torch.compile`'s."""
    if not variants:
        raise MiniPlacesError(f"no training variant; choose among {', '.join(VARIANTS)} or add +compile")
    features = {variant: variant_features(variant) for variant in variants}
    if any("compile" in parts for parts in features.values()):
        check_compile_backend(compile_backend)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.rand(batch_size, 3, image_size, image_size, generator=gen).to(device),
                torch.randint(0, 100, (batch_size,), generator=gen).to(device)) for _ in range(steps)]
    rows: list[dict[str, Any]] = []
    flops_per_image = training_flops_per_image(_setup(model_name, device, False, seed)[0], image_size, device)
    peaks: dict[torch.dtype, float] = {}
    for variant in variants:
        channels_last = "channels_last" in features[variant]
        amp = torch.bfloat16 if "bf16" in features[variant] else None
        hand_model, hand_opt = _setup(model_name, device, channels_last, seed)
        eng_model, eng_opt = _setup(model_name, device, channels_last, seed)
        if "compile" in features[variant]:  # the optimisers hold the same parameters
            hand_model = torch.compile(hand_model, backend=compile_backend)  # type: ignore[assignment]
            eng_model = torch.compile(eng_model, backend=compile_backend)  # type: ignore[assignment]
        scheduler = warmup_cosine(eng_opt, total_steps=steps * (rounds + 1), warmup_steps=steps)

        runs: dict[str, Callable[[], Any]] = {
            "engine": partial(train_one_epoch, eng_model, batches, eng_opt, scheduler, device=device,
                              criterion=nn.CrossEntropyLoss(), amp_dtype=amp, channels_last=channels_last,
                              progress=False),
            "hand": partial(hand_loop, hand_model, hand_opt, batches, device, amp, channels_last),
        }
        times = medians(time_interleaved(runs, device, repeats=rounds, warmup=1))
        dtype = amp or torch.float32
        if dtype not in peaks:
            peaks[dtype] = matmul_peak(device, dtype, peak_size, window_s=peak_window_s)
        for name in ("hand", "engine"):
            rate = steps * batch_size / times[name]
            rows.append({"model": model_name, "variant": variant, "precision": "bf16" if amp else "fp32",
                         "loop": name, "images_per_s": rate, "flop_per_s": rate * flops_per_image,
                         "peak_flop_per_s": peaks[dtype], "peak_fraction": rate * flops_per_image / peaks[dtype]})
    base = next(r["images_per_s"] for r in rows if r["variant"] == "fp32" and r["loop"] == "hand") \
        if "fp32" in variants else None
    for row in rows:
        if row["loop"] == "engine":
            hand_rate = next(r["images_per_s"] for r in rows if r["variant"] == row["variant"] and r["loop"] == "hand")
            row["ratio"] = row["images_per_s"] / hand_rate
            row["against"] = "hand loop, same variant"
            continue
        eager = row["variant"].removesuffix("+compile")  # against it, what compiling alone is worth
        eager_rate = next((r["images_per_s"] for r in rows
                           if eager != row["variant"] and r["variant"] == eager and r["loop"] == "hand"), None)
        if eager_rate is not None:
            row["ratio"], row["against"] = row["images_per_s"] / eager_rate, f"{eager} hand loop"
        else:
            # Without an fp32 run there is nothing to compare the hand loops with.
            row["ratio"] = row["images_per_s"] / base if base else None
            row["against"] = "fp32 hand loop" if base else "(fp32 not run)"
    return rows


def run(*, device: torch.device, model: str = "simplenet", batch_size: int = 256, image_size: int = 128,
        steps: int = 20, rounds: int = 5, variants: tuple[str, ...] = VARIANTS, peak_size: int = 2048,
        peak_window_s: float = 0.25, seed: int = 0, compile_backend: str = "inductor") -> BenchResult:
    """`measure_train_throughput` as a `BenchResult`."""
    rows = measure_train_throughput(model_name=model, device=device, batch_size=batch_size, image_size=image_size,
                                    steps=steps, rounds=rounds, variants=tuple(variants), peak_size=peak_size,
                                    peak_window_s=peak_window_s, seed=seed, compile_backend=compile_backend)
    settings: dict[str, Any] = {"device": device, "model": model, "batch_size": batch_size,
                                "image_size": image_size, "steps": steps, "rounds": rounds,
                                "variants": list(variants), "peak_size": peak_size,
                                "peak_window_s": peak_window_s, "seed": seed, "compile_backend": compile_backend}
    return BenchResult("train", settings, "engine: the hand loop of the same variant; hand loop: the fp32 hand "
                       "loop, a +compile variant's the same variant uncompiled (images/s, median of interleaved "
                       "rounds)", rows)


def table(result: BenchResult) -> str:
    """Markdown: images/s of each loop and variant, its ratio and what the ratio is against, its training
    FLOP/s and their fraction of the matmul peak of the variant's dtype."""
    lines = ["| Model | Variant | Loop | Images/s | Ratio | Against | GFLOP/s | Peak GFLOP/s | Of peak |",
             "|---|---|---|---:|---:|---|---:|---:|---:|"]
    for r in result.rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['loop']} | {r['images_per_s']:.1f} | "
                     f"{'—' if r['ratio'] is None else format(r['ratio'], '.3f')} | "
                     f"{r['against']} | {r['flop_per_s'] / 1e9:.1f} | {r['peak_flop_per_s'] / 1e9:.1f} | "
                     f"{100 * r['peak_fraction']:.1f} % |")
    return "\n".join(lines) + "\n"
