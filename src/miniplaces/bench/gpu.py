"""One prepared GPU check (issue 10 §2): every CUDA path, throughput of every model, the study's projected time
(and the fast recipe's, issue 13).

`run_gpu_check(device="cuda")` synthesises a 100-class 128×128 dataset in a temporary folder and runs a list
of steps, each wrapped so that a failing path is recorded (FAIL and its error) and the next one still runs:

- `cuda_tests`: the test suite's CUDA tests (`pytest -k cuda`), in a subprocess;
- `unfold_conv`: `UnfoldConv2d` on the device against `F.conv2d` (forward and the three gradients, float64
  and float32), then whole-SimpleNet time and saved memory against `nn.Conv2d` for each columns strategy;
- `loader`: the cache loader with the whole uint8 array on the device and augmentation there;
- `train <model> <combo>`: training images/s of every registered model in fp32 and in the combinations of
  AMP bf16, fp16 with the grad scaler, channels-last and `torch.compile`; peak device memory;
- `ddp`: a one-process DDP run (NCCL on CUDA, gloo on the CPU);
- `attack`, `saliency`: PGD and the saliency maps on the device.

It then projects each study experiment's wall time (train + val images per epoch at the measured rates)
and judges issue 10's goals. `quick=True` runs the same steps at a tiny scale (the CPU test of this
module); steps that need CUDA, or that only pay on it, are skipped with their reason. A time guard skips
the steps that would end after `budget_s`.

The result is a JSON-ready dict; `format_report` renders it as a table. Nothing here prints: `log`
receives one line per finished step.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from miniplaces.bench.conv import saved_bytes
from miniplaces.bench.timing import medians, time_interleaved
from miniplaces.engine.device import synchronize

# The study's experiments: model → epochs (the seed's settings; configs/*.yaml hold the same numbers).
STUDY_EPOCHS: dict[str, int] = {"simplenet": 60, "simplenet_unfold": 10, "vit": 90, "msvit": 90, "resnet18": 60}
STUDY_TRAIN_IMAGES = 100_000
STUDY_VAL_IMAGES = 10_000
# Issue 10's goals (measured on one H100).
GOAL_IMAGES_PER_S: dict[str, float] = {"simplenet": 25_000, "resnet18": 10_000, "vit": 15_000}
GOAL_LOADER_FACTOR = 3.0
GOAL_STUDY_S = 45 * 60
GOAL_UNFOLD_TIME = 1.5
GOAL_UNFOLD_MEMORY = 1.05
# Issue 13's fast recipe (configs/fast.yaml): its model and epochs, and its time goal on one H100. Its
# accuracy goals (43.86 in ≤ 10 epochs, beat 54.09) need a real run: `miniplaces study --scale fast`.
FAST_RECIPE = ("fastnet", 10)
GOAL_FAST_S = 30 * 60
DEFAULT_BUDGET_S = 450.0  # under 8 minutes with the start-up and the final table


@dataclass(frozen=True)
class Scale:
    """Sizes of one run of the check."""

    classes: int
    per_class: int
    val_per_class: int
    image_size: int
    batch_size: int
    train_steps: int  # timed steps per model and combination
    warmup_steps: int
    loader_epochs: int
    conv_repeats: int


FULL = Scale(classes=100, per_class=24, val_per_class=8, image_size=128, batch_size=256, train_steps=50,
             warmup_steps=5, loader_epochs=10, conv_repeats=10)
QUICK = Scale(classes=4, per_class=6, val_per_class=2, image_size=32, batch_size=4, train_steps=2,
              warmup_steps=1, loader_epochs=1, conv_repeats=1)

# Training combinations: name → (autocast dtype or None, grad scaler, channels-last, torch.compile).
COMBOS: dict[str, tuple[torch.dtype | None, bool, bool, bool]] = {
    "fp32": (None, False, False, False),
    "bf16+cl": (torch.bfloat16, False, True, False),
    "fp16+scaler+cl": (torch.float16, True, True, False),
    "bf16+cl+compile": (torch.bfloat16, False, True, True),
}
# Seconds a step is expected to take at most on one H100: the guard skips a step that would end too late.
STEP_ESTIMATE_S: dict[str, float] = {"cuda_tests": 120.0, "compile": 75.0}


class SkipStep(Exception):
    """A step that does not apply here (a CUDA-only path on the CPU); its message is the reason."""


class _Steps:
    """Runs named steps, recording status (PASS / FAIL / SKIP), seconds, details and errors."""

    def __init__(self, budget_s: float, log: Callable[[str], None]) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.log = log
        self.records: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run(self, name: str, fn: Callable[[], dict[str, Any]], estimate_s: float = 0.0) -> dict[str, Any] | None:
        record: dict[str, Any] = {"step": name}
        if self.elapsed() + estimate_s > self.budget_s:
            record.update(status="SKIP", seconds=0.0,
                          reason=f"time guard: {self.elapsed():.0f} s spent of {self.budget_s:.0f} s")
        else:
            t0 = time.perf_counter()
            try:
                record.update(status="PASS", details=fn())
            except SkipStep as skip:
                record.update(status="SKIP", reason=str(skip))
            except Exception as err:  # noqa: BLE001  (any failing path is recorded and the check goes on)
                record.update(status="FAIL", error=f"{type(err).__name__}: {err}",
                              traceback=traceback.format_exc(limit=6))
            record["seconds"] = round(time.perf_counter() - t0, 2)
        self.records.append(record)
        note = record.get("reason") or record.get("error") or _summary(record.get("details") or {})
        self.log(f"[{self.elapsed():6.1f} s] {record['status']:<4} {name}: {note}"[:300])
        return record.get("details") if record["status"] == "PASS" else None


def _summary(details: dict[str, Any]) -> str:
    keys = ("images_per_s", "time_ratio", "memory_ratio", "passed", "failed", "max_rel_error", "final_loss")
    return ", ".join(f"{k}={_fmt(details[k])}" for k in keys if k in details)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _needs_cuda(device: torch.device, what: str) -> None:
    if device.type != "cuda":
        raise SkipStep(f"{what} needs CUDA (device is {device})")


def environment(device: torch.device) -> dict[str, Any]:
    """The machine the numbers belong to."""
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017  (datetime.UTC is Python ≥ 3.11)
    info: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


# ---------------------------------------------------------------------------------------------- steps


def _cuda_tests(device: torch.device, timeout_s: float) -> dict[str, Any]:
    """`pytest -k cuda` over the repository's tests, in a subprocess; pass/fail counts."""
    _needs_cuda(device, "the CUDA tests")
    root = Path(__file__).resolve().parents[3]
    if not (root / "tests").is_dir():
        raise SkipStep(f"no tests/ folder beside the package ({root}): run from a checkout")
    if importlib.util.find_spec("pytest") is None:
        raise SkipStep("pytest is not installed in this Python (the unfold_conv steps check UnfoldConv2d on "
                       "CUDA without it)")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-k", "cuda", "tests"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=max(10.0, timeout_s))
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                     tail[-1] if tail else "")}
    details = {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0),
               "errors": counts.get("errors", counts.get("error", 0)), "skipped": counts.get("skipped", 0),
               "returncode": proc.returncode, "summary": tail[-1] if tail else "", "output_tail": tail[-15:]}
    if proc.returncode != 0 or details["passed"] == 0:
        raise RuntimeError(f"pytest -k cuda: {details['summary'] or 'no output'} (exit {proc.returncode}); "
                           + " | ".join(line for line in tail[-15:] if line.startswith(("FAILED", "ERROR"))))
    return details


