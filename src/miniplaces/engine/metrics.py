"""Top-k accuracy, running sums that can be all-reduced, and peak memory."""

from __future__ import annotations

import resource
import sys

import torch


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracy in percent (0–100) for each k; k larger than the number of classes counts as all classes."""
    return [100.0 * c.item() / max(1, target.numel()) for c in correct_topk(logits, target, topk)]


def correct_topk(logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """How many samples have their target among the top k logits, per k, as 0-d tensors on the logits' device.

    Kept on the device so a training loop can accumulate without synchronising every step.
    """
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices  # (B, maxk)
    hit = pred.eq(target.view(-1, 1))  # (B, maxk)
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in topk]


def float64_works_on(device: torch.device | str) -> bool:
    """Whether `device` holds float64 tensors (MPS does not: it raises a `TypeError`)."""
    try:
        torch.zeros(1, dtype=torch.float64, device=device)
    except (TypeError, RuntimeError):
        return False
    return True


class RunningSums:
    """Sums of loss, top-1 and top-5 hits on one device, plus a sample count; averages on demand.

    The sums stay on the device, so a training loop adds to them without waiting for it: in float64,
    or where the device has none (MPS) in float32 with Kahan's compensation, which keeps an epoch's
    sum as exact as float64's. `state()` / `load_state()` let an interrupted epoch resume with its
    partial sums; `all_reduce()` sums over DDP processes.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.dtype = torch.float64 if float64_works_on(device) else torch.float32
        self.values = torch.zeros(3, dtype=self.dtype, device=device)  # loss sum, top-1 hits, top-5 hits
        # What float32 additions lost, to take back from the next one (Kahan); None with float64.
        self.lost = torch.zeros_like(self.values) if self.dtype != torch.float64 else None
        self.n = 0  # on the host: counting samples needs no copy to the device

    def update(self, loss: torch.Tensor, correct1: torch.Tensor, correct5: torch.Tensor, n: int) -> None:
        added = torch.stack([loss.detach().to(self.dtype) * n, correct1.to(self.dtype), correct5.to(self.dtype)])
        if self.lost is None:
            self.values += added
        else:
            wanted = added - self.lost
            total = self.values + wanted
            self.lost = (total - self.values) - wanted
            self.values = total
        self.n += n

    def all_reduce(self) -> RunningSums:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if self.lost is not None:
                self.values, self.lost = self.values - self.lost, torch.zeros_like(self.values)
            both = torch.cat([self.values, torch.tensor([float(self.n)], dtype=self.dtype,
                                                         device=self.values.device)])
            dist.all_reduce(both)
            self.values, self.n = both[:3].clone(), int(both[3].item())
        return self

    def _sums(self) -> list[float]:
        """The sums as Python floats (float64), with the compensation folded in."""
        if self.lost is None:
            return self.values.tolist()
        return [v - c for v, c in zip(self.values.tolist(), self.lost.tolist(), strict=True)]

    def state(self) -> list[float]:
        return [*self._sums(), float(self.n)]

    def load_state(self, values: list[float]) -> None:
        self.values = torch.tensor(values[:3], dtype=self.dtype, device=self.values.device)
        if self.lost is not None:  # what float32 rounded off the saved sums becomes the compensation
            rounded = self.values.tolist()
            self.lost = torch.tensor([r - v for r, v in zip(rounded, values[:3], strict=True)], dtype=self.dtype,
                                     device=self.values.device)
        self.n = int(values[3])

    def averages(self) -> dict[str, float]:
        loss_sum, c1, c5 = self._sums()
        count = max(self.n, 1)
        return {"loss": loss_sum / count, "top1": 100.0 * c1 / count, "top5": 100.0 * c5 / count}

    @property
    def count(self) -> int:
        return self.n


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(megabytes, kind): CUDA max allocated since the last reset, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "cpu_max_rss"
