"""benchmarks/gpu_check.py at its CPU scale (`--device cpu --quick`): every step's code path runs, so the
GPU check cannot rot before a GPU is at hand; a failing step is recorded and the check goes on."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from miniplaces.bench import gpu

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
TORCH_THREADS = 1


def test_quick_cpu_check_runs_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "check.json"
    code = runpy.run_path(str(SCRIPT))["main"](["--device", "cpu", "--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    status = {r["step"]: r["status"] for r in result["steps"]}
    assert code == 0 and result["counts"]["FAIL"] == 0, [r for r in result["steps"] if r["status"] == "FAIL"]
    models = list(gpu.STUDY_EPOCHS)
    for step in ["unfold_conv correctness", "unfold_conv vs nn.Conv2d", "synthetic dataset", "loader", "ddp",
                 "attack", "saliency", "train simplenet bf16+cl+compile",
                 *(f"train {m} {c}" for m in models for c in ("fp32", "bf16+cl"))]:
        assert status[step] == "PASS", step
    # CUDA-only paths are skipped with their reason, never silently
    skipped = [r for r in result["steps"] if r["status"] == "SKIP"]
    assert {r["step"] for r in skipped} >= {"cuda_tests", "train vit fp16+scaler+cl"}
    assert all(r["reason"] for r in skipped)
    # numbers for every model and experiment, and every goal listed (not judged at this scale)
    assert all(result["throughput"][m]["fp32"] > 0 for m in models)
    assert set(result["study"]["experiments_s"]) == set(models) and result["study"]["total_s"] > 0
    assert result["loader"]["images_per_s"] > 0 and result["unfold"]["memory_ratio"] == 1.0
    assert [g["status"] for g in result["goals"]] == ["n/a"] * 7
    assert "whole study" in printed and "unfold ≤ 1.5× time" in printed and "PASS" in printed
    # the fast recipe's model is trained too, and its 10 epochs projected
    assert result["throughput"]["fastnet"]["fp32"] > 0 and result["study"]["fast_recipe_s"] > 0
    assert "fast recipe (configs/fast.yaml: fastnet, 10 epochs" in printed


def test_a_failing_step_is_recorded_and_the_check_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("the loader broke")

    monkeypatch.setattr(gpu, "loader_throughput", broken)
    lines: list[str] = []
    result = gpu.run_gpu_check("cpu", quick=True, models=["simplenet"], log=lines.append)
    by_step = {r["step"]: r for r in result["steps"]}
    assert by_step["loader"]["status"] == "FAIL" and "the loader broke" in by_step["loader"]["error"]
    assert by_step["train simplenet fp32"]["status"] == "PASS" and by_step["attack"]["status"] == "PASS"
    assert result["study"]["total_s"] is None  # no loader rate: no projection, rather than a wrong one
    assert any("FAIL loader: RuntimeError: the loader broke" in line for line in lines)


def test_time_guard_skips_the_remaining_steps() -> None:
    result = gpu.run_gpu_check("cpu", quick=True, budget_s=0.0, models=["simplenet"])
    assert result["counts"]["PASS"] == 0 and result["counts"]["FAIL"] == 0
    assert all(r["reason"].startswith("time guard") for r in result["steps"] if r["step"] != "loader")
    assert "-" in gpu.format_report(result)
