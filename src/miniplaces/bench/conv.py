"""Native `nn.Conv2d` against `UnfoldConv2d` (cache and recompute) on SimpleNet's layer shapes.

For each layer: the median forward+backward time of each variant, measured interleaved (native, cache,
recompute, then the reverse order, …) so that a busy machine slows all of them alike, and the memory saved for the
backward.

Counting rule for saved memory: every tensor autograd saves passes through a
`torch.autograd.graph.saved_tensors_hooks` pack hook; we sum the bytes of the distinct storages behind
them, so a tensor saved twice, or saved together with a view of it, counts once (the input and the
weight count once each). It is a byte count, the same on every device, not an allocator reading.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from miniplaces.bench.result import BenchResult
from miniplaces.bench.timing import medians, time_interleaved
from miniplaces.layers.unfold_conv import UnfoldConv2d

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VARIANTS: tuple[str, ...] = ("native", "cache", "recompute")


@dataclass(frozen=True)
class ConvShape:
    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    size: int  # input height = width at 128×128 images
    input_grad: bool  # False for the first layer: nothing upstream needs the image's gradient


def simplenet_shapes(image_size: int = 128) -> list[ConvShape]:
    """SimpleNet's seven convolutions and the spatial size each one sees."""
    s1, s2 = image_size // 4, image_size // 8
    return [
        ConvShape("conv1 7×7/2", 3, 64, 7, 2, 3, image_size, False),
        ConvShape("conv2 1×1", 64, 64, 1, 1, 0, s1, True),
        ConvShape("conv3 3×3", 64, 64, 3, 1, 1, s1, True),
        ConvShape("conv4 1×1", 64, 256, 1, 1, 0, s1, True),
        ConvShape("conv5 1×1", 256, 128, 1, 1, 0, s2, True),
        ConvShape("conv6 3×3", 128, 128, 3, 1, 1, s2, True),
        ConvShape("conv7 1×1", 128, 512, 1, 1, 0, s2, True),
    ]


def saved_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while `step()` builds its graph."""
    storages: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    del out
    return sum(storages.values())


def _modules(shape: ConvShape, device: torch.device) -> dict[str, nn.Module]:
    args = (shape.in_channels, shape.out_channels, shape.kernel_size)
    kwargs = {"stride": shape.stride, "padding": shape.padding, "device": device}
    native = nn.Conv2d(*args, **kwargs)
    modules: dict[str, nn.Module] = {"native": native}
    for memory in ("cache", "recompute"):
        ours = UnfoldConv2d(*args, memory=memory, **kwargs)  # type: ignore[arg-type]
        ours.load_state_dict(native.state_dict())
        modules[memory] = ours
    return modules


def _fwd_bwd(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, bf16: bool = False) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        with _autocast(x.device, bf16):
            out = module(x)
        out.backward(grad.to(out.dtype))

    return step


def _autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """bf16 autocast on `device` when asked (both layers follow it), else a disabled region."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _row(name: str, shape: str, times: dict[str, float], memory: dict[str, int]) -> dict:
    row: dict = {"layer": name, "shape": shape}
    for v in VARIANTS:
        row[f"{v}_ms"] = times[v] * 1e3
        row[f"{v}_saved_mb"] = memory[v] / 2**20
    for v in VARIANTS[1:]:
        row[f"{v}_time_ratio"] = times[v] / times["native"]
        row[f"{v}_memory_ratio"] = memory[v] / memory["native"]
    return row


def run_conv_benchmark(batch_size: int = 64, image_size: int = 128, repeats: int = 7, warmup: int = 1,
                       device: str | torch.device = "cpu", include_simplenet: bool = True,
                       bf16: bool = False) -> list[dict]:
    """One row per SimpleNet convolution, a `total` row (sums over the layers), and optionally a row for
    the whole SimpleNet (native against conv_op="unfold", same weights).

    Each row holds `<variant>_ms` (median forward+backward), `<variant>_saved_mb` (saved for backward,
    counting rule in the module docstring) and, for cache/recompute, `_time_ratio`/`_memory_ratio` to native.
    With `bf16`, every variant runs under bf16 autocast (the layers and the native convolution follow it).
    """
    dev = torch.device(device)
    rows: list[dict] = []
    total_t = dict.fromkeys(VARIANTS, 0.0)
    total_m = dict.fromkeys(VARIANTS, 0)
    generator = torch.Generator().manual_seed(0)
    for shape in simplenet_shapes(image_size):
        x = torch.randn(batch_size, shape.in_channels, shape.size, shape.size, generator=generator).to(dev)
        x.requires_grad_(shape.input_grad)
        modules = _modules(shape, dev)
        with torch.no_grad():
            grad = torch.randn_like(modules["native"](x))
        steps = {v: _fwd_bwd(m, x, grad, bf16) for v, m in modules.items()}
        times = medians(time_interleaved(steps, dev, repeats=repeats, warmup=warmup))
        with _autocast(dev, bf16):
            memory = {v: saved_bytes(lambda m=m, x=x: m(x)) for v, m in modules.items()}
        for v in VARIANTS:
            total_t[v] += times[v]
            total_m[v] += memory[v]
        desc = (f"{shape.in_channels}→{shape.out_channels} k{shape.kernel_size} s{shape.stride} "
                f"p{shape.padding} on {shape.size}×{shape.size}")
        rows.append(_row(shape.name, desc, times, memory))
        del x, grad, modules, steps
    rows.append(_row("total", "sum of the layers", total_t, total_m))
    if include_simplenet:
        rows.append(_simplenet_row(batch_size, image_size, repeats, warmup, dev, bf16))
    return rows


