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


class RunningSums:
    """Sums of loss, hits and sample counts, kept on one device; averages on demand.

    `state()` / `load_state()` let an interrupted epoch resume with its partial sums;
    `all_reduce()` sums over DDP processes.
    """

    KEYS = ("loss_sum", "correct1", "correct5", "count")

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.values = torch.zeros(len(self.KEYS), dtype=torch.float64, device=device)

    def update(self, loss: torch.Tensor, correct1: torch.Tensor, correct5: torch.Tensor, n: int) -> None:
        step = torch.stack([loss.detach().double() * n, correct1.double(), correct5.double(),
                            torch.tensor(float(n), dtype=torch.float64, device=self.values.device)])
        self.values += step

    def all_reduce(self) -> RunningSums:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.values)
        return self

    def state(self) -> list[float]:
        return self.values.tolist()

    def load_state(self, values: list[float]) -> None:
        self.values = torch.tensor(values, dtype=torch.float64, device=self.values.device)

    def averages(self) -> dict[str, float]:
        loss_sum, c1, c5, count = self.values.tolist()
        count = max(count, 1.0)
        return {"loss": loss_sum / count, "top1": 100.0 * c1 / count, "top5": 100.0 * c5 / count}

    @property
    def count(self) -> int:
        return int(self.values[3].item())


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
