"""`miniplaces train` and `miniplaces eval`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from miniplaces.cli.command import add_command, non_negative_int, positive_float, positive_int
from miniplaces.config import TTA_MODES


def register(subparsers: Any) -> None:
    train = add_command(subparsers, "train", run_train)
    train.add_argument("--model", help="registered model name (see `miniplaces models`); same as --set model=…")
    train.add_argument("--root", help="dataset folder in the MiniPlaces layout")
    train.add_argument("--config", help="YAML file of config keys, or the name of a packaged preset (fast, "
                       "simplenet, simplenet_unfold, vit, msvit, resnet18; see configs/)")
    train.add_argument("--epochs", type=positive_int, help="epochs to train; same as --set epochs=…")
    train.add_argument("--lr", type=positive_float, help="peak learning rate; same as --set lr=…")
    train.add_argument("-b", "--batch-size", type=positive_int, help="images per batch; same as --set batch_size=…")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="set one config key, e.g. --set epochs=10 --set amp=bf16 (repeatable)")
    train.add_argument("--name", help="run name: the run directory is <out_dir>/<name>")
    train.add_argument("--adv-train", choices=("none", "pgd", "fgsm"),
                       help="adversarial training: each batch replaced by an attack on the current model "
                       "(pgd: untargeted, adv_steps=10 steps of ε/10; fgsm: one step of ε); "
                       "same as --set adv_train=…")
    train.add_argument("--adv-eps", metavar="EPS",
                       help="L∞ budget of adversarial training in pixel units, e.g. 6/255 (the default) or 0.0235; "
                       "same as --set adv_eps=…")
    train.add_argument("--resume", metavar="RUN_DIR_OR_CKPT",
                       help="continue a run exactly from its checkpoints/last.pt (flags given here apply on top)")
    train.add_argument("--init-from", metavar="CKPT_OR_RUN_DIR",
                       help="start a new run from the weights of this checkpoint or run folder (its best.pt), of "
                       "the same model: fine-tuning with this run's own schedule and optimiser, and a new "
                       "classifier when the number of classes differs; same as --set init_from=…")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config (presets, --config and --set applied) as YAML and exit "
                       "without writing anything")

    ev = add_command(subparsers, "eval", run_eval)
    ev.add_argument("--checkpoint", required=True,
                    help="a .pt file written by `miniplaces train`, a run folder (its checkpoints/best.pt) "
                         "or a safetensors export folder")
    ev.add_argument("--root", required=True, help="dataset folder in the MiniPlaces layout")
    ev.add_argument("--split", default="val", choices=("val", "train"), help="labelled split (default val)")
    ev.add_argument("--tta", choices=("none", *TTA_MODES), default="none",
                    help="test-time augmentation: the mirror image (flip), or the corner and centre crops of the "
                    "image resized to 144/128 of the model's side (five-crop; ten-crop adds their mirror images)")
    ev.add_argument("--out", help="JSON file to write instead of <checkpoint dir>/eval_<split>.json")
    ev.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    ev.add_argument("--device", default="auto",
                    help="auto, cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)")
    ev.add_argument("--workers", type=non_negative_int, default=4, help="loader processes (default 4)")
    ev.add_argument("--loader", choices=("dataloader", "cache"), default="dataloader",
                    help="per-sample decoding (default) or the decoded cache at the checkpoint's image size "
                    "(built when missing; faster)")
    ev.add_argument("--limit", type=positive_int, metavar="N",
                    help="evaluate the first N images only (rounded up to whole batches)")


def _setup_logging() -> None:
    # Under torchrun only rank 0 talks.
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def run_train(args: argparse.Namespace) -> int:
    from miniplaces.config import config_yaml, load_config, resolve
    from miniplaces.engine.resume import resume_config
    from miniplaces.errors import MiniPlacesError
    from miniplaces.presets import config_file
    from miniplaces.rundir import RunExistsError
    from miniplaces.workflows.train import TrainingInterrupted, train

    _setup_logging()
    flags = (("model", args.model), ("root", args.root), ("name", args.name), ("adv_train", args.adv_train),
             ("adv_eps", args.adv_eps), ("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size),
             ("init_from", args.init_from))
    overrides = [f"{key}={value}" for key, value in flags if value is not None]
    overrides += args.overrides
    base = resume_config(args.resume) if args.resume else None
    config = load_config(config_file(args.config) if args.config else None, overrides, base=base)
    if args.print_config:
        print(config_yaml(resolve(config)), end="")
        return 0
    try:
        run_dir = train(config, resume=args.resume)
    except RunExistsError as err:
        raise MiniPlacesError(f"run directory {err.run_dir} already holds a run; continue it with "
                              f"`miniplaces train --resume {err.run_dir}` or choose another --name") from err
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    print(f"run directory: {run_dir}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from miniplaces.progress import start_progress
    from miniplaces.workflows.evaluate import evaluate_checkpoint

    result, path = evaluate_checkpoint(args.checkpoint, args.root, split=args.split,
                                       tta=None if args.tta == "none" else args.tta, out=args.out,
                                       batch_size=args.batch_size, device=args.device, workers=args.workers,
                                       loader=args.loader, limit=args.limit, progress=start_progress)
    print(f"{result.model['name']} epoch {result.epoch} on {result.split} ({result.count} images, "
          f"tta {result.tta or 'none'}): top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  "
          f"loss {result.loss:.4f}")
    ranked = sorted(result.per_class, key=lambda c: c.accuracy)
    if len(ranked) > 1:
        show = min(3, len(ranked) // 2)
        fmt = ", ".join
        print("worst classes: " + fmt(f"{c.name} {c.accuracy:.0f}%" for c in ranked[:show]))
        print("best classes:  " + fmt(f"{c.name} {c.accuracy:.0f}%" for c in reversed(ranked[-show:])))
    print(f"written: {path}")
    return 0
