"""benchmarks/gpu_check.py at its CPU scale (`--device cpu --quick`): every step's code path runs, so the
GPU check cannot rot before a GPU is at hand; a failing step is recorded and the check goes on."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

import miniplaces.bench.train as train_bench
from miniplaces.bench import gpu, projection
from miniplaces.bench.projection import load_study
from miniplaces.bench.result import BenchResult
from miniplaces.engine.muon import MuonSGD
from miniplaces.models import model_card

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
TORCH_THREADS = 1


def test_quick_cpu_check_runs_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "check.json"
    code = runpy.run_path(str(SCRIPT))["main"](["--device", "cpu", "--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    status = {r["step"]: r["status"] for r in result["steps"]}
    assert code == 0 and result["counts"]["FAIL"] == 0, [r for r in result["steps"] if r["status"] == "FAIL"]
    study = load_study()
    models = [e.model for e in study.experiments]
    for step in ["unfold_conv correctness", "unfold_conv vs nn.Conv2d", "synthetic dataset", "loader", "ddp",
                 "attack", "saliency", "train simplenet bf16+cl+compile", *(f"eval {m}" for m in models),
                 *(f"train {m} {c}" for m in models for c in ("fp32", "bf16+cl"))]:
        assert status[step] == "PASS", step
    # CUDA-only paths are skipped with their reason, never silently
    skipped = [r for r in result["steps"] if r["status"] == "SKIP"]
    assert {r["step"] for r in skipped} >= {"cuda_tests", "train vit fp16+scaler+cl"}
    assert all(r["reason"] for r in skipped)
    # numbers for every model and experiment, and every goal listed (not judged at this scale)
    assert all(result["throughput"][m]["fp32"] > 0 for m in models)
    assert set(result["study"]["experiments_s"]) == {e.name for e in study.experiments}
    assert result["study"]["total_s"] > 0 and result["loader"]["per_sample_images_per_s"] > 0
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


def test_the_train_steps_report_what_the_registered_train_benchmark_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []

    def fake_run(*, device: torch.device, **options: object) -> BenchResult:
        calls.append(options)
        rate = 1000.0 if options["variants"] == ("fp32",) else 3000.0
        return BenchResult("train", {}, "", [{"variant": "x", "loop": "hand", "images_per_s": rate / 2, "ratio": 1.0},
                                             {"variant": "x", "loop": "engine", "images_per_s": rate, "ratio": 2.0}])

    monkeypatch.setattr(train_bench, "run", fake_run)
    details = {combo: gpu.train_throughput("vit", combo, torch.device("cpu"), gpu.QUICK) for combo in gpu.BENCH_COMBOS}
    assert details["fp32"]["images_per_s"] == 1000.0 and details["bf16+cl"]["images_per_s"] == 3000.0
    assert details["fp32"]["engine_vs_hand_loop"] == 2.0
    assert [c["variants"] for c in calls] == [("fp32",), ("bf16+channels_last",)]
    assert all(c["model"] == "vit" and c["batch_size"] == gpu.QUICK.batch_size for c in calls)


@pytest.mark.parametrize("name", ["vit", "msvit", "simplenet", "fastnet"])
def test_the_optimiser_is_the_model_cards(name: str) -> None:
    optimizer, lr, weight_decay = model_card(name).optimizer_defaults()
    built = gpu._optimizer(name, torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3), torch.nn.Linear(1, 2)))
    assert type(built) is {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "muon": MuonSGD}[optimizer]
    assert built.param_groups[0]["lr"] == lr and max(g["weight_decay"] for g in built.param_groups) == weight_decay


def test_projection_adds_train_and_val_time_per_epoch_at_the_measured_rates() -> None:
    study = projection.Study((projection.Experiment("a", "m", 2), projection.Experiment("b", "n", 3)),
                             projection.Experiment("fast", "m", 1), train_images=1000, val_images=100)
    throughput = projection.throughput_table(
        {"m": {"fp32": {"images_per_s": 100.0, "peak_mb": 5.0}, "bf16+cl": {"images_per_s": 250.0, "peak_mb": 3.0}},
         "n": {}},
        {"m": {"images_per_s": 500.0}})
    assert throughput["m"]["best_combo"] == "bf16+cl" and throughput["m"]["peak_mb"] == 5.0
    loader = {"images_per_s": 1000.0, "val_images_per_s": 2000.0}
    projected = projection.project_study(study, throughput, loader)
    # per epoch: 1000 × (1/250 + 1/1000) + 100 × (1/500 + 1/2000) = 5 + 0.25 s
    assert projected["experiments_s"]["a"] == pytest.approx(2 * 5.25)
    assert projected["fast_recipe_s"] == pytest.approx(5.25)
    assert projected["experiments_s"]["b"] is None and projected["total_s"] is None  # n has no rate
    goals = projection.judge_goals(throughput, loader, projected, None, judged=True)
    assert {g["status"] for g in goals} == {"unknown", "met"}  # the fast recipe's 5 s is within its 30 min
