"""2-D convolution from `unfold`, one matrix product and `fold`, with a hand-written backward.

Three tiers (as in timm): plain `unfold_conv2d_forward` / `unfold_conv2d_backward` functions, the
`UnfoldConv2dFunction` autograd function that wires them to autograd, and `UnfoldConv2d`, a drop-in for
`nn.Conv2d` (same arguments, parameter names, shapes and initialisation, so state dicts move both ways).

With K = C_in·kh·kw and L = H_out·W_out, the forward is

    cols = unfold(x)                      # (N, K, L)
    out  = W(C_out, K) @ cols + b          # (N, C_out, L), already N×C×(H·W): a view gives N×C×H×W

and the backward

    grad_x = fold(Wᵀ @ grad_out)           # (N, K, L) summed back onto the input pixels
    grad_W = Σ_n grad_out[n] @ cols[n]ᵀ    # (C_out, K)
    grad_b = Σ_{n,l} grad_out              # (C_out,)

What makes it fast (each choice measured against its alternative on SimpleNet's shapes with
benchmarks/conv.py; the figures are in docs/benchmarks.md):
- a 1×1 kernel without padding needs no unfold at all: `cols` is the (strided) input itself;
- the unfold is a strided view of the padded input copied once (faster than `F.unfold`'s im2col on CPU),
  into a (K, N, L) buffer, so the weight gradient is a single product over all N·L positions;
- `bmm` with the weight expanded (a stride-0 view) writes (N, C_out, L) straight into the N×C×H×W
  output: no copies, no folding of the batch (`matmul` would copy `cols` transposed);
- `F.fold` is kept for the input gradient: a hand-written scatter of kh·kw strided adds was slower.
Channels-last layouts were measured too and did not pay: NCHW in, NCHW out.

Memory modes: `cache` keeps `cols` for the backward (K·L per image, kh·kw/stride² times the input);
`recompute` keeps only the input and weight, as `nn.Conv2d` does, and unfolds the input again in the
backward. Recompute has one path, chunked (`unfold_conv2d_forward_chunked` /
`unfold_conv2d_backward_chunked`): images go in chunks, one unfold into a reused buffer and one batched
product per chunk, and the batch's columns matrix is never built. The chunk size is a policy
(`images_per_chunk`, chosen by `columns`):
- `stream` (`auto` on the CPU): one image per chunk, whose (K, L) columns stay in the CPU caches;
- `chunk` (`auto` on CUDA and other accelerators): as many images as fit `CHUNK_BYTES`, so a GPU runs a
  few large kernels instead of thousands of tiny ones.

Under autocast the layer follows autocast as `nn.Conv2d` does: inputs, weight and bias are cast to the
autocast dtype and the output has it (bf16 under `torch.autocast("cpu", dtype=torch.bfloat16)`).

Second derivatives are not implemented: a backward asked to build a graph of itself (`create_graph=True`:
gradient penalties, double backward) raises `UnfoldConvError` in every mode rather than return
derivatives that treat the columns as constants. Use `nn.Conv2d` for that.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from miniplaces.errors import MiniPlacesError

MemoryMode = Literal["cache", "recompute"]
MEMORY_MODES: tuple[str, ...] = ("cache", "recompute")
# recompute: the memory held between forward and backward equals nn.Conv2d's, and on the CPU it is also
# the faster mode (docs/benchmarks.md; benchmarks/gpu_check.py measures it on a GPU).
DEFAULT_MEMORY: MemoryMode = "recompute"
ColumnsMode = Literal["auto", "stream", "chunk"]
COLUMNS_MODES: tuple[str, ...] = ("auto", "stream", "chunk")
# Bytes of columns one chunk may hold (the `chunk` strategy): large enough that a chunk's product is one
# big batched matrix product on a GPU (SimpleNet at batch 256, 128×128: 3–5 chunks of ≥ 50 images per
# k×k layer), small against the activations a training step keeps anyway (the backward holds two such
# buffers at once).
CHUNK_BYTES = 128 * 2**20

Pair = tuple[int, int]


class UnfoldConvError(MiniPlacesError, ValueError):
    """Bad arguments or input for the unfold convolution (shape, dtype, device, option)."""


def conv_output_size(size: Pair, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Pair:
    """Output (H, W) of a convolution, the formula of `nn.Conv2d`'s documentation."""
    return tuple(  # type: ignore[return-value]
        (size[i] + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1 for i in range(2)
    )


def _is_pointwise(kernel_size: Pair, padding: Pair) -> bool:
    """A 1×1 kernel without padding: the input (subsampled by the stride) already is the unfolded matrix."""
    return kernel_size == (1, 1) and padding == (0, 0)


def _unfold(x: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """The columns matrix (N, C·kh·kw, L), equal to `F.unfold`'s; for 1×1 kernels a view of the input.

    The windows are a strided view of the zero-padded input, copied once by a single vectorised copy:
    faster on the CPU than `F.unfold`'s im2col kernel. The copy is laid out (C·kh·kw, N, L) and returned
    as a permuted (N, K, L) view, so the weight gradient is one matrix product over all N·L positions.
    `out`, a contiguous buffer of at least K·N·L elements, receives the copy instead of a new tensor.
    """
    n, c, h, w = x.shape
    kh, kw = kernel_size
    if _is_pointwise(kernel_size, padding):
        if stride != (1, 1):
            x = x[:, :, :: stride[0], :: stride[1]]
        return x.reshape(n, c, -1)  # (N, C, L)
    h_out, w_out = conv_output_size((h, w), kernel_size, stride, padding, dilation)
    if padding != (0, 0):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    s_n, s_c, s_h, s_w = x.stride()
    windows = x.as_strided(
        (c, kh, kw, n, h_out, w_out),
        (s_c, dilation[0] * s_h, dilation[1] * s_w, s_n, stride[0] * s_h, stride[1] * s_w),
        x.storage_offset())  # (C, kh, kw, N, H_out, W_out), a view
    if out is None:
        return windows.reshape(c * kh * kw, n, h_out * w_out).permute(1, 0, 2)  # (N, K, L) view of a (K, N, L) copy
    buffer = out.view(-1)[: windows.numel()].view(windows.shape)
    buffer.copy_(windows)
    return buffer.view(c * kh * kw, n, h_out * w_out).permute(1, 0, 2)  # (N, K, L) view of the buffer


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel_size: Pair, stride: Pair,
           padding: Pair, dilation: Pair) -> Pair:
    """Validate the input against the weight; return the output (H, W)."""
    if x.dim() != 4:
        raise UnfoldConvError(f"expected a 4-D input (N, C, H, W), got a {x.dim()}-D input of shape "
                              f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)")
    if x.shape[1] != weight.shape[1]:
        raise UnfoldConvError(f"expected input of {weight.shape[1]} channels, got {x.shape[1]} "
                              f"(input shape {tuple(x.shape)})")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise UnfoldConvError(f"input dtype {x.dtype} does not match {name} dtype {t.dtype}; "
                                  f"convert one of them (e.g. x.to({t.dtype}))")
        if t.device != x.device:
            raise UnfoldConvError(f"input is on {x.device} but {name} is on {t.device}; move both to one device")
    if not (x.is_floating_point() or x.is_complex()):
        raise UnfoldConvError(f"expected a floating-point input, got {x.dtype}")
    out_size = conv_output_size((x.shape[2], x.shape[3]), kernel_size, stride, padding, dilation)
    if out_size[0] < 1 or out_size[1] < 1:
        raise UnfoldConvError(f"input of size {tuple(x.shape[2:])} (padded by {padding}) is smaller than the "
                              f"kernel {kernel_size} with dilation {dilation}: the output would be {out_size}")
    return out_size


def unfold_conv2d_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Pair,
                          padding: Pair, dilation: Pair) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolution of `x` (N, C_in, H, W) with `weight` (C_out, C_in, kh, kw); returns (output, cols).

    `cols` (N, C_in·kh·kw, L) is what the backward needs for the weight gradient.
    """
    kernel_size = (weight.shape[2], weight.shape[3])
    h_out, w_out = _check(x, weight, bias, kernel_size, stride, padding, dilation)
    n, c_out = x.shape[0], weight.shape[0]
    cols = _unfold(x, kernel_size, stride, padding, dilation)  # (N, K, L)
    w2 = weight.reshape(c_out, -1).expand(n, -1, -1)  # (N, C_out, K), a stride-0 view: no copy
    # The product writes straight into the N×C×H×W output through its (N, C_out, L) view: the output is
    # then no view of a temporary (autograd forbids in-place ops, like ReLU(inplace), on such outputs).
    out = x.new_empty(n, c_out, h_out, w_out)
    torch.bmm(w2, cols, out=out.view(n, c_out, -1))  # (N, C_out, L)
    if bias is not None:
        # measured: as fast as baddbmm(bias, …), which copies the broadcast bias into the output first
        out.add_(bias.view(1, c_out, 1, 1))
    return out, cols


def unfold_conv2d_backward(grad_out: torch.Tensor, cols: torch.Tensor, weight: torch.Tensor,
                           input_shape: torch.Size, stride: Pair, padding: Pair, dilation: Pair,
                           needs_input_grad: tuple[bool, bool, bool] = (True, True, True),
                           ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (input, weight, bias) of the convolution, each None where not needed.

    Args:
        grad_out: (N, C_out, H_out, W_out), the gradient of the output.
        cols: (N, C_in·kh·kw, L), the unfolded input of the forward.
        weight: (C_out, C_in, kh, kw).
        input_shape: (N, C_in, H, W) of the forward input.
        needs_input_grad: which of (input, weight, bias) need a gradient.
    """
    n, c_out = grad_out.shape[:2]
    kernel_size = (weight.shape[2], weight.shape[3])
    g = grad_out.reshape(n, c_out, -1)  # (N, C_out, L)
    grad_x = grad_w = grad_b = None
    if needs_input_grad[0]:
        grad_cols = torch.bmm(weight.reshape(c_out, -1).t().expand(n, -1, -1), g)  # (N, K, L)
        grad_x = _fold(grad_cols, input_shape, kernel_size, stride, padding, dilation)
    if needs_input_grad[1]:
        grad_w = _weight_grad(g, cols).view_as(weight)
    if needs_input_grad[2]:
        grad_b = g.sum(dim=(0, 2))
    return grad_x, grad_w, grad_b


