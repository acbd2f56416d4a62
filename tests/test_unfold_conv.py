"""The unfold convolution against oracles we did not write: F.conv2d, nn.Conv2d and gradcheck."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniplaces.errors import MiniPlacesError
from miniplaces.layers import UnfoldConv2d, UnfoldConv2dFunction, unfold_conv2d
from miniplaces.layers import unfold_conv as uc
from miniplaces.models.simplenet import SimpleNet

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
MODES = ["cache", "recompute"]

TORCH_THREADS = 1  # tiny tensors: threads only add contention (gradcheck runs 20× faster on one thread)


# (N, C_in, C_out, H, W, kernel, stride, padding, dilation): every kernel, stride 1–3, padding 0–3,
# dilation 1–2, non-square inputs and kernels, batch 1, the 1×1 fast paths (strided and padded).
GRADCHECK_CASES = [
    (1, 2, 3, 5, 4, 1, 1, 0, 1),
    (2, 2, 2, 6, 5, 1, 2, 0, 1),
    (1, 2, 2, 4, 3, 1, 1, 1, 1),
    (2, 2, 3, 6, 7, 3, 1, 1, 1),
    (1, 3, 2, 7, 5, 3, 2, 2, 2),
    (1, 2, 2, 8, 7, 5, 3, 2, 1),
    (1, 1, 2, 9, 8, 7, 2, 3, 1),
    (2, 2, 2, 5, 9, (3, 1), (1, 2), (1, 0), (2, 1)),
    (1, 2, 1, 4, 4, 3, 1, 0, 1),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck_float64(case: tuple, mode: str) -> None:
    n, cin, cout, h, w, k, s, p, d = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(n, cin, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(cout, cin, kh, kw, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(cout, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: unfold_conv2d(a, b, c, s, p, d, memory=mode),
                                    (x, weight, bias))


def _random_case(rng: random.Random) -> dict:
    k = rng.choice([1, 1, 2, 3, 5, 7])
    d = rng.choice([1, 1, 2])
    s = rng.choice([1, 2, 3])
    p = rng.choice([0, 1, 2, 3])
    span = d * (k - 1) + 1
    return {"n": rng.choice([1, 2, 3]), "cin": rng.choice([1, 3, 4, 8]), "cout": rng.choice([1, 5, 16]),
            "h": rng.randint(max(1, span - 2 * p), span + 9), "w": rng.randint(max(1, span - 2 * p), span + 9),
            "k": k, "s": s, "p": p, "d": d, "bias": rng.random() < 0.8}


def _compare_to_conv2d(case: dict, mode: str, device: str, columns: str = "auto") -> None:
    x = torch.randn(case["n"], case["cin"], case["h"], case["w"], device=device)
    weight = torch.randn(case["cout"], case["cin"], case["k"], case["k"], device=device)
    bias = torch.randn(case["cout"], device=device) if case["bias"] else None
    args = (case["s"], case["p"], case["d"])
    leaves = [t.requires_grad_() for t in (x.clone(), weight.clone())]
    ref_leaves = [t.requires_grad_() for t in (x.clone(), weight.clone())]
    b, ref_b = (bias.clone().requires_grad_(), bias.clone().requires_grad_()) if bias is not None else (None, None)
    out = unfold_conv2d(leaves[0], leaves[1], b, *args, memory=mode, columns=columns)
    ref = F.conv2d(ref_leaves[0], ref_leaves[1], ref_b, *args)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, msg=lambda m: f"forward {case}: {m}")
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    for name, a, r in zip(("input", "weight", "bias"), leaves + [b], ref_leaves + [ref_b], strict=True):
        if r is None:
            continue
        torch.testing.assert_close(a.grad, r.grad, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n} {case}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_matches_conv2d_on_random_shapes(mode: str, device: str) -> None:
    rng = random.Random(1234)
    for _ in range(40):
        _compare_to_conv2d(_random_case(rng), mode, device)


@pytest.mark.parametrize("device", DEVICES)
def test_simplenet_layer_shapes_match_conv2d(device: str) -> None:
    # the benchmark's shapes, at a small batch and image so the test stays fast
    for cin, cout, k, s, p, size in [(3, 64, 7, 2, 3, 32), (64, 64, 1, 1, 0, 8), (64, 64, 3, 1, 1, 8),
                                     (64, 256, 1, 1, 0, 8), (128, 128, 3, 1, 1, 4)]:
        for mode in MODES:
            _compare_to_conv2d({"n": 2, "cin": cin, "cout": cout, "h": size, "w": size, "k": k, "s": s, "p": p,
                                "d": 1, "bias": True}, mode, device)


def test_strided_unfold_equals_f_unfold() -> None:
    rng = random.Random(5)
    for _ in range(30):
        case = _random_case(rng)
        x = torch.randn(case["n"], case["cin"], case["h"], case["w"])
        args = ((case["k"], case["k"]), (case["s"],) * 2, (case["p"],) * 2, (case["d"],) * 2)
        ref = F.unfold(x, args[0], dilation=args[3], padding=args[2], stride=args[1])
        assert torch.equal(uc._unfold(x, *args), ref), case


def test_channels_last_and_noncontiguous_inputs() -> None:
    weight = torch.randn(6, 4, 3, 3)
    for x in (torch.randn(2, 4, 9, 7).to(memory_format=torch.channels_last),
              torch.randn(2, 9, 7, 4).permute(0, 3, 2, 1).transpose(2, 3),
              torch.randn(2, 8, 9, 7)[:, ::2]):
        for k_weight in (weight, weight[:, :, 1:2, 1:2]):
            ref = F.conv2d(x, k_weight, padding=0)
            torch.testing.assert_close(unfold_conv2d(x, k_weight), ref, atol=1e-4, rtol=1e-4)


class _CountingFunction(UnfoldConv2dFunction):
    """Records which gradients the backward returned."""

    returned: list[tuple[bool, ...]] = []

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grads = UnfoldConv2dFunction.backward(ctx, grad_out)
        _CountingFunction.returned.append(tuple(g is not None for g in grads[:3]))
        return grads


@pytest.mark.parametrize(("mode", "columns"), [("cache", "auto"), ("recompute", "stream"), ("recompute", "chunk")])
def test_needs_input_grad_is_honoured(mode: str, columns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"fold": 0}
    real_fold = uc._fold

    def counting_fold(*args, **kwargs):
        calls["fold"] += 1
        return real_fold(*args, **kwargs)

    monkeypatch.setattr(uc, "_fold", counting_fold)
    x = torch.randn(2, 3, 8, 8)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    bias = torch.randn(4)
    _CountingFunction.returned.clear()
    _CountingFunction.apply(x, weight, bias, (1, 1), (1, 1), (1, 1), mode, columns).sum().backward()
    assert _CountingFunction.returned == [(False, True, False)]
    assert calls["fold"] == 0 and x.grad is None and bias.grad is None and weight.grad is not None

    x.requires_grad_()
    weight.requires_grad_(False)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = _CountingFunction.apply(x, weight, bias, (1, 1), (1, 1), (1, 1), mode, columns)
    out.sum().backward()
    assert _CountingFunction.returned[-1] == (True, False, False)
    # cache folds the batch at once, and so does one chunk; stream goes image by image
    assert calls["fold"] == (x.shape[0] if columns == "stream" else 1) and x.grad is not None
    # only the weight is kept when no weight gradient is needed: neither the input nor its columns
    assert [t.shape for t in saved] == [weight.shape]


def test_recompute_saves_what_conv2d_saves_and_cache_saves_columns() -> None:
    def saved_shapes(fn) -> list[torch.Size]:
        shapes: list[torch.Size] = []
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        weight = torch.randn(4, 3, 3, 3, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(t.shape) or t, lambda t: t):
            fn(x, weight)
        return sorted(shapes)

    assert saved_shapes(lambda x, w: unfold_conv2d(x, w, padding=1, memory="recompute")) == \
        saved_shapes(lambda x, w: F.conv2d(x, w, padding=1))
    assert torch.Size([2, 27, 64]) in saved_shapes(lambda x, w: unfold_conv2d(x, w, padding=1, memory="cache"))


def test_state_dict_both_ways_and_same_init() -> None:
    kwargs = {"kernel_size": (3, 5), "stride": 2, "padding": (1, 2), "dilation": 1}
    torch.manual_seed(7)
    native = nn.Conv2d(4, 6, **kwargs)
    torch.manual_seed(7)
    ours = UnfoldConv2d(4, 6, **kwargs)
    # same initialisation from the same seed, same names and shapes
    assert ours.state_dict().keys() == native.state_dict().keys()
    for key, value in native.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)

    fresh_native, fresh_ours = nn.Conv2d(4, 6, **kwargs), UnfoldConv2d(4, 6, memory="cache", **kwargs)
    fresh_ours.load_state_dict(native.state_dict())
    fresh_native.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 11, 13)
    torch.testing.assert_close(fresh_ours(x), native(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fresh_native(x), ours(x), atol=1e-5, rtol=1e-5)
    no_bias = UnfoldConv2d(3, 8, 3, bias=False)
    assert no_bias.bias is None and list(no_bias.state_dict()) == ["weight"]
    assert repr(UnfoldConv2d(3, 8, 3, padding=1)) == \
        "UnfoldConv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), memory=recompute)"


def test_simplenet_unfold_matches_native_with_same_weights() -> None:
    native, ours = SimpleNet(num_classes=5), SimpleNet(num_classes=5, conv_op="unfold")
    ours.load_state_dict(native.state_dict())
    x = torch.rand(2, 3, 32, 32)
    out, ref = ours(x), native(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    out.sum().backward()
    ref.sum().backward()
    for (name, a), b in zip(ours.named_parameters(), native.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_clear_errors() -> None:
    conv = UnfoldConv2d(3, 8, 3)
    with pytest.raises(MiniPlacesError, match="expected input of 3 channels, got 4"):
        conv(torch.randn(1, 4, 8, 8))
    with pytest.raises(MiniPlacesError, match="expected a 4-D input .* got a 3-D input"):
        conv(torch.randn(3, 8, 8))
    with pytest.raises(MiniPlacesError, match="input dtype torch.float64 does not match weight dtype torch.float32"):
        conv(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(MiniPlacesError, match="smaller than the kernel"):
        conv(torch.randn(1, 3, 2, 8))
    with pytest.raises(MiniPlacesError, match="groups=1 only, got groups=3"):
        UnfoldConv2d(3, 3, 3, groups=3)
    with pytest.raises(MiniPlacesError, match="memory must be one of"):
        UnfoldConv2d(3, 3, 3, memory="lazy")  # type: ignore[arg-type]
    with pytest.raises(MiniPlacesError, match="padding_mode='zeros' only"):
        UnfoldConv2d(3, 3, 3, padding_mode="reflect")


@CUDA
def test_device_mismatch_is_clear() -> None:
    conv = UnfoldConv2d(3, 8, 3).cuda()
    with pytest.raises(MiniPlacesError, match="input is on cpu but weight is on cuda"):
        conv(torch.randn(1, 3, 8, 8))


def test_conv_benchmark_rows_and_saved_memory() -> None:
    from miniplaces.bench.conv import run_conv_benchmark

    rows = run_conv_benchmark(batch_size=2, image_size=16, repeats=1, warmup=0)
    assert [r["layer"] for r in rows][-2:] == ["total", "simplenet"] and len(rows) == 9
    by_layer = {r["layer"]: r for r in rows}
    # recompute saves exactly what nn.Conv2d saves; cache keeps the columns (9× the input for 3×3)
    assert all(r["recompute_memory_ratio"] == 1.0 for r in rows)
    conv3 = by_layer["conv3 3×3"]  # 64 channels on 4×4: the columns (64·9 rows) replace the input (64 rows)
    assert (conv3["cache_saved_mb"] - conv3["native_saved_mb"]) * 2**20 == 2 * (64 * 9 - 64) * 16 * 4
    assert by_layer["conv2 1×1"]["cache_memory_ratio"] == 1.0  # a 1×1 kernel's columns are its input
    assert all(r[f"{v}_ms"] > 0 for r in rows for v in ("native", "cache", "recompute"))


# The GPU's columns strategy (`chunk`), run on the CPU: chunks of images within a byte budget. A budget
# of one byte forces one image per chunk; 3 images' worth leaves a remainder chunk; the default holds
# these tiny batches whole.
def _budget_for(images: int, case: dict) -> int:
    k = case["cin"] * case["k"] * case["k"]
    h_out, w_out = uc.conv_output_size((case["h"], case["w"]), (case["k"],) * 2, (case["s"],) * 2, (case["p"],) * 2,
                                       (case["d"],) * 2)
    return images * k * h_out * w_out * 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("images_per_chunk", [0, 2, None])
def test_chunked_columns_match_conv2d(images_per_chunk: int | None, device: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(99)
    for _ in range(30):
        case = _random_case(rng)
        case["n"] = rng.choice([1, 3, 5])
        if images_per_chunk is not None:
            monkeypatch.setattr(uc, "CHUNK_BYTES", max(1, _budget_for(images_per_chunk, case)))
        _compare_to_conv2d(case, "recompute", device, columns="chunk")


@pytest.mark.parametrize("budget", [1, 2 * 27 * 20 * 8, 2**30])  # 1 image, 2 of 3 images, all images per chunk
@pytest.mark.parametrize("case", GRADCHECK_CASES[3:6], ids=str)
def test_chunked_gradcheck_float64(case: tuple, budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uc, "CHUNK_BYTES", budget)
    n, cin, cout, h, w, k, s, p, d = case
    x = torch.randn(n + 1, cin, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(cout, cin, k, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(cout, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: unfold_conv2d(a, b, c, s, p, d, memory="recompute", columns="chunk"), (x, weight, bias))


def test_chunked_functions_count_their_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"fold": 0}
    real_fold = uc._fold

    def counting_fold(*args, **kwargs):
        calls["fold"] += 1
        return real_fold(*args, **kwargs)

    monkeypatch.setattr(uc, "_fold", counting_fold)
    x, weight, bias = torch.randn(5, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    budget = 2 * 27 * 64 * 4  # the columns of two images: chunks of 2, 2 and 1
    out = uc.unfold_conv2d_forward_chunked(x, weight, bias, (1, 1), (1, 1), (1, 1), budget_bytes=budget)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1), atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    grad_x, grad_w, grad_b = uc.unfold_conv2d_backward_chunked(grad, x, weight, x.shape, (1, 1), (1, 1), (1, 1),
                                                              budget_bytes=budget)
    assert calls["fold"] == 3
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    F.conv2d(*leaves, padding=1).backward(grad)
    for ours, ref in zip((grad_x, grad_w, grad_b), leaves, strict=True):
        torch.testing.assert_close(ours, ref.grad, atol=1e-4, rtol=1e-4)
    # only the gradients asked for, and no input needed without the weight gradient
    assert uc.unfold_conv2d_backward_chunked(grad, None, weight, x.shape, (1, 1), (1, 1), (1, 1),
                                             (True, False, False), budget)[1:] == (None, None)


def test_columns_strategy_follows_the_device() -> None:
    assert uc.resolve_columns("auto", torch.device("cpu")) == "stream"
    assert uc.resolve_columns("auto", torch.device("cuda", 0)) == "chunk"
    assert uc.resolve_columns("chunk", torch.device("cpu")) == "chunk"
    # The chunk-size policy: one image per chunk on the CPU, the byte budget elsewhere (or when asked).
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    k, length, n = 27, 100, 64
    assert uc.images_per_chunk("auto", cpu, k, length, 4, n) == 1
    assert uc.images_per_chunk("stream", cuda, k, length, 4, n) == 1
    assert uc.images_per_chunk("auto", cuda, k, length, 4, n, budget_bytes=5 * k * length * 4) == 5
    assert uc.images_per_chunk("chunk", cpu, k, length, 4, n, budget_bytes=2**40) == n
    assert uc.images_per_chunk("chunk", cpu, k, length, 4, n, budget_bytes=1) == 1
    assert "columns=chunk" in repr(UnfoldConv2d(3, 8, 3, columns="chunk"))
    with pytest.raises(MiniPlacesError, match="columns must be one of"):
        UnfoldConv2d(3, 3, 3, columns="rows")  # type: ignore[arg-type]


@pytest.mark.parametrize(("mode", "columns"), [("cache", "auto"), ("recompute", "stream"), ("recompute", "chunk")])
@pytest.mark.parametrize("kernel", [1, 3])
def test_second_derivatives_raise_in_every_mode(mode: str, columns: str, kernel: int) -> None:
    # A gradient penalty needs the graph of the backward: refused at once with a clear error, never wrong
    # (gradgradcheck is the oracle that fails on the cache mode's constant columns).
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, kernel, kernel, dtype=torch.float64, requires_grad=True)
    conv = lambda a, b: unfold_conv2d(a, b, None, 1, kernel // 2, 1, memory=mode, columns=columns)  # noqa: E731
    with pytest.raises(MiniPlacesError, match="no second derivative: .*create_graph=True.*use nn.Conv2d"):
        torch.autograd.grad(conv(x, weight).pow(2).sum(), x, create_graph=True)
    with pytest.raises(MiniPlacesError, match="no second derivative"):
        torch.autograd.gradgradcheck(conv, (x, weight))
    # first derivatives are unchanged (create_graph=False)
    (grad_x,) = torch.autograd.grad(conv(x, weight).pow(2).sum(), x)
    (ref_grad_x,) = torch.autograd.grad(F.conv2d(x, weight, None, 1, kernel // 2).pow(2).sum(), x)
    torch.testing.assert_close(grad_x, ref_grad_x)


# Autocast: the layer follows it as nn.Conv2d does (bf16 out under CPU bf16 autocast), equal to F.conv2d
# under the same autocast within bf16's rounding (8 bits of mantissa: relative 2^-8 per operand, summed
# over K = 27–72 products), and its gradients reach the float32 parameters.
@pytest.mark.parametrize(("mode", "columns"), [("cache", "auto"), ("recompute", "stream"), ("recompute", "chunk")])
@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("device", DEVICES)
def test_follows_bf16_autocast_like_conv2d(mode: str, columns: str, kernel: int, device: str) -> None:
    torch.manual_seed(0)
    layer = UnfoldConv2d(3, 8, kernel, padding=kernel // 2, memory=mode, columns=columns, device=device)
    native = nn.Conv2d(3, 8, kernel, padding=kernel // 2, device=device)
    native.load_state_dict(layer.state_dict())
    x = torch.rand(4, 3, 10, 9, device=device, requires_grad=True)
    x_native = x.detach().clone().requires_grad_(True)
    with torch.autocast(device, dtype=torch.bfloat16):
        out, ref = layer(x), native(x_native)
        functional = unfold_conv2d(x, layer.weight, layer.bias, 1, kernel // 2, memory=mode, columns=columns)
    assert out.dtype == ref.dtype == functional.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(functional, out)
    # exact in float32 math: bf16 rounding, not a wrong convolution, is all that differs
    assert (out.float() - F.conv2d(x.detach(), layer.weight.detach(), layer.bias.detach(), 1,
                                   kernel // 2)).abs().max() < 0.05
    grad = torch.randn(out.shape, device=device)
    out.backward(grad.to(out.dtype))
    ref.backward(grad.to(ref.dtype))
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32
    assert x.grad is not None and x.grad.dtype == torch.float32
    for ours, theirs in ((x.grad, x_native.grad), (layer.weight.grad, native.weight.grad),
                         (layer.bias.grad, native.bias.grad)):
        scale = theirs.abs().max()
        assert (ours - theirs).abs().max() <= 3e-2 * scale


def test_autocast_leaves_float64_and_disabled_regions_alone() -> None:
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    weight = torch.rand(4, 3, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert unfold_conv2d(x, weight, None, 1, 1).dtype == torch.float64  # autocast never casts float64
        with torch.autocast("cpu", enabled=False):
            assert unfold_conv2d(x.float(), weight.float(), None, 1, 1).dtype == torch.float32


def test_conv_benchmark_runs_under_bf16_autocast() -> None:
    from miniplaces.bench.conv import run_conv_benchmark

    rows = run_conv_benchmark(batch_size=2, image_size=16, repeats=1, warmup=0, include_simplenet=False, bf16=True)
    fp32 = run_conv_benchmark(batch_size=2, image_size=16, repeats=1, warmup=0, include_simplenet=False)
    # Under autocast both layers save their bf16 inputs: recompute still saves what nn.Conv2d saves, and the
    # 3×3 layer's saved input and weight take half the float32 bytes.
    assert all(r["recompute_memory_ratio"] == 1.0 for r in rows)
    conv3 = next(r for r in rows if r["layer"] == "conv3 3×3")
    assert conv3["native_saved_mb"] * 2 == next(r for r in fp32 if r["layer"] == "conv3 3×3")["native_saved_mb"]
    assert all(r["recompute_time_ratio"] > 0 for r in rows)
