"""The benchmark registry, the shared timing helper and the result record (no timed assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from miniplaces.bench import timing
from miniplaces.bench.registry import BENCHMARKS, Benchmark, Option, get_benchmark, names
from miniplaces.bench.result import BenchResult, this_machine
from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import atomic_write_json


def test_time_interleaved_alternates_the_order_and_times_every_round(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    synced: list[str] = []
    monkeypatch.setattr(timing, "synchronize", lambda device: synced.append(str(device)))
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.time_interleaved(candidates, "cpu", repeats=3, warmup=1)
    assert calls == list("abc" "abc" "cba" "abc")  # warm-up, then rounds reversed every other time
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert len(synced) == 2 * 9  # before and after every timed call, none around the warm-up
    assert timing.medians({"a": [3.0, 1.0, 2.0]}) == {"a": 2.0}


def test_resolve_defaults_quick_and_given() -> None:
    bench = Benchmark("toy", "nowhere", "a toy", (Option("size", 128, "side", quick=16, minimum=8),
                                                  Option("flag", True, "switch", type=bool)))
    assert bench.resolve() == {"size": 128, "flag": True}
    assert bench.resolve(quick=True) == {"size": 16, "flag": True}
    assert bench.resolve({"size": 64, "flag": None}, quick=True) == {"size": 64, "flag": True}
    with pytest.raises(MiniPlacesError, match="benchmark 'toy' has no option 'sise'; its options are size, flag"):
        bench.resolve({"sise": 64})
    with pytest.raises(MiniPlacesError, match="size is 4; it must be at least 8"):
        bench.resolve({"size": 4})


def test_registry_entries_match_their_run_functions() -> None:
    import inspect

    for name, bench in BENCHMARKS.items():
        assert get_benchmark(name) is bench
        module = bench.load()
        parameters = inspect.signature(module.run).parameters
        assert set(parameters) == {"device"} | {option.name for option in bench.options}, name
        for option in bench.options:  # the registry's default is the function's default
            default = parameters[option.name].default
            assert default == option.default, (name, option.name)
        assert callable(module.table)
    with pytest.raises(MiniPlacesError, match="unknown benchmark 'gpu'; registered: conv, data, train, attack"):
        get_benchmark("gpu")
    assert names(" fp32, bf16 ,,") == ("fp32", "bf16")


def test_result_round_trips_through_json(tmp_path: Path) -> None:
    result = BenchResult("toy", {"device": torch.device("cpu"), "root": Path("/data")}, "itself",
                         [{"name": "x", "ratio": 1.0}])
    path = atomic_write_json(tmp_path / "toy.json", result.to_dict())
    back = BenchResult.from_dict(json.loads(path.read_text()))
    assert back.settings == {"device": "cpu", "root": "/data"} and back.rows == result.rows
    assert back.machine == result.machine
    assert back.header().splitlines()[0] == f"toy on {result.machine.describe()}"


def test_machine_names_cpu_threads_and_versions() -> None:
    machine = this_machine("cpu")
    assert machine.torch == torch.__version__ and machine.torch_threads == torch.get_num_threads()
    assert machine.cpu and machine.date.endswith("Z")
    described = machine.describe()
    assert machine.cpu in described and f"torch {torch.__version__}" in described
    assert ("GPU: none" in described) == (machine.gpu is None)


def test_train_benchmark_reports_flops_and_peak_fraction_per_precision() -> None:
    from miniplaces.bench import train as bench_train
    from miniplaces.models import create_model

    result = get_benchmark("train").run(torch.device("cpu"), {"variants": ("fp32", "bf16"), "image_size": 16},
                                        quick=True)
    assert [(r["variant"], r["loop"]) for r in result.rows] == [("fp32", "hand"), ("fp32", "engine"),
                                                                 ("bf16", "hand"), ("bf16", "engine")]
    assert {r["precision"] for r in result.rows} == {"fp32", "bf16"} and {r["model"] for r in result.rows} == {
        "simplenet"}
    for r in result.rows:
        assert 0 < r["peak_fraction"] < float("inf") and r["peak_flop_per_s"] > 0
        assert r["flop_per_s"] == pytest.approx(r["peak_fraction"] * r["peak_flop_per_s"])
    # one peak per dtype, measured once and shared by that precision's rows
    assert len({(r["precision"], r["peak_flop_per_s"]) for r in result.rows}) == 2
    assert "Of peak" in bench_train.table(result) and "bf16" in bench_train.table(result)
    # The FLOP count is what runs: a linear layer on the images is 2·in·out per image forward, as much for
    # its weight gradient, and no input gradient (images need none); a second layer adds its input gradient.
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5, bias=False))
    assert bench_train.training_flops_per_image(linear, 4, torch.device("cpu")) == 2 * 2 * 48 * 5
    linear.append(torch.nn.Linear(5, 7, bias=False))
    assert bench_train.training_flops_per_image(linear, 4, torch.device("cpu")) == 2 * 2 * 48 * 5 + 3 * 2 * 5 * 7
    simplenet = bench_train.training_flops_per_image(create_model("simplenet", num_classes=100), 16,
                                                     torch.device("cpu"))
    assert simplenet == pytest.approx(result.rows[0]["flop_per_s"] / result.rows[0]["images_per_s"])


def test_train_benchmark_compile_variant_is_compiled_and_compared_with_its_eager_twin() -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    result = get_benchmark("train").run(
        torch.device("cpu"), {"variants": ("bf16", "bf16+compile"), "image_size": 16, "compile_backend": "eager"},
        quick=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the models went through dynamo (the two share a graph)
    rows = {(r["variant"], r["loop"]): r for r in result.rows}
    compiled, eager = rows[("bf16+compile", "hand")], rows[("bf16", "hand")]
    assert compiled["against"] == "bf16 hand loop" and compiled["precision"] == "bf16"
    assert compiled["ratio"] == pytest.approx(compiled["images_per_s"] / eager["images_per_s"])
    assert rows[("bf16+compile", "engine")]["against"] == "hand loop, same variant"
    torch._dynamo.reset()


def test_train_benchmark_refuses_an_unknown_compile_backend_before_training() -> None:
    with pytest.raises(MiniPlacesError, match=r"unknown compile backend 'inductr'; torch .* knows .*inductor"):
        get_benchmark("train").run(torch.device("cpu"), {"variants": ("compile",), "compile_backend": "inductr"},
                                   quick=True)


def test_optim_benchmark_steps_each_optimiser_and_muon_in_the_dtype_its_row_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import miniplaces.engine.muon as muon

    dtypes = []
    orthogonalize = muon.orthogonalize

    def recording(matrix: torch.Tensor, **kwargs: object) -> torch.Tensor:
        dtypes.append(kwargs["dtype"])
        return orthogonalize(matrix, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(muon, "orthogonalize", recording)
    result = get_benchmark("optim").run(torch.device("cpu"), {"repeats": 2}, quick=True)
    assert result.rows[0]["name"] == "forward+backward (4 images at 16 px, bf16)"
    rows = {"forward+backward": result.rows[0]} | {r["name"]: r for r in result.rows[1:]}
    assert list(rows)[1:] == ["sgd", "adamw", "muon (Newton–Schulz in bf16)", "muon (Newton–Schulz in float32)"]
    assert rows["sgd"]["ratio"] == 1.0 and rows["forward+backward"]["share"] is None
    for name in list(rows)[1:]:
        step, pass_ms = rows[name]["ms_per_step"], rows["forward+backward"]["ms_per_step"]
        assert rows[name]["share"] == pytest.approx(step / (pass_ms + step))
    # AdamW keeps two moments per parameter, SGD and Muon one momentum buffer.
    assert rows["adamw"]["state_mb"] == pytest.approx(2 * rows["sgd"]["state_mb"])
    assert rows["muon (Newton–Schulz in bf16)"]["state_mb"] == pytest.approx(rows["sgd"]["state_mb"])
    # Warm-up and 2 timed rounds, fastnet's filter banks each step: both dtypes, as many of each.
    assert set(dtypes) == {torch.bfloat16, torch.float32}
    assert dtypes.count(torch.bfloat16) == dtypes.count(torch.float32)
    assert "| muon (Newton–Schulz in float32) |" in get_benchmark("optim").table(result)
