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

A 1×1 kernel without padding needs no unfold at all: `cols` is the (strided) input itself.

Memory modes: `cache` keeps `cols` for the backward (K·L per image, k·k times the input for stride 1),
`recompute` keeps only the input and weight, as `nn.Conv2d` does, and unfolds again in the backward.
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
# recompute: the backward unfolds again (one extra im2col, cheap next to the products), and the
# memory held between forward and backward equals nn.Conv2d's instead of k·k times the input.
DEFAULT_MEMORY: MemoryMode = "recompute"

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


def _unfold(x: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> torch.Tensor:
    """The columns matrix (N, C·kh·kw, L); for 1×1 kernels a view or strided slice of the input."""
    n, c = x.shape[:2]
    if _is_pointwise(kernel_size, padding):
        if stride != (1, 1):
            x = x[:, :, :: stride[0], :: stride[1]]
        return x.reshape(n, c, -1)  # (N, C, L)
    return F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)  # (N, C·kh·kw, L)


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
    if bias is None:
        torch.bmm(w2, cols, out=out.view(n, c_out, -1))  # (N, C_out, L)
    else:
        # baddbmm adds the bias inside the product (beta·bias), no separate pass over the output
        torch.baddbmm(bias.view(1, c_out, 1), w2, cols, out=out.view(n, c_out, -1))  # (N, C_out, L)
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
        grad_cols = torch.matmul(weight.reshape(c_out, -1).t(), g)  # (N, K, L)
        grad_x = _fold(grad_cols, input_shape, kernel_size, stride, padding, dilation)
    if needs_input_grad[1]:
        grad_w = torch.zeros(c_out, cols.shape[1], dtype=g.dtype, device=g.device)  # (C_out, K)
        for i in range(n):
            # one product per image accumulates in place: no (N, C_out, K) intermediate, no copies
            grad_w.addmm_(g[i], cols[i].t())
        grad_w = grad_w.view_as(weight)
    if needs_input_grad[2]:
        grad_b = g.sum(dim=(0, 2))
    return grad_x, grad_w, grad_b


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


class UnfoldConv2dFunction(torch.autograd.Function):
    """Autograd wrapper: `apply(x, weight, bias, stride, padding, dilation, memory)`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                stride: Pair, padding: Pair, dilation: Pair, memory: str) -> torch.Tensor:
        out, cols = unfold_conv2d_forward(x, weight, bias, stride, padding, dilation)
        ctx.conv_args = (stride, padding, dilation)
        ctx.input_shape = x.shape
        ctx.memory = memory
        if not ctx.needs_input_grad[1]:
            ctx.save_for_backward(None, weight)  # the input is needed only for the weight gradient
        elif memory == "cache":
            ctx.save_for_backward(cols, weight)
        else:
            ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        saved, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv_args
        if saved is not None and ctx.memory == "recompute":
            saved = _unfold(saved, (weight.shape[2], weight.shape[3]), stride, padding, dilation)
        grad_x, grad_w, grad_b = unfold_conv2d_backward(
            grad_out, saved, weight, ctx.input_shape, stride, padding, dilation, ctx.needs_input_grad[:3])
        return grad_x, grad_w, grad_b, None, None, None, None


def _check_memory(memory: str) -> None:
    if memory not in MEMORY_MODES:
        raise UnfoldConvError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")


def unfold_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  stride: int | Pair = 1, padding: int | Pair = 0, dilation: int | Pair = 1,
                  memory: MemoryMode = DEFAULT_MEMORY) -> torch.Tensor:
    """Functional form, like `F.conv2d` (groups=1), differentiable through `UnfoldConv2dFunction`."""
    _check_memory(memory)
    if weight.dim() != 4:
        raise UnfoldConvError(f"expected a 4-D weight (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}")
    return UnfoldConv2dFunction.apply(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), memory)


class UnfoldConv2d(nn.Module):
    """Drop-in for `nn.Conv2d` (groups=1, zero padding) computed by unfold + matmul + fold.

    Parameter names (`weight`, `bias`), shapes and initialisation (`reset_parameters`) are those of
    `nn.Conv2d`, so `load_state_dict` works in both directions.

    Args:
        memory: "recompute" (default) saves only the input and weight for the backward, exactly what
            `nn.Conv2d` saves, and unfolds the input again in the backward. "cache" keeps the unfolded
            input (kh·kw/stride² times the input), as the study did. The recompute costs one extra im2col,
            a memory copy that is small next to the matrix products, while the cache multiplies the
            activation memory of a 3×3 layer by 9: recompute is the better default.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Pair, stride: int | Pair = 1,
                 padding: int | Pair = 0, dilation: int | Pair = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, memory: MemoryMode = DEFAULT_MEMORY) -> None:
        super().__init__()
        if groups != 1:
            raise UnfoldConvError(f"UnfoldConv2d supports groups=1 only, got groups={groups}; "
                                  "use nn.Conv2d for grouped or depthwise convolutions")
        if padding_mode != "zeros":
            raise UnfoldConvError(f"UnfoldConv2d supports padding_mode='zeros' only, got {padding_mode!r}")
        if isinstance(padding, str):
            raise UnfoldConvError(f"UnfoldConv2d takes integer padding, got {padding!r}; "
                                  "compute it for 'same' as dilation·(kernel_size-1)//2")
        _check_memory(memory)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size: Pair = _pair(kernel_size)
        self.stride: Pair = _pair(stride)
        self.padding: Pair = _pair(padding)
        self.dilation: Pair = _pair(dilation)
        self.groups = 1
        self.memory = memory
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
        return s + f", memory={self.memory}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return UnfoldConv2dFunction.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                          self.memory)