def _conv_cases() -> list[tuple[int, int, int, int, int, int, int]]:
    # (N, C_in, C_out, size, kernel, stride, padding): SimpleNet's k×k layers and an odd one
    return [(5, 3, 64, 64, 7, 2, 3), (5, 64, 64, 32, 3, 1, 1), (5, 128, 128, 16, 3, 1, 1), (3, 5, 7, 11, 5, 3, 2),
            (4, 64, 256, 16, 1, 1, 0)]


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _forward_backward(fn: Callable[..., torch.Tensor], x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                      grad: torch.Tensor) -> list[torch.Tensor]:
    """Output and the gradients of input, weight and bias of `fn(x, w, b)` for output gradient `grad`."""
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]  # type: ignore[misc]


def unfold_correctness(device: torch.device) -> dict[str, Any]:
    """Forward and input/weight/bias gradients of `unfold_conv2d` against `F.conv2d` on `device`.

    float64 must agree to 1e-10 (same maths, no TF32); float32 to 1e-2 relative norm, loose enough for
    cuDNN's TF32 convolutions. Each memory mode and columns strategy, the chunk one with a small budget
    so that batches split into several chunks.
    """
    from miniplaces.layers import unfold_conv as uc

    worst: dict[str, float] = {}
    variants = [("cache", "auto", None), ("recompute", "auto", None), ("recompute", "chunk", 3 * 2**20),
                ("recompute", "stream", None)]
    saved_budget = uc.CHUNK_BYTES
    try:
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-2)):
            for memory, columns, budget in variants:
                uc.CHUNK_BYTES = budget or saved_budget
                for n, cin, cout, size, k, s, p in _conv_cases():
                    gen = torch.Generator().manual_seed(n * 1000 + cin)
                    x = torch.randn(n, cin, size, size, generator=gen, dtype=dtype).to(device)
                    w = (torch.randn(cout, cin, k, k, generator=gen, dtype=dtype) / (cin * k * k) ** 0.5).to(device)
                    b = torch.randn(cout, generator=gen, dtype=dtype).to(device)
                    grad = torch.randn(n, cout, *uc.conv_output_size((size, size), (k, k), (s, s), (p, p), (1, 1)),
                                       generator=gen, dtype=dtype).to(device)
                    ours = _forward_backward(
                        lambda a, c, d, s=s, p=p, m=memory, col=columns: uc.unfold_conv2d(a, c, d, s, p, 1, memory=m,
                                                                                           columns=col), x, w, b, grad)
                    ref = _forward_backward(lambda a, c, d, s=s, p=p: F.conv2d(a, c, d, s, p), x, w, b, grad)
                    for name, a, r in zip(("forward", "grad_x", "grad_w", "grad_b"), ours, ref, strict=True):
                        err = _rel_error(a.double(), r.double())
                        key = f"{str(dtype).removeprefix('torch.')} {name}"
                        worst[key] = max(worst.get(key, 0.0), err)
                        if not err <= tol:
                            raise AssertionError(f"{memory}/{columns} {dtype} {name} on "
                                                 f"{(n, cin, cout, size, k, s, p)}: relative error {err:.3g} > {tol}")
    finally:
        uc.CHUNK_BYTES = saved_budget
    return {"max_rel_error": max(worst.values()), "worst": worst,
            "columns_auto": uc.resolve_columns("auto", device)}


