"""One prepared GPU check (issue 10 §2): every CUDA path, throughput of every model, the study's projected time
(and the fast recipe's, issue 13).

`run_gpu_check(device="cuda")` synthesises a 100-class 128×128 dataset in a temporary folder and runs a list
of steps, each wrapped so that a failing path is recorded (FAIL and its error) and the next one still runs.
The measurements are the registered benchmarks (`miniplaces.bench.registry.BENCHMARKS`) at the check's scale;
the rest are checks of paths no benchmark covers:

- `cuda_tests`: the test suite's CUDA tests (`pytest -k cuda`), in a subprocess;
- `unfold_conv correctness`: `UnfoldConv2d` on the device against `F.conv2d` (forward and the three gradients,
  float64 and float32);
- `unfold_conv vs nn.Conv2d`: the `conv` benchmark's whole-SimpleNet row (on CUDA also with TF32 products);
- `loader`: the `data` benchmark on the synthetic set, the cache loader making batches on the device;
- `train <model> fp32 | bf16+cl`: the `train` benchmark's engine rate in that variant; `train <model>
  fp16+scaler+cl | bf16+cl+compile`: the engine's loop on the paths that benchmark does not offer (fp16 with
  the grad scaler, `torch.compile`); `eval <model>`: evaluation images/s;
- `ddp`: a one-process DDP run (NCCL on CUDA, gloo on the CPU);
- `attack`, `saliency`: PGD and the saliency maps on the device.

`miniplaces.bench.projection` then projects each study experiment's wall time from these rates and judges
the goals. `quick=True` runs the same steps at a tiny scale (the CPU test of this module); steps that need
CUDA, or that only pay on it, are skipped with their reason. A time guard skips the steps that would end
after `budget_s`. Optimisers are the model cards' (`miniplaces.models.model_card`).

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
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from miniplaces.bench import projection
from miniplaces.bench.conv import VARIANTS as CONV_VARIANTS
from miniplaces.bench.registry import BENCHMARKS
from miniplaces.engine.device import synchronize

if TYPE_CHECKING:
    from miniplaces.bench.result import BenchResult

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
    warmup_steps: int  # untimed steps first, on the engine paths
    conv_repeats: int


FULL = Scale(classes=100, per_class=24, val_per_class=8, image_size=128, batch_size=256, train_steps=30,
             warmup_steps=5, conv_repeats=10)
QUICK = Scale(classes=4, per_class=6, val_per_class=2, image_size=32, batch_size=4, train_steps=2,
              warmup_steps=1, conv_repeats=1)

# Training combinations measured by the `train` benchmark: combination → its variant.
BENCH_COMBOS: dict[str, str] = {"fp32": "fp32", "bf16+cl": "bf16+channels_last"}
# Combinations that benchmark does not offer, run through the engine's loop: name → (autocast dtype, grad
# scaler, torch.compile); all channels-last.
ENGINE_COMBOS: dict[str, tuple[torch.dtype, bool, bool]] = {
    "fp16+scaler+cl": (torch.float16, True, False),
    "bf16+cl+compile": (torch.bfloat16, False, True),
}
COMBOS: tuple[str, ...] = (*BENCH_COMBOS, *ENGINE_COMBOS)
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


def _bench(name: str, device: torch.device, **options: Any) -> BenchResult:
    """The registered benchmark `name` on `device` with these options (the others at their defaults)."""
    return BENCHMARKS[name].run(device, options)


def _whole_simplenet(result: BenchResult) -> dict[str, Any]:
    return next(row for row in result.rows if row["layer"] == "simplenet")


def unfold_vs_native(device: torch.device, scale: Scale) -> dict[str, Any]:
    """The `conv` benchmark's whole-SimpleNet row: forward + backward of `UnfoldConv2d` (cache, recompute)
    against `nn.Conv2d` with the same weights; time ratio (medians, interleaved) and saved-memory ratio."""
    options = {"batch_size": scale.batch_size, "image_size": scale.image_size, "repeats": scale.conv_repeats,
               "warmup": 1, "simplenet": True}
    row = _whole_simplenet(_bench("conv", device, **options))
    ours = [v for v in CONV_VARIANTS if v != "native"]
    details: dict[str, Any] = {
        "batch_size": scale.batch_size, "image_size": scale.image_size,
        "ms": {v: row[f"{v}_ms"] for v in CONV_VARIANTS}, "saved_mb": {v: row[f"{v}_saved_mb"] for v in CONV_VARIANTS},
        "time_ratios": {v: row[f"{v}_time_ratio"] for v in ours},
        "memory_ratios": {v: row[f"{v}_memory_ratio"] for v in ours},
        "time_ratios_tf32_matmul": None,
    }
    if device.type == "cuda":
        # cuDNN convolutions use TF32 by default while float32 matrix products do not: the same comparison
        # with TF32 products too shows how much of the ratio is that default rather than the algorithm
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            tf32 = _whole_simplenet(_bench("conv", device, **options))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        details["time_ratios_tf32_matmul"] = {v: tf32[f"{v}_time_ratio"] for v in ours}
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
    """The `data` benchmark on the synthetic set: images/s of the cache loader making augmented training
    batches on `device` (the whole uint8 array there), of unaugmented (validation) batches, and of the
    per-sample DataLoader it is compared with; every whole batch of the train split after one warm-up."""
    batches = scale.classes * scale.per_class // scale.batch_size - 1
    workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    result = _bench("data", device, root=root, batches=batches, batch_size=scale.batch_size, warmup=1,
                    workers=workers, image_size=scale.image_size)
    on_device = [r for r in result.rows if r["device"] == str(device) and "augmented" in r]
    rate = {augmented: next(r["images_per_s"] for r in on_device if r["augmented"] is augmented)
            for augmented in (True, False)}
    return {"images_per_s": rate[True], "val_images_per_s": rate[False],
            "per_sample_images_per_s": result.rows[0]["images_per_s"], "on_device": str(device),
            "batches": batches, "rows": result.rows}


def _optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of model `name`'s card, with its defaults."""
    from miniplaces.engine.optim import build_optimizer
    from miniplaces.models import model_card

    optimizer, lr, weight_decay = model_card(name).optimizer_defaults()
    return build_optimizer(model, optimizer, lr=lr, weight_decay=weight_decay)


