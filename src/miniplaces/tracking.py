"""Experiment trackers: where a run's numbers go besides its own records (`metrics.jsonl`).

The config key `log_to` names them: `tensorboard` and `csv` (the default, both in the run folder), `mlflow` and
`wandb` (each with its extra). The training workflow opens them with `open_trackers` on the process that
writes (rank 0) and calls, in this order: `start(params)` once, `log_step(step, scalars)` and
`log_epoch(row, rows)` as the run goes, `finish(final, best_checkpoint)` at its end, and `close()` always.

A resumed run continues its tracker runs: TensorBoard purges the events past the checkpoint, and the MLflow and
W&B run ids are kept in `<run>/trackers.json`, so the curves of one run stay one run.

Besides the trackers, the run's text: `train_log` copies every line the package logs into `<run>/train.log` with
its time, and `summary_lines` are what a run says when it ends.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import atomic_write_json
from miniplaces.progress import duration_text
from miniplaces.records import MetricsRow, write_metrics_csv
from miniplaces.rundir import RunDir

TRACKERS = ("tensorboard", "csv", "mlflow", "wandb")
DEFAULT_TRACKERS = ("tensorboard", "csv")
# The package each tracker needs, and the extra of miniplaces that brings it.
REQUIREMENTS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
PROJECT = "miniplaces"  # the MLflow experiment and the W&B project a run is logged to
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
TRACKER_IDS_FILE = "trackers.json"
TRAIN_LOG_FILE = "train.log"


class TrackerError(MiniPlacesError):
    """A tracker cannot be used: its package is missing, or it refused the run."""


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config as one level of scalar parameters: `model_kwargs.depth`, lists as text, None as `null`."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif value is None:
            out[name] = "null"
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def epoch_scalars(row: MetricsRow) -> dict[str, float]:
    """The numbers of one epoch under the names every tracker shows them by (`val/top1`, `perf/images_per_s`)."""
    out = {f"{split}/{key}": getattr(row, f"{split}_{key}") for split in ("train", "val")
           for key in ("loss", "top1", "top5")}
    if row.val_top1_ema is not None:
        out.update({f"val_ema/{key}": getattr(row, f"val_{key}_ema") for key in ("loss", "top1", "top5")})
    out["lr"] = row.lr
    out.update({f"perf/{key}": getattr(row, key) for key in ("epoch_time_s", "images_per_s", "peak_memory_mb")})
    return out


class Tracker:
    """One destination of a run's numbers; every method but the constructor may be a no-op."""

    def start(self, params: dict[str, Any]) -> None:
        """The run's resolved config, flattened (`flat_params`)."""

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        """Per-step scalars (`loss`, `lr`, …) at the global step (0-based, across epochs)."""

    def log_epoch(self, row: MetricsRow, rows: Sequence[MetricsRow], step: int) -> None:
        """The epoch just ended (`row`, also the last of `rows`, all epochs so far); `step` is the global step
        at its end."""

    def finish(self, final: dict[str, float], best_checkpoint: Path | None) -> None:
        """The run's final numbers (`best/top1`, …) and its best checkpoint, when the run completes."""

    def close(self) -> None:
        """Release files and connections; called whether the run completed or not."""


class TensorBoardTracker(Tracker):
    """Per-epoch scalars in `<run>/tb` (purged by epoch on resume), per-step scalars in `<run>/tb/steps` (purged
    by step), and the hyper-parameters with the final numbers for TensorBoard's HParams tab."""

    def __init__(self, run: RunDir, resumed_epoch: int, resumed_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.tensorboard), purge_step=resumed_epoch + 1)
        self.step_writer = SummaryWriter(str(run.tensorboard_steps), purge_step=resumed_step + 1)
        self.params: dict[str, Any] = {}

    def start(self, params: dict[str, Any]) -> None:
        self.params = params

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.step_writer.add_scalar(f"step/{key}", value, step)

    def log_epoch(self, row: MetricsRow, rows: Sequence[MetricsRow], step: int) -> None:
        for key, value in epoch_scalars(row).items():
            self.writer.add_scalar(key, value, row.epoch)
        self.writer.flush()
        self.step_writer.flush()

    def finish(self, final: dict[str, float], best_checkpoint: Path | None) -> None:
        # run_name "." writes the hparams summary into the run's own event folder, beside its curves.
        self.writer.add_hparams(self.params, {f"hparam/{key}": value for key, value in final.items()},
                                run_name=".")

    def close(self) -> None:
        self.writer.close()
        self.step_writer.close()