def _median_times(steps: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each step, interleaved so that a load change hits all alike."""
    return medians(time_interleaved(steps, device, repeats=repeats, warmup=1))


def unfold_vs_native(device: torch.device, scale: Scale) -> dict[str, Any]:
    """Whole SimpleNet, forward + backward: `UnfoldConv2d` (each memory mode and columns strategy) against
    `nn.Conv2d` with the same weights; time ratio (medians, interleaved) and saved-memory ratio."""
    from miniplaces.layers.unfold_conv import UnfoldConv2d
    from miniplaces.models import create_model
    from miniplaces.models.simplenet import SimpleNet

    native = create_model("simplenet", num_classes=100).to(device)
    variants = {"recompute": ("recompute", "auto"), "cache": ("cache", "auto"),
                "recompute-stream": ("recompute", "stream"), "recompute-chunk": ("recompute", "chunk")}
    if device.type == "cpu":
        variants.pop("recompute-stream")  # auto is stream on the CPU
    else:
        variants.pop("recompute-chunk")  # auto is chunk on CUDA
    models: dict[str, nn.Module] = {"native": native}
    for name, (memory, columns) in variants.items():
        model = SimpleNet(num_classes=100, conv_op=lambda *a, m=memory, c=columns, **k: UnfoldConv2d(
            *a, memory=m, columns=c, **k))
        model.load_state_dict(native.state_dict())
        models[name] = model.to(device)
    x = torch.rand(scale.batch_size, 3, scale.image_size, scale.image_size,
                   generator=torch.Generator().manual_seed(1)).to(device)
    grad = torch.ones(scale.batch_size, 100, device=device)

    def fwd_bwd(model: nn.Module) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(x).backward(grad)
        return step

    times = _median_times({n: fwd_bwd(m) for n, m in models.items()}, scale.conv_repeats, device)
    tf32: dict[str, float] = {}
    if device.type == "cuda":
        # cuDNN convolutions use TF32 by default while float32 matrix products do not: the same comparison
        # with TF32 products too shows how much of the ratio is that default rather than the algorithm
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            tf32 = _median_times({n: fwd_bwd(m) for n, m in models.items()}, scale.conv_repeats, device)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    memory = {n: saved_bytes(lambda m=m: m(x)) for n, m in models.items()}
    peak: dict[str, float | None] = {}
    for n, m in models.items():
        _reset_peak(device)
        fwd_bwd(m)()
        synchronize(device)
        peak[n] = _peak_mb(device)
    details: dict[str, Any] = {
        "batch_size": scale.batch_size, "image_size": scale.image_size,
        "ms": {n: t * 1e3 for n, t in times.items()}, "saved_mb": {n: b / 2**20 for n, b in memory.items()},
        "peak_mb": peak,
        "time_ratios": {n: times[n] / times["native"] for n in variants},
        "memory_ratios": {n: memory[n] / memory["native"] for n in variants},
        "time_ratios_tf32_matmul": {n: tf32[n] / tf32["native"] for n in variants} if tf32 else None,
        "peak_ratios": {n: peak[n] / peak["native"] for n in variants} if peak["native"] else None,
    }
    details["time_ratio"] = details["time_ratios"]["recompute"]
    details["memory_ratio"] = details["memory_ratios"]["recompute"]
    return details


def make_dataset(root: Path, scale: Scale, workers: int) -> dict[str, Any]:
    """The synthetic dataset and its decoded caches (train, val)."""
    from miniplaces.data.cache import build_cache
    from miniplaces.data.synth import synthesize

    t0 = time.perf_counter()
    synthesize(root, classes=scale.classes, per_class=scale.per_class, val_per_class=scale.val_per_class,
               image_size=scale.image_size, seed=0)
    t1 = time.perf_counter()
    for split in ("train", "val"):
        build_cache(root, split, image_size=scale.image_size, workers=workers)
    return {"train_images": scale.classes * scale.per_class, "val_images": scale.classes * scale.val_per_class,
            "synthesize_s": t1 - t0, "cache_s": time.perf_counter() - t1}


def loader_throughput(root: Path, device: torch.device, scale: Scale) -> dict[str, Any]:
    """Images/s of the cache loader making augmented training batches on `device` (the whole uint8 array
    uploaded there once), and of validation batches."""
    from miniplaces.data.cache import open_cache
    from miniplaces.data.loader import CachedLoader

    out: dict[str, Any] = {}
    for split, train in (("train", True), ("val", False)):
        cache = open_cache(root, split, image_size=scale.image_size)
        t0 = time.perf_counter()
        loader = CachedLoader(cache.images, cache.labels, scale.batch_size, train=train, device=device,
                              image_size=scale.image_size, drop_last=False)
        synchronize(device)
        upload_s = time.perf_counter() - t0
        if device.type == "cuda" and loader.images.device != device:
            raise AssertionError(f"the uint8 array is on {loader.images.device}, not {device}")
        x, y = next(iter(loader))  # warm-up, and a look at one batch
        if x.device != device or x.dtype != torch.float32 or not (0 <= float(x.min()) and float(x.max()) <= 1):
            raise AssertionError(f"bad batch: {x.device} {x.dtype} range [{float(x.min())}, {float(x.max())}]")
        synchronize(device)
        t0 = time.perf_counter()
        images = 0
        for _ in range(scale.loader_epochs):
            for x, _y in loader:
                images += x.shape[0]
        synchronize(device)
        seconds = time.perf_counter() - t0
        out[split] = {"images_per_s": images / seconds, "upload_s": upload_s, "images": images}
    return {"images_per_s": out["train"]["images_per_s"], "val_images_per_s": out["val"]["images_per_s"],
            "splits": out, "on_device": str(device)}


def _optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    # the study's optimisers: AdamW for the transformers, SGD with momentum for the CNNs
    if "vit" in name:
        return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def train_throughput(name: str, combo: str, device: torch.device, scale: Scale,
                     compile_backend: str = "inductor") -> dict[str, Any]:
    """Training images/s of model `name` with `combo` through the real loop (`train_one_epoch`), on one
    batch resident on the device (the model's rate alone; the loader is measured apart); then the
    evaluation images/s (`evaluate`) with the same precision and layout."""
    from miniplaces.engine.train import evaluate, train_one_epoch
    from miniplaces.models import create_model

    amp_dtype, use_scaler, channels_last, compiled = COMBOS[combo]
    if use_scaler and device.type != "cuda":
        raise SkipStep("fp16 with the grad scaler is a CUDA path")
    if amp_dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SkipStep("this GPU has no bfloat16")
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model, backend=compile_backend) if compiled else model
    optimizer = _optimizer(name, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(scale.batch_size, 3, scale.image_size, scale.image_size, generator=gen).to(device)
    y = torch.randint(0, 100, (scale.batch_size,), generator=gen).to(device)
    kwargs = {"device": device, "criterion": nn.CrossEntropyLoss(), "scaler": scaler, "amp_dtype": amp_dtype,
              "channels_last": channels_last, "progress": False}
    _reset_peak(device)
    t0 = time.perf_counter()
    train_one_epoch(train_model, [(x, y)] * scale.warmup_steps, optimizer, scheduler, **kwargs)
    warmup_s = time.perf_counter() - t0
    result = train_one_epoch(train_model, [(x, y)] * scale.train_steps, optimizer, scheduler, **kwargs)
    peak = _peak_mb(device)
    ev = kwargs | {}
    for key in ("criterion", "scaler"):
        ev.pop(key)
    evaluate(model, [(x, y)], **ev)  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    ev_result = evaluate(model, [(x, y)] * scale.train_steps, **ev)
    eval_s = time.perf_counter() - t0
    return {"images_per_s": result["images"] / result["time_s"], "eval_images_per_s": ev_result["count"] / eval_s,
            "final_loss": float(result["loss"]), "peak_mb": peak, "warmup_s": warmup_s,
            "batch_size": scale.batch_size}


def ddp_run(device: torch.device, scale: Scale, store_dir: Path) -> dict[str, Any]:
    """One process, world size 1, through `DistributedDataParallel` (NCCL on CUDA, gloo on the CPU), with
    the engine's loop (whose metrics then go through all-reduce)."""
    import torch.distributed as dist

    from miniplaces.engine.distributed import unwrap_model
    from miniplaces.engine.train import train_one_epoch
    from miniplaces.models import create_model

    if not dist.is_available():
        raise SkipStep("this torch has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=(store_dir / "ddp_store").resolve().as_uri(), rank=0,
                            world_size=1, timeout=datetime.timedelta(seconds=120))
    try:
        model = create_model("simplenet", num_classes=100).to(device)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda"
                                                  else None)
        if unwrap_model(ddp) is not model:
            raise AssertionError("unwrap_model did not find the module inside DDP")
        optimizer = _optimizer("simplenet", model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(scale.batch_size, 3, scale.image_size, scale.image_size, generator=gen).to(device)
        y = torch.randint(0, 100, (scale.batch_size,), generator=gen).to(device)
        result = train_one_epoch(ddp, [(x, y)] * (scale.warmup_steps + scale.train_steps), optimizer, scheduler,
                                 device=device, criterion=nn.CrossEntropyLoss(), progress=False)
        if not torch.isfinite(torch.tensor(result["loss"])):
            raise AssertionError(f"non-finite loss {result['loss']}")
        return {"backend": backend, "images_per_s": result["images"] / result["time_s"],
                "final_loss": float(result["loss"]), "world_size": dist.get_world_size()}
    finally:
        dist.destroy_process_group()


def attack_and_saliency(device: torch.device, scale: Scale, what: str) -> dict[str, Any]:
    """PGD (least-likely, the study's attack) or the three saliency maps of SimpleNet on `device`."""
    from miniplaces.models import create_model

    model = create_model("simplenet", num_classes=100).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    n = min(scale.batch_size, 64)
    x = torch.rand(n, 3, scale.image_size, scale.image_size, generator=gen).to(device)
    y = torch.randint(0, 100, (n,), generator=gen).to(device)
    t0 = time.perf_counter()
    if what == "attack":
        from miniplaces.attacks import pgd

        eps = 8 / 255
        adv = pgd(model, x, y, eps=eps, steps=5 if scale is QUICK else 10)
        synchronize(device)
        dist_inf = float((adv - x).abs().max())
        if adv.device != x.device or dist_inf > eps + 1e-6 or float(adv.min()) < 0 or float(adv.max()) > 1:
            raise AssertionError(f"adversarial batch off the ε-ball or [0, 1]: ‖δ‖∞={dist_inf}, {adv.device}")
        flipped = float((model(adv).argmax(1) != model(x).argmax(1)).float().mean())
        return {"seconds_per_batch": time.perf_counter() - t0, "linf": dist_inf, "changed_fraction": flipped,
                "images": n}
    from miniplaces.explain.saliency import saliency

    out: dict[str, Any] = {}
    for method in ("vanilla", "smoothgrad", "gradcam"):
        maps = saliency(model, x, method=method, samples=4)
        synchronize(device)
        if maps.shape != (n, 1, scale.image_size, scale.image_size) or maps.device != x.device \
                or not bool(torch.isfinite(maps).all()):
            raise AssertionError(f"{method}: bad map {tuple(maps.shape)} on {maps.device}")
        out[method] = "ok"
    out["seconds"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------- the whole check


@contextmanager
def _cuda_settings(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning on for the check (fixed shapes), restored afterwards."""
    previous = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def run_gpu_check(device: str = "cuda", quick: bool = False, budget_s: float | None = None,
                  workdir: Path | str | None = None, log: Callable[[str], None] | None = None,
                  models: list[str] | None = None) -> dict[str, Any]:
    """Run every step (see the module docstring); returns environment, steps, throughput table,
    projections and goals, all JSON-ready.

    Args:
        device: "cuda" (or "cuda:N") for the real check, "cpu" with `quick` for the test of the code paths.
        quick: tiny scale; torch.compile uses the "eager" backend on the CPU (no C++ compilation).
        budget_s: steps that would end after this many seconds are skipped (default 450, quick 120).
        workdir: where the synthetic dataset goes (default a temporary folder, removed afterwards).
        models: the models to train (default every registered one).
    """
    from miniplaces.models import list_models

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but this torch sees no CUDA device")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    scale = QUICK if quick else FULL
    budget = budget_s if budget_s is not None else (120.0 if quick else DEFAULT_BUDGET_S)
    steps = _Steps(budget, log or (lambda _: None))
    # the study's models first (in its order), then any other registered one
    model_names = models or [*(m for m in STUDY_EPOCHS if m in list_models()),
                             *(m for m in list_models() if m not in STUDY_EPOCHS)]
    compile_backend = "inductor" if dev.type == "cuda" else "eager"
    tmp = tempfile.TemporaryDirectory(prefix="miniplaces_gpu_check_") if workdir is None else None
    root = Path(tmp.name if tmp is not None else workdir)  # type: ignore[arg-type]
    train: dict[str, dict[str, Any]] = {}
    try:
        with _cuda_settings(dev):
            env = steps.run("environment", lambda: environment(dev))
            steps.run("unfold_conv correctness", lambda: unfold_correctness(dev))
            unfold = steps.run("unfold_conv vs nn.Conv2d", lambda: unfold_vs_native(dev, scale))
            data_ok = steps.run("synthetic dataset", lambda: make_dataset(root / "data", scale,
                                                                          min(8, os.cpu_count() or 1)))
            loader = steps.run("loader", lambda: loader_throughput(root / "data", dev, scale)) if data_ok else None
            if not data_ok:
                steps.records.append({"step": "loader", "status": "SKIP", "reason": "no dataset", "seconds": 0})
            eager_combos = [c for c in COMBOS if not COMBOS[c][3]]
            for name in model_names:
                for combo in eager_combos:
                    train[f"{name} {combo}"] = steps.run(f"train {name} {combo}", lambda n=name, c=combo:
                                                         train_throughput(n, c, dev, scale)) or {}
            steps.run("ddp", lambda: ddp_run(dev, scale, root))
            steps.run("attack", lambda: attack_and_saliency(dev, scale, "attack"))
            steps.run("saliency", lambda: attack_and_saliency(dev, scale, "saliency"))
            # at most 3 minutes, so that the compiled runs after it keep their time
            steps.run("cuda_tests", lambda: _cuda_tests(dev, min(180.0, steps.budget_s - steps.elapsed() - 5)),
                      estimate_s=STEP_ESTIMATE_S["cuda_tests"] if dev.type == "cuda" else 0.0)
            # compilation is the slowest path: last, each model in its own guarded step
            compile_models = model_names if not quick else model_names[:1]
            for name in model_names:
                for combo in (c for c in COMBOS if COMBOS[c][3]):
                    if name not in compile_models:
                        steps.records.append({"step": f"train {name} {combo}", "status": "SKIP", "seconds": 0,
                                              "reason": "quick: torch.compile is checked on the first model only"})
                        continue
                    train[f"{name} {combo}"] = steps.run(
                        f"train {name} {combo}", lambda n=name, c=combo: train_throughput(n, c, dev, scale,
                                                                                          compile_backend),
                        estimate_s=STEP_ESTIMATE_S["compile"] if dev.type == "cuda" else 0.0) or {}
    finally:
        if tmp is not None:
            tmp.cleanup()
    throughput = _throughput_table(model_names, train)
    study = _project_study(throughput, loader)
    goals = _judge_goals(throughput, loader, study, unfold, judged=dev.type == "cuda" and not quick)
    counts = {s: sum(r["status"] == s for r in steps.records) for s in ("PASS", "FAIL", "SKIP")}
    return {"environment": env or {}, "scale": scale.__dict__ | {"quick": quick}, "steps": steps.records,
            "counts": counts, "throughput": throughput, "loader": loader, "unfold": unfold, "study": study,
            "goals": goals, "total_s": round(steps.elapsed(), 1)}


def _throughput_table(model_names: list[str], train: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: fp32 images/s, the fastest combination and its images/s, eval images/s, peak memory."""
    table: dict[str, dict[str, Any]] = {}
    for name in model_names:
        runs = {c: train[f"{name} {c}"] for c in COMBOS if train.get(f"{name} {c}")}
        row: dict[str, Any] = {"fp32": runs.get("fp32", {}).get("images_per_s"),
                               "combos": {c: r["images_per_s"] for c, r in runs.items()}}
        if runs:
            best = max(runs, key=lambda c: runs[c]["images_per_s"])
            row.update(best_combo=best, best=runs[best]["images_per_s"],
                       eval_images_per_s=runs[best]["eval_images_per_s"],
                       peak_mb=max((r["peak_mb"] for r in runs.values() if r["peak_mb"] is not None), default=None))
        table[name] = row
    return table


def _project_study(throughput: dict[str, dict[str, Any]], loader: dict[str, Any] | None) -> dict[str, Any]:
    """Wall time of each study experiment at the measured rates: per epoch, 100K training images through the
    loader and the model in its fastest combination (one after the other on one device), and 10K validation
    images likewise; the whole study is their sum. None where a rate is missing."""

    def project(name: str, epochs: int) -> float | None:
        row = throughput.get(name, {})
        if not row.get("best") or not loader:
            return None
        per_train_image = 1 / row["best"] + 1 / loader["images_per_s"]
        per_val_image = 1 / row["eval_images_per_s"] + 1 / loader["val_images_per_s"]
        return epochs * (STUDY_TRAIN_IMAGES * per_train_image + STUDY_VAL_IMAGES * per_val_image)

    experiments = {name: project(name, epochs) for name, epochs in STUDY_EPOCHS.items()}
    known = [s for s in experiments.values() if s is not None]
    return {"experiments_s": experiments, "epochs": STUDY_EPOCHS,
            "total_s": sum(known) if len(known) == len(experiments) else None,
            "fast_recipe_s": project(*FAST_RECIPE), "fast_recipe": list(FAST_RECIPE),
            "train_images": STUDY_TRAIN_IMAGES, "val_images": STUDY_VAL_IMAGES}


def _judge_goals(throughput: dict[str, dict[str, Any]], loader: dict[str, Any] | None, study: dict[str, Any],
                 unfold: dict[str, Any] | None, judged: bool) -> list[dict[str, Any]]:
    """Issue 10's goals: met / not met (or unknown when not measured; n/a off a GPU or at quick scale)."""
    goals: list[dict[str, Any]] = []

    def add(goal: str, value: float | None, ok: bool | None, shown: str) -> None:
        status = "n/a" if not judged else "unknown" if ok is None else "met" if ok else "not met"
        goals.append({"goal": goal, "value": value, "measured": shown if value is not None else "-",
                      "status": status})

    for name, target in GOAL_IMAGES_PER_S.items():
        best = throughput.get(name, {}).get("best")
        add(f"{name} ≥ {target:,.0f} images/s", best, None if best is None else best >= target,
            f"{best:,.0f} images/s" if best else "")
    fastest = max((r["best"] for r in throughput.values() if r.get("best")), default=None)
    factor = loader["images_per_s"] / fastest if loader and fastest else None
    add(f"loader ≥ {GOAL_LOADER_FACTOR:g}× the fastest model", factor,
        None if factor is None else factor >= GOAL_LOADER_FACTOR, f"{factor:.2f}×" if factor else "")
    total = study.get("total_s")
    add(f"study ≤ {GOAL_STUDY_S // 60} min", total, None if total is None else total <= GOAL_STUDY_S,
        f"{total / 60:.1f} min" if total else "")
    fast = study.get("fast_recipe_s")
    add(f"fast recipe ({FAST_RECIPE[0]}, {FAST_RECIPE[1]} ep) ≤ {GOAL_FAST_S // 60} min", fast,
        None if fast is None else fast <= GOAL_FAST_S, f"{fast / 60:.1f} min" if fast else "")
    t = unfold.get("time_ratio") if unfold else None
    m = unfold.get("memory_ratio") if unfold else None
    add(f"unfold ≤ {GOAL_UNFOLD_TIME}× time, ≤ {GOAL_UNFOLD_MEMORY}× saved memory", t,
        None if t is None or m is None else t <= GOAL_UNFOLD_TIME and m <= GOAL_UNFOLD_MEMORY,
        f"{t:.2f}× time, {m:.2f}× memory" if t is not None and m is not None else "")
    return goals


def format_report(result: dict[str, Any]) -> str:
    """The result as plain-text tables: steps, throughput, study projection, goals."""
    env = result["environment"]
    lines = [f"miniplaces GPU check: {env.get('gpu', env.get('device', '?'))}, torch {env.get('torch', '?')}, "
             f"CUDA {env.get('cuda', '-')}, {env.get('date', '?')}, scale "
             f"{'quick' if result['scale']['quick'] else 'full'}, {result['total_s']} s", ""]
    lines.append(f"{'step':<40} {'status':<6} {'s':>6}  note")
    for r in result["steps"]:
        note = r.get("reason") or r.get("error") or _summary(r.get("details") or {})
        lines.append(f"{r['step']:<40} {r['status']:<6} {r.get('seconds', 0):>6.1f}  {note}"[:160])
    c = result["counts"]
    lines += [f"{c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped", ""]
    lines.append(f"{'model':<18} {'fp32 img/s':>11} {'best img/s':>11} {'best combination':<18} {'eval img/s':>11} "
                 f"{'peak MB':>9} {'study epochs':>12} {'projected':>10}")
    study = result["study"]
    for name, row in result["throughput"].items():
        proj = study["experiments_s"].get(name)
        lines.append(f"{name:<18} {_num(row.get('fp32')):>11} {_num(row.get('best')):>11} "
                     f"{row.get('best_combo', '-'):<18} {_num(row.get('eval_images_per_s')):>11} "
                     f"{_num(row.get('peak_mb')):>9} {STUDY_EPOCHS.get(name, '-')!s:>12} "
                     f"{'-' if proj is None else f'{proj / 60:.1f} min':>10}")
    loader = result["loader"]
    if loader:
        lines.append(f"loader: {loader['images_per_s']:,.0f} train images/s, {loader['val_images_per_s']:,.0f} val "
                     f"images/s on {loader['on_device']}")
    total = study["total_s"]
    lines.append(f"whole study (100K train + 10K val per epoch): "
                 f"{'-' if total is None else f'{total / 60:.1f} min'}")
    fast = study.get("fast_recipe_s")
    lines.append(f"fast recipe (configs/fast.yaml: {FAST_RECIPE[0]}, {FAST_RECIPE[1]} epochs, same images): "
                 f"{'-' if fast is None else f'{fast / 60:.1f} min'}")
    unfold = result["unfold"]
    if unfold:
        lines.append("unfold vs nn.Conv2d, whole SimpleNet: " + ", ".join(
            f"{n} {unfold['time_ratios'][n]:.2f}× time {unfold['memory_ratios'][n]:.2f}× memory"
            for n in unfold["time_ratios"]))
        if unfold.get("time_ratios_tf32_matmul"):
            lines.append("  with TF32 matrix products too: " + ", ".join(
                f"{n} {r:.2f}× time" for n, r in unfold["time_ratios_tf32_matmul"].items()))
        if unfold.get("peak_ratios"):
            lines.append("  peak device memory of a step: " + ", ".join(
                f"{n} {r:.2f}×" for n, r in unfold["peak_ratios"].items()))
    lines += ["", f"{'goal':<48} {'measured':<28} status"]
    for g in result["goals"]:
        lines.append(f"{g['goal']:<48} {g['measured']:<28} {g['status']}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