def _check_bf16(dtype: torch.dtype | None, device: torch.device) -> None:
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SkipStep("this GPU has no bfloat16")


def _batch(scale: Scale, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(scale.batch_size, 3, scale.image_size, scale.image_size, generator=gen).to(device)
    return x, torch.randint(0, 100, (scale.batch_size,), generator=gen).to(device)


def train_throughput(name: str, combo: str, device: torch.device, scale: Scale,
                     compile_backend: str = "inductor") -> dict[str, Any]:
    """Training images/s of model `name` in `combo` on one batch resident on the device (the model's rate
    alone; the loader is measured apart): the `train` benchmark's engine row for its variants, else the
    engine's loop (`train_one_epoch`, its own clock) on the path that benchmark lacks; peak device memory."""
    if combo in BENCH_COMBOS:
        _check_bf16(torch.bfloat16 if "bf16" in combo else None, device)
        _reset_peak(device)
        result = _bench("train", device, model=name, batch_size=scale.batch_size, image_size=scale.image_size,
                        steps=scale.train_steps, rounds=1, variants=(BENCH_COMBOS[combo],), seed=0)
        loops = {row["loop"]: row for row in result.rows}
        return {"images_per_s": loops["engine"]["images_per_s"], "engine_vs_hand_loop": loops["engine"]["ratio"],
                "peak_mb": _peak_mb(device), "batch_size": scale.batch_size}
    from miniplaces.engine.train import train_one_epoch
    from miniplaces.models import create_model

    amp_dtype, use_scaler, compiled = ENGINE_COMBOS[combo]
    if use_scaler and device.type != "cuda":
        raise SkipStep("fp16 with the grad scaler is a CUDA path")
    _check_bf16(amp_dtype, device)
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).to(device).to(memory_format=torch.channels_last)
    train_model = torch.compile(model, backend=compile_backend) if compiled else model
    optimizer = _optimizer(name, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    batch = _batch(scale, device)
    kwargs = {"device": device, "criterion": nn.CrossEntropyLoss(), "amp_dtype": amp_dtype, "channels_last": True,
              "scaler": torch.amp.GradScaler("cuda") if use_scaler else None, "progress": False}
    _reset_peak(device)
    t0 = time.perf_counter()
    train_one_epoch(train_model, [batch] * scale.warmup_steps, optimizer, scheduler, **kwargs)
    warmup_s = time.perf_counter() - t0
    result = train_one_epoch(train_model, [batch] * scale.train_steps, optimizer, scheduler, **kwargs)
    return {"images_per_s": result["images"] / result["time_s"], "final_loss": float(result["loss"]),
            "peak_mb": _peak_mb(device), "warmup_s": warmup_s, "batch_size": scale.batch_size}


def eval_throughput(name: str, device: torch.device, scale: Scale) -> dict[str, Any]:
    """Evaluation images/s of model `name` (`evaluate`) in bf16, channels-last (float32 on a GPU without
    bf16), on one batch resident on the device."""
    from miniplaces.engine.train import evaluate
    from miniplaces.models import create_model

    amp_dtype = None if device.type == "cuda" and not torch.cuda.is_bf16_supported() else torch.bfloat16
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).to(device).to(memory_format=torch.channels_last)
    batch = _batch(scale, device)
    kwargs = {"device": device, "amp_dtype": amp_dtype, "channels_last": True, "progress": False}
    evaluate(model, [batch], **kwargs)  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    result = evaluate(model, [batch] * scale.train_steps, **kwargs)
    return {"images_per_s": result["count"] / (time.perf_counter() - t0),
            "precision": "bf16" if amp_dtype else "fp32"}


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
    study = projection.load_study()
    # the study's models first (in its order), then any other registered one
    model_names = models or [*(m for m in study.models() if m in list_models()),
                             *(m for m in list_models() if m not in study.models())]
    compile_backend = "inductor" if dev.type == "cuda" else "eager"
    tmp = tempfile.TemporaryDirectory(prefix="miniplaces_gpu_check_") if workdir is None else None
    root = Path(tmp.name if tmp is not None else workdir)  # type: ignore[arg-type]
    train: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in model_names}
    evals: dict[str, dict[str, Any]] = {}

    def train_step(name: str, combo: str, estimate_s: float = 0.0) -> None:
        details = steps.run(f"train {name} {combo}", lambda: train_throughput(name, combo, dev, scale,
                                                                               compile_backend), estimate_s)
        if details:
            train[name][combo] = details

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
            for name in model_names:
                for combo in (*BENCH_COMBOS, "fp16+scaler+cl"):
                    train_step(name, combo)
                evals[name] = steps.run(f"eval {name}", lambda n=name: eval_throughput(n, dev, scale)) or {}
            steps.run("ddp", lambda: ddp_run(dev, scale, root))
            steps.run("attack", lambda: attack_and_saliency(dev, scale, "attack"))
            steps.run("saliency", lambda: attack_and_saliency(dev, scale, "saliency"))
            # at most 3 minutes, so that the compiled runs after it keep their time
            steps.run("cuda_tests", lambda: _cuda_tests(dev, min(180.0, steps.budget_s - steps.elapsed() - 5)),
                      estimate_s=STEP_ESTIMATE_S["cuda_tests"] if dev.type == "cuda" else 0.0)
            # compilation is the slowest path: last, each model in its own guarded step
            compile_models = model_names if not quick else model_names[:1]
            for name in model_names:
                if name not in compile_models:
                    steps.records.append({"step": f"train {name} bf16+cl+compile", "status": "SKIP", "seconds": 0,
                                          "reason": "quick: torch.compile is checked on the first model only"})
                    continue
                train_step(name, "bf16+cl+compile", STEP_ESTIMATE_S["compile"] if dev.type == "cuda" else 0.0)
    finally:
        if tmp is not None:
            tmp.cleanup()
    throughput = projection.throughput_table(train, evals)
    projected = projection.project_study(study, throughput, loader)
    goals = projection.judge_goals(throughput, loader, projected, unfold, judged=dev.type == "cuda" and not quick)
    counts = {s: sum(r["status"] == s for r in steps.records) for s in ("PASS", "FAIL", "SKIP")}
    return {"environment": env or {}, "scale": scale.__dict__ | {"quick": quick}, "steps": steps.records,
            "counts": counts, "throughput": throughput, "loader": loader, "unfold": unfold, "study": projected,
            "goals": goals, "total_s": round(steps.elapsed(), 1)}


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
                     f"{_num(row.get('peak_mb')):>9} {study['epochs'].get(name, '-')!s:>12} "
                     f"{'-' if proj is None else f'{proj / 60:.1f} min':>10}")
    loader = result["loader"]
    if loader:
        lines.append(f"loader: {loader['images_per_s']:,.0f} train images/s, {loader['val_images_per_s']:,.0f} val "
                     f"images/s on {loader['on_device']}")
    total = study["total_s"]
    lines.append(f"whole study ({study['train_images']:,} train + {study['val_images']:,} val images per epoch): "
                 f"{'-' if total is None else f'{total / 60:.1f} min'}")
    fast = study.get("fast_recipe_s")
    model, epochs = study["fast_recipe"]
    lines.append(f"fast recipe (configs/{projection.FAST_PRESET}.yaml: {model}, {epochs} epochs, same images): "
                 f"{'-' if fast is None else f'{fast / 60:.1f} min'}")
    unfold = result["unfold"]
    if unfold:
        lines.append("unfold vs nn.Conv2d, whole SimpleNet: " + ", ".join(
            f"{n} {unfold['time_ratios'][n]:.2f}× time {unfold['memory_ratios'][n]:.2f}× memory"
            for n in unfold["time_ratios"]))
        if unfold.get("time_ratios_tf32_matmul"):
            lines.append("  with TF32 matrix products too: " + ", ".join(
                f"{n} {r:.2f}× time" for n, r in unfold["time_ratios_tf32_matmul"].items()))
    lines += ["", f"{'goal':<48} {'measured':<28} status"]
    for g in result["goals"]:
        lines.append(f"{g['goal']:<48} {g['measured']:<28} {g['status']}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