def _weight_grad(g: torch.Tensor, cols: torch.Tensor, accumulate: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_n g[n] @ cols[n]ᵀ, (C_out, K), from g (N, C_out, L) and cols (N, K, L); added into `accumulate` if given."""
    n, c_out, length = g.shape
    k = cols.shape[1]
    if cols.stride() == (length, n * length, 1):
        # cols is a (K, N, L) buffer (see _unfold): one product over all N·L positions, at the price of
        # laying the output gradient out as (C_out, N, L), a copy k·k times smaller than cols (none for N = 1)
        a, b = g.transpose(0, 1).reshape(c_out, n * length), cols.transpose(0, 1).reshape(k, n * length).t()
        return torch.mm(a, b) if accumulate is None else accumulate.addmm_(a, b)
    # cols is the (N, C, L) input itself (1×1 kernels): batched products, then the sum over the batch
    # (measured faster than N accumulating products, and than copying both operands for one product)
    total = torch.bmm(g, cols.transpose(1, 2)).sum(0)
    return total if accumulate is None else accumulate.add_(total)


def _fold(grad_cols: torch.Tensor, input_shape: torch.Size, kernel_size: Pair, stride: Pair, padding: Pair,
          dilation: Pair) -> torch.Tensor:
    """Adjoint of `_unfold`: scatter-add the columns (N, K, L) back onto an (N, C, H, W) input."""
    n, c, h, w = input_shape
    if _is_pointwise(kernel_size, padding):
        if stride == (1, 1):
            return grad_cols.view(n, c, h, w)
        grad_x = grad_cols.new_zeros(n, c, h, w)
        h_out, w_out = conv_output_size((h, w), kernel_size, stride, padding, dilation)
        grad_x[:, :, :: stride[0], :: stride[1]] = grad_cols.view(n, c, h_out, w_out)
        return grad_x
    return F.fold(grad_cols, (h, w), kernel_size, dilation=dilation, padding=padding, stride=stride)


def images_per_chunk(columns: str, device: torch.device, k: int, length: int, element_size: int, n: int,
                     budget_bytes: int | None = None) -> int:
    """The chunk-size policy: how many images' columns (K·L elements each) one chunk holds, in [1, n].

    `stream` (and `auto` on the CPU): one image, whose columns stay in the CPU caches between the copy and
    the product. `chunk` (and `auto` elsewhere): as many as fit `budget_bytes` (default `CHUNK_BYTES`), so
    a GPU runs a few large kernels instead of thousands of tiny ones.
    """
    if resolve_columns(columns, device) == "stream":
        return 1
    budget = CHUNK_BYTES if budget_bytes is None else budget_bytes
    return max(1, min(n, budget // max(1, k * length * element_size)))


def unfold_conv2d_forward_chunked(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Pair,
                                  padding: Pair, dilation: Pair, budget_bytes: int | None = None,
                                  columns: str = "chunk") -> torch.Tensor:
    """The same convolution in chunks of images, sized by `images_per_chunk(columns, …, budget_bytes)`.

    Each chunk is unfolded into one reused (K, chunk·L) buffer and multiplied by one batched product
    that writes straight into the chunk's slice of the output. The batch's columns matrix is never built.
    """
    kernel_size = (weight.shape[2], weight.shape[3])
    h_out, w_out = _check(x, weight, bias, kernel_size, stride, padding, dilation)
    n, c_out = x.shape[0], weight.shape[0]
    w2 = weight.reshape(c_out, -1)  # (C_out, K)
    k, length = w2.shape[1], h_out * w_out
    chunk = images_per_chunk(columns, x.device, k, length, x.element_size(), n, budget_bytes)
    out = x.new_empty(n, c_out, h_out, w_out)
    buffer = x.new_empty(k * chunk * length)
    for start in range(0, n, chunk):
        xs = x[start : start + chunk]
        m = xs.shape[0]
        cols = _unfold(xs, kernel_size, stride, padding, dilation, out=buffer)  # (m, K, L) view of (K, m, L)
        torch.bmm(w2.expand(m, -1, -1), cols, out=out[start : start + m].view(m, c_out, length))  # (m, C_out, L)
    if bias is not None:
        out.add_(bias.view(1, c_out, 1, 1))
    return out


def unfold_conv2d_backward_chunked(grad_out: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor,
                                   input_shape: torch.Size, stride: Pair, padding: Pair, dilation: Pair,
                                   needs_input_grad: tuple[bool, bool, bool] = (True, True, True),
                                   budget_bytes: int | None = None, columns: str = "chunk",
                                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (input, weight, bias) chunk by chunk (`images_per_chunk`), unfolding the saved input again
    for the weight's.

    Only the weight gradient needs the columns; `x` may be None when it is not needed.
    """
    n, c_out = grad_out.shape[:2]
    kernel_size = (weight.shape[2], weight.shape[3])
    g = grad_out.reshape(n, c_out, -1)  # (N, C_out, L)
    w2 = weight.reshape(c_out, -1)  # (C_out, K)
    k, length = w2.shape[1], g.shape[2]
    chunk = images_per_chunk(columns, g.device, k, length, g.element_size(), n, budget_bytes)
    grad_x = grad_w = grad_b = None
    if needs_input_grad[0]:
        grad_x = g.new_empty(input_shape) if chunk < n else None
        grad_cols_buffer = g.new_empty(chunk, k, length)
    if needs_input_grad[1]:
        grad_w = g.new_zeros(c_out, k)
        cols_buffer = g.new_empty(k * chunk * length)
    for start in range(0, n, chunk):
        gs = g[start : start + chunk]  # (m, C_out, L)
        m = gs.shape[0]
        if grad_w is not None:
            cols = _unfold(x[start : start + m], kernel_size, stride, padding, dilation, out=cols_buffer)  # (m, K, L)
            _weight_grad(gs, cols, accumulate=grad_w)
        if needs_input_grad[0]:
            grad_cols = torch.bmm(w2.t().expand(m, -1, -1), gs, out=grad_cols_buffer[:m])  # (m, K, L)
            folded = _fold(grad_cols, (m, *input_shape[1:]), kernel_size, stride, padding, dilation)
            if grad_x is None:  # one chunk holds the whole batch: the folded gradient is the input's
                grad_x = folded
            else:
                grad_x[start : start + m] = folded
    if needs_input_grad[2]:
        grad_b = g.sum(dim=(0, 2))
    return grad_x, None if grad_w is None else grad_w.view_as(weight), grad_b


def resolve_columns(columns: str, device: torch.device) -> str:
    """The columns strategy `auto` stands for on `device`: `stream` on the CPU, `chunk` elsewhere."""
    if columns != "auto":
        return columns
    return "stream" if device.type == "cpu" else "chunk"


def _recomputes(memory: str, kernel_size: Pair, padding: Pair) -> bool:
    """Recompute mode builds k×k columns twice (chunk by chunk); 1×1 kernels need no columns in any mode."""
    return memory == "recompute" and not _is_pointwise(kernel_size, padding)


class UnfoldConv2dFunction(torch.autograd.Function):
    """Autograd wrapper: `apply(x, weight, bias, stride, padding, dilation, memory, columns="auto")`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                stride: Pair, padding: Pair, dilation: Pair, memory: str, columns: str = "auto") -> torch.Tensor:
        ctx.conv_args = (stride, padding, dilation)
        ctx.input_shape = x.shape
        ctx.memory = memory
        ctx.columns = resolve_columns(columns, x.device)
        if _recomputes(memory, (weight.shape[2], weight.shape[3]), padding):
            out = unfold_conv2d_forward_chunked(x, weight, bias, stride, padding, dilation, columns=ctx.columns)
            ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
            return out
        out, cols = unfold_conv2d_forward(x, weight, bias, stride, padding, dilation)
        if not ctx.needs_input_grad[1]:
            ctx.save_for_backward(None, weight)  # the input is needed only for the weight gradient
        elif memory == "cache":
            ctx.save_for_backward(cols, weight)
        else:
            ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():
            # Grad mode is on inside a backward only under create_graph=True. The ops below (in-place,
            # out=, cached columns) would give second derivatives that are silently wrong or fail obscurely:
            # refuse at once (torch's once_differentiable would defer the error, or let allow_unused hide it).
            raise UnfoldConvError(
                "UnfoldConv2d has no second derivative: its backward cannot run with create_graph=True "
                "(gradient penalties, double backward); use nn.Conv2d / F.conv2d for such models")
        # A backward called inside an autocast region must not recast: the forward ran in the inputs' dtype.
        with torch.autocast(grad_out.device.type, enabled=False):
            return UnfoldConv2dFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv_args
        needs = ctx.needs_input_grad[:3]
        if _recomputes(ctx.memory, (weight.shape[2], weight.shape[3]), padding):
            grad_x, grad_w, grad_b = unfold_conv2d_backward_chunked(
                grad_out, saved, weight, ctx.input_shape, stride, padding, dilation, needs, columns=ctx.columns)
            return grad_x, grad_w, grad_b, None, None, None, None, None
        if saved is not None and ctx.memory == "recompute":
            saved = _unfold(saved, (weight.shape[2], weight.shape[3]), stride, padding, dilation)
        grad_x, grad_w, grad_b = unfold_conv2d_backward(
            grad_out, saved, weight, ctx.input_shape, stride, padding, dilation, needs)
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for `device_type`, or None outside autocast (torch ≥ 2.4 API, then the older one)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if enabled else None
    except (TypeError, AttributeError):  # torch < 2.4: per-device functions, CPU and CUDA only
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return None


def _apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Pair, padding: Pair,
           dilation: Pair, memory: str, columns: str) -> torch.Tensor:
    """`UnfoldConv2dFunction.apply`, following autocast as `nn.Conv2d` does (what `torch.amp.custom_fwd` does for
    one device type, here for the input's): inside an autocast region the float32/16 input, weight and bias are
    cast to its dtype (float64 stays, as autocast leaves it) and the convolution runs in that dtype, autocast off.
    The casts are differentiable, so the gradients reach float32 parameters in float32."""
    dtype = _autocast_dtype(x.device.type)
    if dtype is None:
        return UnfoldConv2dFunction.apply(x, weight, bias, stride, padding, dilation, memory, columns)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        eligible = t is not None and t.is_floating_point() and t.dtype != torch.float64
        return t.to(dtype) if eligible else t  # type: ignore[union-attr]

    with torch.autocast(x.device.type, enabled=False):
        return UnfoldConv2dFunction.apply(cast(x), cast(weight), cast(bias), stride, padding, dilation, memory,
                                          columns)


def _check_memory(memory: str, columns: str = "auto") -> None:
    if memory not in MEMORY_MODES:
        raise UnfoldConvError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    if columns not in COLUMNS_MODES:
        raise UnfoldConvError(f"columns must be one of {COLUMNS_MODES}, got {columns!r}")


def unfold_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  stride: int | Pair = 1, padding: int | Pair = 0, dilation: int | Pair = 1,
                  memory: MemoryMode = DEFAULT_MEMORY, columns: ColumnsMode = "auto") -> torch.Tensor:
    """Functional form, like `F.conv2d` (groups=1), differentiable (once) through `UnfoldConv2dFunction`."""
    _check_memory(memory, columns)
    if weight.dim() != 4:
        raise UnfoldConvError(f"expected a 4-D weight (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}")
    return _apply(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), memory, columns)


class UnfoldConv2d(nn.Module):
    """Drop-in for `nn.Conv2d` (groups=1, zero padding) computed by unfold + matmul + fold.

    Parameter names (`weight`, `bias`), shapes and initialisation (`reset_parameters`) are those of
    `nn.Conv2d`, so `load_state_dict` works in both directions.

    Args:
        memory: "recompute" (default) saves only the input and weight for the backward, exactly what
            `nn.Conv2d` saves, and unfolds the input again in the backward. "cache" keeps the unfolded
            input (kh·kw/stride² times the input), as the study did. Recompute is the default: memory is
            what bounds the batch size (the study's larger GPU memory came from the cache), and it was
            also the faster mode where measured; 1×1 layers cost the same in both modes.
        columns: the chunk-size policy of recompute (`images_per_chunk`): "stream" (one image per chunk, for
            CPU caches), "chunk" (as many images as fit `CHUNK_BYTES`, for GPUs), or "auto" (default: by the
            input's device).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Pair, stride: int | Pair = 1,
                 padding: int | Pair = 0, dilation: int | Pair = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, memory: MemoryMode = DEFAULT_MEMORY,
                 columns: ColumnsMode = "auto") -> None:
        super().__init__()
        if groups != 1:
            raise UnfoldConvError(f"UnfoldConv2d supports groups=1 only, got groups={groups}; "
                                  "use nn.Conv2d for grouped or depthwise convolutions")
        if padding_mode != "zeros":
            raise UnfoldConvError(f"UnfoldConv2d supports padding_mode='zeros' only, got {padding_mode!r}")
        if isinstance(padding, str):
            raise UnfoldConvError(f"UnfoldConv2d takes integer padding, got {padding!r}; "
                                  "compute it for 'same' as dilation·(kernel_size-1)//2")
        _check_memory(memory, columns)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size: Pair = _pair(kernel_size)
        self.stride: Pair = _pair(stride)
        self.padding: Pair = _pair(padding)
        self.dilation: Pair = _pair(dilation)
        self.groups = 1
        self.memory = memory
        self.columns = columns
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """`nn.Conv2d`'s initialisation: kaiming-uniform(a=√5) weight, uniform(±1/√fan_in) bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        s += f", memory={self.memory}"
        return s if self.columns == "auto" else s + f", columns={self.columns}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.memory, self.columns)