class CsvTracker(Tracker):
    """`<run>/metrics.csv`: the rows of `metrics.jsonl` as a spreadsheet reads them, rewritten each epoch."""

    def __init__(self, run: RunDir, kept: Sequence[MetricsRow]) -> None:
        self.path = run.metrics_csv
        write_metrics_csv(self.path, kept)  # drops the rows of epochs a resumed run repeats

    def log_epoch(self, row: MetricsRow, rows: Sequence[MetricsRow], step: int) -> None:
        write_metrics_csv(self.path, rows)


def _import(name: str) -> Any:
    import importlib

    package, extra = REQUIREMENTS[name]
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise TrackerError(f"key 'log_to' lists {name}, but the {package} package is not installed; install it "
                           f"with `pip install 'miniplaces[{extra}]'` (or `pip install {package}`), or remove "
                           f"{name} from log_to") from err


def read_tracker_ids(run: RunDir) -> dict[str, str]:
    """The MLflow and W&B run ids a run logged to (empty when none or unreadable: a new tracker run starts)."""
    path = run.path / TRACKER_IDS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) \
        else {}


def _remember_id(run: RunDir, tracker: str, run_id: str) -> None:
    ids = read_tracker_ids(run)
    ids[tracker] = run_id
    atomic_write_json(run.path / TRACKER_IDS_FILE, ids)


