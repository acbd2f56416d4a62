"""Every command with a broken argument ends in one `error:` line naming the culprit, exit 2, no traceback.

The table `CASES` is the list of bad inputs tried (issue 12); each row is a command line built from the
fixtures below and the text its error must contain. A few rows run in a subprocess too, to show that
nothing but that line reaches the terminal.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from miniplaces.cli import main
from miniplaces.config import TrainConfig
from miniplaces.workflows.train import train

TORCH_THREADS = 1


@dataclass
class Ctx:
    """What the command lines of the table are made of."""

    root: Path  # 4 classes, 32×32
    renamed: Path  # the same images, class names changed (same count)
    ckpt: Path  # a run's last.pt
    run: Path  # that run's folder
    tmp: Path  # a fresh folder per case
    file: Path  # a regular file (a folder under it cannot exist)
    bad: dict[str, Path]  # damaged checkpoints and files, by name


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 1×1 PNG whose header claims `width`×`height` (what a decompression bomb looks like to Pillow)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def _damaged(ckpt: Path, out: Path, **changes: object) -> Path:
    payload = torch.load(ckpt, weights_only=True)
    payload.update(changes)
    torch.save(payload, out)
    return out


@pytest.fixture(scope="module")
def world(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Ctx:
    base = tmp_path_factory.mktemp("cli_errors")
    run = train(TrainConfig(root=str(synth_root), out_dir=str(base / "runs"), name="tiny", epochs=2, batch_size=16,
                            lr=0.05, workers=0, image_size=32, device="cpu", log_every=1, limit_train_batches=1,
                            limit_val_batches=1), progress=False)
    ckpt = run / "checkpoints" / "last.pt"
    renamed = Path(shutil.copytree(synth_root, base / "renamed"))
    text = (renamed / "categories.txt").read_text()
    (renamed / "categories.txt").write_text(text.replace("scene_000", "scene_zzz"))
    bad = base / "bad"
    bad.mkdir()
    (bad / "text.pt").write_text("model: simplenet\nstate_dict: {}\n")
    (bad / "latin1.yaml").write_bytes("# réglages\nlr: 0.1\n".encode("latin-1"))
    (bad / "lr_nan.yaml").write_text("lr: .nan\n")
    (bad / "tag.yaml").write_text("epochs: 2\nlr: !!python/object/apply:os.system [echo hi]\n")
    (bad / "folder").mkdir()
    weights = torch.load(ckpt, weights_only=True)
    files = {
        "text": bad / "text.pt",
        "model_str": _damaged(ckpt, bad / "model_str.pt", model="simplenet"),
        "classes_neg": _damaged(ckpt, bad / "classes_neg.pt",
                                model={"name": "simplenet", "kwargs": {**weights["model"]["kwargs"],
                                                                       "num_classes": -1}}),
        "state_list": _damaged(ckpt, bad / "state_list.pt", state_dict=[1, 2, 3]),
        "categories_int": _damaged(ckpt, bad / "categories_int.pt", categories=[0, 1, 2, 3]),
        "categories_str": _damaged(ckpt, bad / "categories_str.pt", categories="abcd"),
        "epoch_neg": _damaged(ckpt, bad / "epoch_neg.pt", epoch=-3),
        "unknown_kwarg": _damaged(ckpt, bad / "unknown_kwarg.pt",
                                  model={"name": "simplenet", "kwargs": {"num_classes": 4, "wings": 2}}),
        "unknown_model": _damaged(ckpt, bad / "unknown_model.pt", model={"name": "nope", "kwargs": {}}),
        "flat_weights": _damaged(ckpt, bad / "flat_weights.pt",
                                 state_dict={k: v.flatten() for k, v in weights["state_dict"].items()}),
        "no_rng": _damaged(ckpt, bad / "no_rng.pt", rng=None),
        "optimizer_str": _damaged(ckpt, bad / "optimizer_str.pt", optimizer="sgd"),
        "best_str": _damaged(ckpt, bad / "best_str.pt", best_top1="high"),
        "huge_config": _damaged(ckpt, bad / "huge_config.pt", config={**weights["config"], "image_size": 100000}),
        "tag": bad / "tag.yaml",
        "folder": bad / "folder",
        "latin1": bad / "latin1.yaml",
        "lr_nan": bad / "lr_nan.yaml",
        "bomb": _png_claiming(bad / "bomb.png", 30000, 30000),
        "big": _png_claiming(bad / "big.png", 9000, 9000),
        "strip": bad / "strip.png",
    }
    Image.new("L", (200000, 1)).save(files["strip"])
    file = base / "file.txt"
    file.write_text("a file, not a folder\n")
    return Ctx(synth_root, renamed, ckpt, run, base, file, files)


def _train(ctx: Ctx, *extra: str) -> list[str]:
    return ["train", "--model", "simplenet", "--root", str(ctx.root), "--set", f"out_dir={ctx.tmp / 'runs'}",
            "--set", "device=cpu", "--set", "workers=0", "--set", "image_size=32", "--set", "batch_size=16",
            "--set", "epochs=1", "--set", "limit_train_batches=1", "--set", "limit_val_batches=1", *extra]


def _eval(ctx: Ctx, ckpt: Path | None = None, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(ckpt or ctx.ckpt), "--root", str(ctx.root), "--workers", "0",
            "--device", "cpu", *extra]


def _analysis(command: str, ctx: Ctx, *extra: str, root: Path | None = None) -> list[str]:
    return [command, "--checkpoint", str(ctx.ckpt), "--root", str(root or ctx.root), "--device", "cpu", *extra]


def _predict(ctx: Ctx, *extra: str) -> list[str]:
    return ["predict", "--checkpoint", str(ctx.ckpt), "--device", "cpu", *extra]


Case = tuple[str, Callable[[Ctx], list[str]], str]

# (id, command line, what the error names). Every row failed on main before issue 12 (exit code, traceback
# or message) unless its id says "held".
CASES: list[Case] = [
    # numeric flags, refused by argparse before anything runs
    ("eval-batch-size-0", lambda c: _eval(c, None, "--batch-size", "0"), "--batch-size"),
    ("eval-workers-neg", lambda c: _eval(c, None, "--workers", "-1"), "--workers"),
    ("predict-image-size-neg", lambda c: _predict(c, str(c.bad["strip"]), "--image-size", "-5"),
     "--image-size"),
    ("predict-image-size-huge", lambda c: _predict(c, str(c.bad["strip"]), "--image-size", "100000"),
     "--image-size"),
    ("predict-batch-size-word", lambda c: _predict(c, str(c.bad["strip"]), "--batch-size", "many"),
     "--batch-size: 'many' is not an integer"),
    ("predict-workers-neg", lambda c: _predict(c, str(c.bad["strip"]), "--workers", "-2"), "--workers"),
    ("saliency-n-0 (held)", lambda c: _analysis("saliency", c, "--n", "0"), "--n"),
    ("saliency-sigma-nan", lambda c: _analysis("saliency", c, "--sigma", "nan"), "--sigma: 'nan' is not a finite"),
    ("saliency-samples-neg (held)", lambda c: _analysis("saliency", c, "--samples", "-4"), "--samples"),
    ("saliency-columns-0 (held)", lambda c: _analysis("saliency", c, "--columns", "0"), "--columns"),
    ("attack-steps-0 (held)", lambda c: _analysis("attack", c, "--steps", "0"), "--steps"),
    ("attack-limit-neg (held)", lambda c: _analysis("attack", c, "--limit", "-1"), "--limit"),
    ("attack-batch-size-0 (held)", lambda c: _analysis("attack", c, "--batch-size", "0"), "--batch-size"),
    ("attack-image-size-huge", lambda c: _analysis("attack", c, "--image-size", "5000"), "--image-size: must be"),
    ("attack-grid-0 (held)", lambda c: _analysis("attack", c, "--grid", "0"), "--grid"),
    ("models-image-size-0", lambda c: ["models", "simplenet", "--image-size", "0"], "--image-size"),
    ("models-num-classes-0", lambda c: ["models", "simplenet", "--num-classes", "0"], "--num-classes"),
    ("demo-epochs-0 (held)", lambda c: ["demo", "--out", str(c.tmp / "demo"), "--epochs", "0"], "--epochs"),
    ("demo-lr-neg", lambda c: ["demo", "--out", str(c.tmp / "demo"), "--lr", "-0.1"], "--lr"),
    ("demo-lr-inf", lambda c: ["demo", "--out", str(c.tmp / "demo"), "--lr", "inf"], "--lr: 'inf' is not a finite"),
    ("demo-image-size-8", lambda c: ["demo", "--out", str(c.tmp / "demo"), "--image-size", "8"], "--image-size"),
    ("demo-workers-neg", lambda c: ["demo", "--out", str(c.tmp / "demo"), "--workers", "-1"], "--workers: must"),
    ("bench-threads-neg (held)", lambda c: ["bench", "attack", "--threads", "-3"], "--threads"),
    # config values, refused by the config before anything is created
    ("train-lr-nan-yaml", lambda c: _train(c, "--config", str(c.bad["lr_nan"])), "key 'lr' must be a finite"),
    ("train-lr-inf", lambda c: _train(c, "--set", "lr=.inf"), "key 'lr' must be a finite number"),
    ("train-lr-neg", lambda c: _train(c, "--set", "lr=-0.1"), "key 'lr' must be > 0"),
    ("train-wd-neg", lambda c: _train(c, "--set", "weight_decay=-1e-4"), "key 'weight_decay' must be ≥ 0"),
    ("train-momentum-1", lambda c: _train(c, "--set", "momentum=1"), "key 'momentum' must be in [0, 1)"),
    ("train-smoothing-1", lambda c: _train(c, "--set", "label_smoothing=1.0"), "key 'label_smoothing' must be in"),
    ("train-smoothing-neg (held)", lambda c: _train(c, "--set", "label_smoothing=-0.1"), "key 'label_smoothing'"),
    ("train-clip-0 (held)", lambda c: _train(c, "--set", "clip_grad=0"), "key 'clip_grad' must be > 0"),
    ("train-epochs-0 (held)", lambda c: _train(c, "--set", "epochs=0"), "key 'epochs' must be ≥ 1"),
    ("train-batch-0 (held)", lambda c: _train(c, "--set", "batch_size=0"), "key 'batch_size' must be ≥ 1"),
    ("train-warmup-neg (held)", lambda c: _train(c, "--set", "warmup_epochs=-1"), "key 'warmup_epochs' must be ≥ 0"),
    ("train-workers-neg (held)", lambda c: _train(c, "--set", "workers=-1"), "key 'workers' must be ≥ 0"),
    ("train-image-size-huge", lambda c: _train(c, "--set", "image_size=100000"), "key 'image_size' must be between"),
    ("train-image-size-8", lambda c: _train(c, "--set", "image_size=8"), "key 'image_size' must be between"),
    ("train-name-dotdot", lambda c: _train(c, "--name", "../../x"), "key 'name' must be a single folder name"),
    ("train-name-absolute", lambda c: _train(c, "--name", str(c.tmp / "abs")), "key 'name' must be a single"),
    ("train-name-slash", lambda c: _train(c, "--name", "a/b"), "key 'name' must be a single folder name"),
    ("train-name-dot", lambda c: _train(c, "--name", "."), "key 'name' must be a single folder name"),
    ("train-config-latin1", lambda c: _train(c, "--config", str(c.bad["latin1"])), "latin1.yaml:1: not UTF-8"),
    ("train-config-python-tag", lambda c: _train(c, "--config", str(c.bad["tag"])),
     "tag.yaml:2:5: not valid YAML: could not determine a constructor for the tag '!!python/object/apply"),
    ("train-config-folder (held)", lambda c: _train(c, "--config", str(c.bad["folder"])), "Is a directory"),
    ("train-min-lr-inf", lambda c: _train(c, "--set", "min_lr=.inf"), "key 'min_lr' must be a finite number"),
    ("train-epochs-float (held)", lambda c: _train(c, "--set", "epochs=1e3"), "key 'epochs' must be int"),
    ("train-model-kwarg-unknown", lambda c: _train(c, "--set", "model_kwargs.bogus=1"),
     "model 'simplenet': SimpleNet.__init__() got an unexpected keyword argument 'bogus'"),
    # checkpoints that are not what they claim
    ("eval-ckpt-text (held)", lambda c: _eval(c, c.bad["text"]), "text.pt"),
    ("eval-ckpt-model-str", lambda c: _eval(c, c.bad["model_str"]), "model_str.pt is damaged or not a miniplaces "
                                                                     "checkpoint: key 'model'"),
    ("eval-ckpt-classes-neg", lambda c: _eval(c, c.bad["classes_neg"]), "key 'model.kwargs.num_classes' must be"),
    ("eval-ckpt-state-list", lambda c: _eval(c, c.bad["state_list"]), "key 'state_dict' must map"),
    ("eval-ckpt-categories-int", lambda c: _eval(c, c.bad["categories_int"]), "key 'categories' must be a list"),
    ("predict-ckpt-categories-str", lambda c: ["predict", "--checkpoint", str(c.bad["categories_str"]),
                                               str(c.bad["strip"])], "categories_str.pt"),
    ("saliency-ckpt-epoch-neg", lambda c: ["saliency", "--checkpoint", str(c.bad["epoch_neg"]), "--root",
                                           str(c.root)], "key 'epoch' must be an integer ≥ 0"),
    ("attack-ckpt-unknown-kwarg", lambda c: ["attack", "--checkpoint", str(c.bad["unknown_kwarg"]), "--root",
                                             str(c.root)], "unknown_kwarg.pt: cannot rebuild model 'simplenet'"),
    ("eval-ckpt-unknown-model (held)", lambda c: _eval(c, c.bad["unknown_model"]), "unknown_model.pt: unknown model"),
    ("eval-ckpt-flat-weights", lambda c: _eval(c, c.bad["flat_weights"]), "weights do not fit model 'simplenet': "
                                                                           "size mismatch for"),
    ("train-resume-no-rng", lambda c: ["train", "--resume", str(c.bad["no_rng"]), "--set", "epochs=3"],
     "no_rng.pt cannot be resumed: key 'rng'"),
    ("train-resume-optimizer-str", lambda c: ["train", "--resume", str(c.bad["optimizer_str"]), "--set",
                                              "epochs=3"], "key 'optimizer' must be a mapping"),
    ("train-resume-best-str", lambda c: ["train", "--resume", str(c.bad["best_str"]), "--set", "epochs=3"],
     "key 'best_top1' must be a number"),
    ("train-resume-huge-config", lambda c: ["train", "--resume", str(c.bad["huge_config"])],
     "key 'image_size' must be between 16 and 1024"),
    ("train-resume-text (held)", lambda c: ["train", "--resume", str(c.bad["text"])], "text.pt"),
    ("train-resume-state-list", lambda c: ["train", "--resume", str(c.bad["state_list"])], "key 'state_dict'"),
    # images that would decode or resize to billions of pixels
    ("predict-bomb", lambda c: _predict(c, str(c.bad["bomb"])), "bomb.png: refused"),
    ("predict-81mp", lambda c: _predict(c, str(c.bad["big"])),
     "big.png: refused before decoding: the image of 9000×9000 has"),
    ("predict-strip", lambda c: _predict(c, str(c.bad["strip"])), "strip.png: refused, a 200000×1 image"),
    # paths that cannot be written
    ("eval-out-under-file", lambda c: _eval(c, None, "--out", str(c.file / "eval.json")), "cannot write"),
    ("eval-out-is-folder", lambda c: _eval(c, None, "--out", str(c.bad["folder"])),
     "folder: Is a directory"),
    ("train-out-dir-under-file", lambda c: _train(c, "--set", f"out_dir={c.file / 'runs'}"),
     "cannot create the run directory"),
    ("train-name-is-a-file", lambda c: _train(c, "--name", "file.txt", "--set", f"out_dir={c.file.parent}"),
     "file.txt: a file of that name exists"),
    ("train-out-dir-proc", lambda c: _train(c, "--set", "out_dir=/proc/miniplaces-runs"), "/proc/miniplaces-runs"),
    ("report-out-under-file", lambda c: ["report", str(c.run), "--out", str(c.file / "report")], "file.txt"),
    ("saliency-out-under-file", lambda c: _analysis("saliency", c, "--n", "2", "--out", str(c.file / "s")),
     "file.txt"),
    ("demo-out-under-file", lambda c: ["demo", "--out", str(c.file / "demo"), "--epochs", "1"], "file.txt"),
    # resume and run folders
    ("train-resume-other-model", lambda c: ["train", "--resume", str(c.run), "--model", "vit"],
     "model 'simplenet' → 'vit'"),
    ("train-resume-fewer-epochs", lambda c: ["train", "--resume", str(c.run), "--set", "epochs=1"],
     "it has already trained 2 epoch(s)"),
    ("train-resume-other-image-size", lambda c: ["train", "--resume", str(c.run), "--set", "image_size=48"],
     "image_size 32 → 48"),
    ("train-resume-other-lr", lambda c: ["train", "--resume", str(c.run), "--set", "lr=1e-3"], "lr 0.05 → 0.001"),
    ("train-resume-model-kwargs", lambda c: ["train", "--resume", str(c.run), "--set", "model_kwargs.dropout=0.9"],
     "model_kwargs {} → {'dropout': 0.9}"),
    ("train-resume-other-categories", lambda c: ["train", "--resume", str(c.run), "--root", str(c.renamed)],
     "categories differ from the checkpoint's (class 0: 'scene_zzz' instead of 'scene_000')"),
    ("train-resume-nothing (held)", lambda c: ["train", "--resume", str(c.tmp / "nowhere")], "nothing to resume"),
    ("train-name-taken (held)", lambda c: _train(c, "--name", "tiny", "--set", f"out_dir={c.run.parent}"),
     "already holds a run"),
    # analysis on a dataset whose class names differ from the checkpoint's
    ("saliency-renamed-classes", lambda c: _analysis("saliency", c, root=c.renamed), "categories that differ"),
    ("attack-renamed-classes", lambda c: _analysis("attack", c, root=c.renamed),
     "class 0 is 'scene_zzz', the checkpoint's is 'scene_000'"),
    ("eval-renamed-classes (held)", lambda c: ["eval", "--checkpoint", str(c.ckpt), "--root", str(c.renamed)],
     "categories that differ"),
    # numbers of the commands that landed beside this table (serve, study, cache, synth, download)
    ("serve-port-huge (held)",
     lambda c: ["serve", "--checkpoint", str(c.ckpt), "--root", str(c.root), "--port", "70000"], "--port"),
    ("serve-threads-0", lambda c: ["serve", "--checkpoint", str(c.ckpt), "--root", str(c.root), "--threads", "0"],
     "--threads"),
    ("study-experiment-unknown", lambda c: ["study", "--root", str(c.root), "--experiments", "simplenet,nope",
                                            "--out", str(c.tmp / "s")],
     ": fast, msvit, resnet18, simplenet, simplenet_unfold, vit"),
    ("study-threads-word (held)", lambda c: ["study", "--root", str(c.root), "--threads", "two"], "--threads"),
    ("cache-workers-0 (held)", lambda c: ["cache", "--root", str(c.root), "--workers", "0"], "--workers"),
    ("cache-image-size-word (held)", lambda c: ["cache", "--root", str(c.root), "--image-size", "big"], "--image-size"),
    ("synth-image-size-huge (held)", lambda c: ["synth", "--root", str(c.tmp / "s"), "--image-size", "5000"],
     "--image-size"),
    ("synth-classes-word (held)", lambda c: ["synth", "--root", str(c.tmp / "s"), "--classes", "ten"], "--classes"),
    ("download-timeout-inf (held)", lambda c: ["download", "--root", str(c.tmp / "d"), "--timeout", "inf"],
     "--timeout"),
]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses a flag by exiting
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "names"), [pytest.param(c[1], c[2], id=c[0]) for c in CASES])
def test_bad_input_is_one_clean_line(argv: Callable[[Ctx], list[str]], names: str, world: Ctx, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    ctx = Ctx(**{**world.__dict__, "tmp": tmp_path})
    code, err = _run(argv(ctx), capsys)
    assert "Traceback" not in err
    assert code == 2, err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    assert names in error_lines[0], err  # in the error itself, not in argparse's usage lines


def test_nothing_is_created_by_a_refused_config(world: Ctx, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                ) -> None:
    ctx = Ctx(**{**world.__dict__, "tmp": tmp_path})
    for extra in (["--set", "lr=.nan"], ["--set", "image_size=100000"], ["--name", "../escape"],
                  ["--set", "model_kwargs.bogus=1"], ["--set", "model_kwargs.conv_op=bogus"]):
        assert _run(_train(ctx, *extra), capsys)[0] == 2
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escape").exists()


def test_resume_refusal_writes_nothing(world: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: p.stat().st_mtime_ns for p in world.run.rglob("*") if p.is_file()}
    assert _run(["train", "--resume", str(world.run), "--model", "vit"], capsys)[0] == 2
    assert _run(["train", "--resume", str(world.run), "--root", str(world.renamed)], capsys)[0] == 2
    assert {p: p.stat().st_mtime_ns for p in world.run.rglob("*") if p.is_file()} == before
    assert "simplenet" in (world.run / "config.yaml").read_text()


def test_set_lr_in_exponent_notation_is_a_number(tmp_path: Path) -> None:
    from miniplaces.config import load_config, resolve

    (tmp_path / "c.yaml").write_text("lr: 1e-3\nweight_decay: 5e-4\nmin_lr: 1E-6\n")
    config = resolve(load_config(tmp_path / "c.yaml", ["root=x", "clip_grad=2e0"]))
    assert (config.lr, config.weight_decay, config.min_lr, config.clip_grad) == (1e-3, 5e-4, 1e-6, 2.0)
    assert resolve(load_config(None, ["root=x", "lr=1e-3", "label_smoothing=1e-1"])).lr == 1e-3
    assert load_config(None, ["adv_eps=1e-2"]).adv_eps == "1e-2"  # a string key keeps the text


def test_full_disk_is_one_line_naming_the_file(world: Ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import miniplaces.fileio as fileio

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", full)
    out = tmp_path / "eval.json"
    code, err = _run(_eval(world, None, "--out", str(out)), capsys)
    assert code == 2 and "Traceback" not in err
    assert f"cannot write {out}: No space left on device" in err
    assert not out.exists() and not list(tmp_path.iterdir())  # no temporary file left behind
    code, err = _run(_train(Ctx(**{**world.__dict__, "tmp": tmp_path}), "--name", "full", "--set", "epochs=1",
                            "--set", "limit_train_batches=1", "--set", "batch_size=16"), capsys)
    assert code == 2 and "Traceback" not in err and "No space left on device" in err
    assert "full" in err


def test_a_bug_is_one_line_with_the_hint_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import miniplaces.cli.model_commands as models

    def broken(args: object) -> int:
        raise RuntimeError("lost\nsecond line")

    monkeypatch.setattr(models, "run_models", broken)
    monkeypatch.delenv("MINIPLACES_DEBUG", raising=False)
    code, err = _run(["models"], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.strip() == "error: RuntimeError: lost (run with --debug or MINIPLACES_DEBUG=1 for the traceback)"
    code, err = _run(["--debug", "models"], capsys)
    assert code == 1 and "Traceback" in err and "second line" in err
    code, err = _run(["models", "--debug"], capsys)
    assert code == 1 and "Traceback" in err
    monkeypatch.setenv("MINIPLACES_DEBUG", "1")
    code, err = _run(["models"], capsys)
    assert code == 1 and "Traceback" in err


def test_an_os_error_that_escapes_is_exit_2_naming_the_path(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import miniplaces.cli.model_commands as models

    def denied(args: object) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/srv/shared/runs")

    monkeypatch.setattr(models, "run_models", denied)
    monkeypatch.delenv("MINIPLACES_DEBUG", raising=False)
    code, err = _run(["models"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: /srv/shared/runs: Permission denied (run with --debug")


def test_debug_shows_the_traceback_of_a_user_error(world: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--debug", *_eval(world, world.bad["model_str"])], capsys)
    assert code == 2 and "Traceback" in err and "error: " in err.splitlines()[-1]


@pytest.mark.parametrize("case", ["eval-batch-size-0", "eval-ckpt-model-str", "predict-strip", "train-config-latin1"])
def test_no_traceback_reaches_the_terminal(case: str, world: Ctx, tmp_path: Path) -> None:
    argv = dict((c[0], c[1]) for c in CASES)[case](Ctx(**{**world.__dict__, "tmp": tmp_path}))
    names = dict((c[0], c[2]) for c in CASES)[case]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("MINIPLACES_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "miniplaces", *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert "Traceback" not in done.stderr and errors == [done.stderr.strip().splitlines()[-1]]
    assert names in errors[0]