def _simplenet_row(batch_size: int, image_size: int, repeats: int, warmup: int, dev: torch.device,
                   bf16: bool = False) -> dict:
    from miniplaces.models.simplenet import SimpleNet

    native = SimpleNet(num_classes=100).to(dev)
    models: dict[str, nn.Module] = {"native": native}
    for memory in ("cache", "recompute"):
        model = SimpleNet(num_classes=100, conv_op=lambda *a, m=memory, **k: UnfoldConv2d(*a, memory=m, **k))
        model.load_state_dict(native.state_dict())
        models[memory] = model.to(dev)
    x = torch.rand(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(1)).to(dev)
    grad = torch.ones(batch_size, 100, device=dev)
    steps = {v: _fwd_bwd(m, x, grad, bf16) for v, m in models.items()}
    times = medians(time_interleaved(steps, dev, repeats=repeats, warmup=warmup))
    with _autocast(dev, bf16):
        memory = {v: saved_bytes(lambda m=m: m(x)) for v, m in models.items()}
    return _row("simplenet", f"whole model, {batch_size}×3×{image_size}×{image_size}", times, memory)


SUMMARY_LAYERS = ("total", "simplenet")


def run(*, device: torch.device, batch_size: int = 64, image_size: int = 128, repeats: int = 7, warmup: int = 1,
        simplenet: bool = True, bf16: bool = False) -> BenchResult:
    """`run_conv_benchmark` as a `BenchResult` (the ratios are against native `nn.Conv2d`)."""
    rows = run_conv_benchmark(batch_size=batch_size, image_size=image_size, repeats=repeats, warmup=warmup,
                              device=device, include_simplenet=simplenet, bf16=bf16)
    settings: dict[str, Any] = {"device": device, "batch_size": batch_size, "image_size": image_size,
                                "repeats": repeats, "warmup": warmup, "simplenet": simplenet, "bf16": bf16}
    return BenchResult("conv", settings, "native nn.Conv2d, same layer, forward+backward (median, interleaved)",
                       rows)


def table(result: BenchResult) -> str:
    """Markdown: per layer, native time and saved memory, and unfold (cache, recompute) as ratios to native."""
    lines = [
        "| Layer | Shape | Native ms | Cache × | Recompute × | Native saved MB | Cache × | Recompute × |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.rows:
        lines.append(
            f"| {r['layer']} | {r['shape']} | {r['native_ms']:.1f} | {r['cache_time_ratio']:.2f} | "
            f"{r['recompute_time_ratio']:.2f} | {r['native_saved_mb']:.1f} | {r['cache_memory_ratio']:.2f} | "
            f"{r['recompute_memory_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def figure(result: BenchResult) -> Figure:
    """Forward+backward time and memory saved for backward per layer, native vs unfold (cache, recompute)."""
    from matplotlib.figure import Figure

    rows: Sequence[dict[str, Any]] = result.rows
    layers = [r for r in rows if r["layer"] not in SUMMARY_LAYERS]
    total = next((r for r in rows if r["layer"] == "total"), None)
    drawing = Figure(figsize=(12, 4.2))
    width = 0.27
    for index, (suffix, title, unit, ratio) in enumerate(
        (("_ms", "Forward + backward time", "ms (median)", "_time_ratio"),
         ("_saved_mb", "Memory saved for backward", "MB", "_memory_ratio"))
    ):
        axes = drawing.add_subplot(1, 2, index + 1)
        for offset, variant in enumerate(VARIANTS):
            xs = [i + (offset - 1) * width for i in range(len(layers))]
            axes.bar(xs, [r[f"{variant}{suffix}"] for r in layers], width, label=variant, color=f"C{offset}")
        axes.set_xticks(range(len(layers)), [r["layer"] for r in layers], rotation=25, ha="right", fontsize=8)
        if total is not None:
            title += f"\ntotal: cache {total['cache' + ratio]:.2f}×, recompute {total['recompute' + ratio]:.2f}× native"
        axes.set_title(title, fontsize=10)
        axes.set_ylabel(unit)
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize=8)
    drawing.suptitle(result.machine.describe(), fontsize=7)
    drawing.tight_layout()
    return drawing