def mlflow_uri(out_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI`, else a local file store `mlruns/` beside the runs folder."""
    return os.environ.get(MLFLOW_URI_ENV) or (out_dir.resolve().parent / "mlruns").as_uri()


class MlflowTracker(Tracker):
    """Params, per-step and per-epoch metrics, the final numbers and the best checkpoint (as an artifact) in the
    MLflow experiment `miniplaces`, one MLflow run per miniplaces run (its name)."""

    def __init__(self, run: RunDir, uri: str) -> None:
        _import("mlflow")
        from mlflow.tracking import MlflowClient

        if uri.startswith("file:"):
            # MLflow 3 keeps its file store for those who opt in; a local folder needs no server.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(PROJECT)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self.client.create_experiment(PROJECT))
            run_id = read_tracker_ids(run).get("mlflow")
            if run_id is None or not self._exists(run_id):
                run_id = self.client.create_run(experiment_id, run_name=run.path.name).info.run_id
            else:
                self.client.update_run(run_id, status="RUNNING")
        except Exception as err:  # MLflow raises its own and network errors; the user's to fix
            raise TrackerError(f"MLflow at {uri} refused the run: {err}") from err
        self.run_id = run_id
        self.params_logged = False
        _remember_id(run, "mlflow", run_id)

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except Exception:
            return False
        return True

    def _metrics(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key.replace("@", "_"), float(value), now, step)
                                                    for key, value in scalars.items()])

    def start(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if self.client.get_run(self.run_id).data.params:
            return  # a resumed run: MLflow refuses to change a param, and --resume keeps them
        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        self._metrics({f"step/{key}": value for key, value in scalars.items()}, step)

    def log_epoch(self, row: MetricsRow, rows: Sequence[MetricsRow], step: int) -> None:
        self._metrics({**epoch_scalars(row), "epoch": row.epoch}, step)

    def finish(self, final: dict[str, float], best_checkpoint: Path | None) -> None:
        self._metrics(final, 0)
        if best_checkpoint is not None and best_checkpoint.is_file():
            self.client.log_artifact(self.run_id, str(best_checkpoint), "checkpoints")
        self.client.set_terminated(self.run_id)


class WandbTracker(Tracker):
    """The same as MLflow's, in the W&B project `miniplaces`; `WANDB_MODE=offline` keeps it on disk
    (`<run>/wandb/`), to sync later with `wandb sync`."""

    def __init__(self, run: RunDir) -> None:
        wandb = _import("wandb")
        run_id = read_tracker_ids(run).get("wandb") or uuid.uuid4().hex[:8]
        try:
            self.run = wandb.init(project=PROJECT, name=run.path.name, id=run_id, resume="allow",
                                  dir=str(run.path), reinit="finish_previous")
        except Exception as err:  # wandb raises its own errors (login, network); the user's to fix
            raise TrackerError(f"W&B refused the run: {err}; `wandb login`, or set WANDB_MODE=offline") from err
        self.wandb = wandb
        self.name = run.path.name
        _remember_id(run, "wandb", run_id)

    def start(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log({f"step/{key}": value for key, value in scalars.items()}, step=step)

    def log_epoch(self, row: MetricsRow, rows: Sequence[MetricsRow], step: int) -> None:
        # The epoch's numbers join the step's record: W&B steps only ever rise.
        self.run.log({**epoch_scalars(row), "epoch": row.epoch}, step=step)

    def finish(self, final: dict[str, float], best_checkpoint: Path | None) -> None:
        self.run.summary.update(final)
        if best_checkpoint is not None and best_checkpoint.is_file():
            artifact = self.wandb.Artifact(f"{self.name}-best", type="model")
            artifact.add_file(str(best_checkpoint))
            self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()


def check_trackers(names: Sequence[str]) -> None:
    """Refuse unknown names, repeats, and trackers whose package is missing, before a run writes anything."""
    for name in names:
        if name not in TRACKERS:
            raise TrackerError(f"key 'log_to': unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
    if len(set(names)) != len(names):
        raise TrackerError(f"key 'log_to' names a tracker twice: {list(names)}")
    for name in names:
        if name in REQUIREMENTS:
            _import(name)


def open_trackers(names: Sequence[str], run: RunDir, *, out_dir: Path, kept: Sequence[MetricsRow],
                  resumed_epoch: int, resumed_step: int) -> list[Tracker]:
    """The trackers of `log_to`, opened for `run` (which resumes after `resumed_epoch` epochs and `resumed_step`
    global steps, 0 and 0 for a new run; `kept` are its metrics rows up to there)."""
    check_trackers(names)
    opened: list[Tracker] = []
    try:
        for name in names:
            if name == "tensorboard":
                opened.append(TensorBoardTracker(run, resumed_epoch, resumed_step))
            elif name == "csv":
                opened.append(CsvTracker(run, kept))
            elif name == "mlflow":
                opened.append(MlflowTracker(run, mlflow_uri(out_dir)))
            else:
                opened.append(WandbTracker(run))
    except BaseException:
        for tracker in opened:
            tracker.close()
        raise
    return opened


def final_numbers(rows: Sequence[MetricsRow]) -> dict[str, float]:
    """What a run ends with: its best epoch's val top-1/top-5 (the EMA's when it keeps one, as `best.pt` holds),
    and the last epoch's."""
    if not rows:
        return {}
    uses_ema = rows[-1].val_top1_ema is not None
    score = (lambda r: r.val_top1_ema) if uses_ema else (lambda r: r.val_top1)
    best = max(rows, key=score)
    top5 = best.val_top5_ema if uses_ema else best.val_top5
    return {"best/epoch": float(best.epoch), "best/top1": float(score(best)), "best/top5": float(top5),
            "last/top1": float(rows[-1].val_top1), "last/top5": float(rows[-1].val_top5)}


class TrackerGroup(Tracker):
    """A run's trackers as one: each call goes to every tracker in turn; `close` closes them all, also when one
    of them fails, and leaving a `with` block closes them."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def start(self, params: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.start(params)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log_step(step, scalars)

    def log_epoch(self, row: MetricsRow, rows: Sequence[MetricsRow], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_epoch(row, rows, step)

    def finish(self, final: dict[str, float], best_checkpoint: Path | None) -> None:
        for tracker in self.trackers:
            tracker.finish(final, best_checkpoint)

    def close(self) -> None:
        error: BaseException | None = None
        for tracker in self.trackers:
            try:
                tracker.close()
            except BaseException as err:  # the others still close; the first error is raised after
                error = error or err
        if error is not None:
            raise error

    def __enter__(self) -> TrackerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def train_log_path(run: RunDir) -> Path:
    return run.path / TRAIN_LOG_FILE


@contextmanager
def train_log(run: RunDir) -> Iterator[Path]:
    """While the block runs, every line the `miniplaces` loggers write at INFO and above is appended, with its
    time, to `<run>/train.log` (a resumed run continues the file); an error that ends the block is its last line.

    The package's loggers are set to INFO meanwhile (when they were quieter), so the file has the epoch lines
    whatever the console shows."""
    path = train_log_path(run)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")  # opened as any file: the umask's mode
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    package = logging.getLogger("miniplaces")
    level = package.level
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    package.addHandler(handler)
    try:
        yield path
    except BaseException as err:
        text = str(err) or type(err).__name__
        handler.handle(logging.makeLogRecord({"name": package.name, "levelno": logging.ERROR,
                                              "levelname": "ERROR", "msg": f"stopped: {text}"}))
        raise
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
        handler.close()


def epoch_line(row: MetricsRow, rows: Sequence[MetricsRow], epochs: int, *, best: bool) -> str:
    """The line an epoch ends with; while epochs remain, the run's ETA from the mean time of `rows`' epochs."""
    ema = "" if row.val_top1_ema is None else f"  EMA val top1 {row.val_top1_ema:.2f}"
    mean = sum(r.epoch_time_s for r in rows) / max(len(rows), 1)
    eta = f"  run ETA {duration_text(mean * (epochs - row.epoch))}" if row.epoch < epochs else ""
    return (f"epoch {row.epoch}/{epochs}  train loss {row.train_loss:.4f} top1 {row.train_top1:.2f}  val loss "
            f"{row.val_loss:.4f} top1 {row.val_top1:.2f} top5 {row.val_top5:.2f}  lr {row.lr:.3g}  "
            f"{row.epoch_time_s:.1f} s  {row.images_per_s:.0f} img/s  {row.peak_memory_mb:.0f} MB{ema}"
            f"{'  (best)' if best else ''}{eta}")


def summary_lines(rows: Sequence[MetricsRow], run: RunDir) -> list[str]:
    """What a finished run says: its best epoch and the weights it was scored with, total time, speed, peak
    memory, and where its checkpoints are."""
    if not rows:
        return []
    final = final_numbers(rows)
    weights = "EMA weights" if rows[-1].val_top1_ema is not None else "raw weights"
    total = sum(row.epoch_time_s for row in rows)
    speed = sum(row.images_per_s for row in rows) / len(rows)
    peak = max(rows, key=lambda row: row.peak_memory_mb)
    return [
        f"best epoch {int(final['best/epoch'])}/{rows[-1].epoch}: val top-1 {final['best/top1']:.2f}  "
        f"top-5 {final['best/top5']:.2f} ({weights}, as best.pt holds them)",
        f"total time {duration_text(total)} over {len(rows)} epochs  {speed:.0f} img/s in training  "
        f"peak memory {peak.peak_memory_mb:.0f} MB ({peak.peak_memory_kind})",
        f"checkpoints: {run.best} (best), {run.last} (last)",
    ]
