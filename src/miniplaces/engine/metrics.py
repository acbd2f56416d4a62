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
    """Sums of loss, top-1 and top-5 hits on one device, plus a sample count; averages on demand.

    `state()` / `load_state()` let an interrupted epoch resume with its partial sums;
    `all_reduce()` sums over DDP processes.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.values = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits
        self.n = 0  # on the host: counting samples needs no copy to the device

    def update(self, loss: torch.Tensor, correct1: torch.Tensor, correct5: torch.Tensor, n: int) -> None:
        self.values += torch.stack([loss.detach().double() * n, correct1.double(), correct5.double()])
        self.n += n

    def all_reduce(self) -> RunningSums:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            both = torch.cat([self.values, torch.tensor([float(self.n)], dtype=torch.float64,
                                                         device=self.values.device)])
            dist.all_reduce(both)
            self.values, self.n = both[:3].clone(), int(both[3].item())
        return self

    def state(self) -> list[float]:
        return [*self.values.tolist(), float(self.n)]

    def load_state(self, values: list[float]) -> None:
        self.values = torch.tensor(values[:3], dtype=torch.float64, device=self.values.device)
        self.n = int(values[3])

    def averages(self) -> dict[str, float]:
        loss_sum, c1, c5 = self.values.tolist()
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
