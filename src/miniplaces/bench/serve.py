"""`miniplaces serve` latency: start-up of the command, and one image's predict / saliency / attack over HTTP.

Each request is timed end to end (JSON in, PNG data URLs out) against a server started as a user
would start it (`python -m miniplaces serve`, a subprocess); the baseline, measured in the same run,
is one forward + backward pass of the same model on one image in this process.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.nn.functional as F

from miniplaces.bench.result import BenchResult
from miniplaces.data.synth import synthesize
from miniplaces.engine.checkpoint import describe_model, save_checkpoint
from miniplaces.errors import MiniPlacesError
from miniplaces.models import create_model

REQUESTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("predict", {}),
    ("saliency", {"method": "vanilla"}),
    ("saliency", {"method": "smoothgrad"}),
    ("saliency", {"method": "gradcam"}),
    ("attack", {"attack": "pgd-least-likely", "eps": 6, "steps": 10}),
    ("attack", {"attack": "pgd-untargeted", "eps": 6, "steps": 10}),
    ("attack", {"attack": "fgsm", "eps": 6}),
)


def _forward_backward_ms(model: torch.nn.Module, image_size: int, repeats: int) -> float:
    """One image's forward and input-gradient pass, weights frozen as saliency and attacks freeze them."""
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 3, image_size, image_size, requires_grad=True)
    times = []
    warm = 5  # the first passes are several times slower (allocator, kernel selection)
    for _ in range(repeats + warm):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), torch.tensor([0]))
        torch.autograd.grad(loss, x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[warm:])


def _post(url: str, payload: dict[str, Any], token: str) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json", "X-Miniplaces-Token": token})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def _page_token(url: str, timeout: float) -> str:
    """The API token the server embeds in its page, as the page's own script reads it."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        found = re.search(r'<meta name="miniplaces-token" content="([^"]+)">', response.read().decode())
    if found is None:
        raise MiniPlacesError(f"the page at {url} carries no API token")
    return found[1]


def _import_torch_cost() -> tuple[float, float]:
    """Wall and CPU seconds of a fresh `python -c "import torch, torchvision"`: what any command pays first."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, torchvision"], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure_serve_latency(model_name: str = "simplenet", image_size: int = 128, repeats: int = 5,
                          threads: int | None = None, startup_timeout: float = 120.0) -> list[dict[str, Any]]:
    """Rows of `name`, `ms` (median) and `ratio`.

    The first two rows are the start-up, as ratios to importing torch and torchvision in a fresh
    interpreter; the requests are ratios to one forward+backward pass of the model on one image.
    """
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        root = synthesize(Path(tmp) / "data", classes=10, per_class=1, val_per_class=1, image_size=image_size)
        model = create_model(model_name, num_classes=10).eval()
        checkpoint = save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(),
                                      "categories": [], "config": {"image_size": image_size}}, Path(tmp) / "m.pt")
        command = [sys.executable, "-m", "miniplaces", "serve", "--checkpoint", str(checkpoint), "--root", str(root),
                   "--port", "0", "--threads", str(threads)]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            url = None
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("open "):
                    url = line.split()[1]
                    break
            if url is None:
                raise MiniPlacesError(f"`miniplaces serve` exited before serving (exit {process.wait()})")
            token = _page_token(url, startup_timeout)
            info = urllib.request.Request(url + "api/info", headers={"X-Miniplaces-Token": token})
            with urllib.request.urlopen(info, timeout=startup_timeout):
                startup = time.perf_counter() - start
            # CPU time is what start-up costs on an idle machine; wall time grows with whatever else runs.
            cpu = psutil.Process(process.pid).cpu_times()
            server_cpu = cpu.user + cpu.system
            rows = [{"name": "start-up, wall (command → first answer)", "ms": 1000 * startup, "ratio": None},
                    {"name": "start-up, CPU time of the server", "ms": 1000 * server_cpu, "ratio": None}]
            for endpoint, extra in REQUESTS:
                payload = {"image": "val:0", **extra}
                _post(url + f"api/{endpoint}", payload, token)  # warm-up
                times = []
                for _ in range(repeats):
                    begin = time.perf_counter()
                    _post(url + f"api/{endpoint}", payload, token)
                    times.append(time.perf_counter() - begin)
                ms = 1000 * statistics.median(times)
                name = " ".join([endpoint, *(str(v) for k, v in extra.items() if k != "eps")])
                rows.append({"name": name, "ms": ms, "ratio": None})
            import_wall, import_cpu = _import_torch_cost()  # the server idles meanwhile
            rows[0]["ratio"], rows[1]["ratio"] = startup / import_wall, server_cpu / import_cpu
            baseline = _forward_backward_ms(model, image_size, 4 * repeats)
            for row in rows[2:]:
                row["ratio"] = row["ms"] / baseline
            rows.append({"name": "baseline: import torch, torchvision (wall)", "ms": 1000 * import_wall, "ratio": 1.0})
            rows.append({"name": "baseline: forward+backward", "ms": baseline, "ratio": 1.0})
            return rows
        finally:
            process.terminate()
            process.wait(timeout=30)


def run(*, device: torch.device, model: str = "simplenet", image_size: int = 128, repeats: int = 5) -> BenchResult:
    """`measure_serve_latency` as a `BenchResult` (the server runs on the CPU with this process's threads)."""
    if device.type != "cpu":
        raise MiniPlacesError(f"the serve benchmark runs the server on the CPU; got device {device}")
    rows = measure_serve_latency(model, image_size, repeats, torch.get_num_threads())
    settings: dict[str, Any] = {"device": device, "model": model, "image_size": image_size, "repeats": repeats}
    return BenchResult("serve", settings, "start-up: importing torch and torchvision in a fresh interpreter; "
                       "requests: one forward+backward pass of the model on one image, in this process", rows)


def table(result: BenchResult) -> str:
    """Markdown: milliseconds of each request (median, over HTTP) and its ratio to one forward+backward."""
    lines = ["| Request | ms | Ratio |", "|---|---:|---:|"]
    for r in result.rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.1f}"
        lines.append(f"| {r['name']} | {r['ms']:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"
