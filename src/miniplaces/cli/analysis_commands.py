"""`miniplaces saliency` and `miniplaces attack`: what a trained model looks at, and how easily it is fooled."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from miniplaces.attacks.spec import ATTACK_MODES, NORMS, mode_description
from miniplaces.cli.command import add_command, image_size, non_negative_float, positive_int
from miniplaces.errors import MiniPlacesError

DEFAULT_SWEEP = "0,1/255,2/255,4/255,8/255"



def register(subparsers: argparse._SubParsersAction) -> None:
    saliency = add_command(subparsers, "saliency", run_saliency)
    _common_arguments(saliency)
    saliency.add_argument("--out", type=Path,
                          help="folder for saliency_<method>.png "
                          "(default: the saliency/ folder of the checkpoint's run)")
    saliency.add_argument("--seed", type=int, default=0, help="seed of SmoothGrad's noise (default: 0)")
    saliency.add_argument("--method", choices=("vanilla", "smoothgrad", "gradcam"), default="vanilla",
                          help="vanilla: |input gradient| of the predicted class's loss; smoothgrad: its average over "
                          "noisy copies; gradcam: class-weighted conv feature map (default: vanilla)")
    saliency.add_argument("--n", type=positive_int, default=16,
                          help="how many images, the first of the split (default: 16)")
    saliency.add_argument("--layer", help="Grad-CAM: the module name to read (default: the model's last conv block)")
    saliency.add_argument("--samples", type=positive_int, default=16, help="SmoothGrad: noisy copies (default: 16)")
    saliency.add_argument("--sigma", type=non_negative_float, default=0.15,
                          help="SmoothGrad: noise std as a fraction of the pixel range (default: 0.15)")
    saliency.add_argument("--columns", type=positive_int, default=8, help="images per row of the grid (default: 8)")

    attack = add_command(subparsers, "attack", run_attack)
    _common_arguments(attack)
    attack.add_argument("--out", type=Path,
                        help="folder for attack.json and attack_grid.png, and sweep.json and sweep.png with --sweep "
                        "(default: the attack/ folder of the checkpoint's run)")
    attack.add_argument("--seed", type=int, default=0, help="seed of PGD's random start (default: 0)")
    attack.add_argument("--mode", choices=tuple(ATTACK_MODES), default="least-likely",
                        help=f"{_mode_help()} (default: least-likely)")
    attack.add_argument("--norm", choices=NORMS, default="linf", help="the threat model's norm (default: linf)")
    attack.add_argument("--eps", default="6/255",
                        help="budget in pixel units, e.g. 6/255 or 0.0235 (default: 6/255)")
    attack.add_argument("--steps", type=positive_int, default=10,
                        help="PGD steps, each a forward and a backward (default: 10)")
    attack.add_argument("--step-size", help="PGD step in pixel units, e.g. 1/255 (default: ε/10)")
    attack.add_argument("--random-start", action="store_true", help="PGD starts at a random point of the ε-ball")
    attack.add_argument("--limit", type=positive_int, help="attack only the first N images of the split (default: all)")
    attack.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default: 32)")
    attack.add_argument("--grid", type=positive_int, default=8, help="images shown in attack_grid.png (default: 8)")
    attack.add_argument("--sweep", nargs="?", const=DEFAULT_SWEEP, metavar="EPS,EPS,…",
                        help=f"also measure robust accuracy at each ε (bare --sweep: {DEFAULT_SWEEP})")


def _mode_help() -> str:
    """One clause per `--mode` choice, from the attack table."""
    return "; ".join(f"{mode}: {mode_description(mode)}" for mode in ATTACK_MODES)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a checkpoint written by miniplaces train, a run folder (its checkpoints/best.pt) "
                        "or a safetensors export folder")
    parser.add_argument("--root", required=True, type=Path, help="the dataset folder (MiniPlaces layout)")
    parser.add_argument("--split", choices=("train", "val"), default="val", help="labelled split to use (default: val)")
    parser.add_argument("--image-size", type=image_size,
                        help="centre-crop size of the val transform, resized to size·144/128 first "
                        "(default: the checkpoint's training image_size, else 128)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)")


def _load(args: argparse.Namespace) -> Any:
    """The checkpoint's model on the device, the split and the class names (`AnalysisInputs`)."""
    import torch

    from miniplaces.engine.device import resolve_device
    from miniplaces.workflows.analysis import load_for_analysis

    # Seeded before the model is built, as before: PGD's random start and SmoothGrad's noise follow from --seed.
    torch.manual_seed(args.seed)
    device = resolve_device(args.device, source="--device")
    return load_for_analysis(args.checkpoint, args.root, split=args.split, image_size=args.image_size, device=device)


def run_saliency(args: argparse.Namespace) -> int:
    from miniplaces.explain.overlay import run_label
    from miniplaces.explain.saliency import GradCamLayerError
    from miniplaces.progress import start_progress
    from miniplaces.workflows.analysis import saliency_report

    inputs = _load(args)
    try:
        report = saliency_report(
            inputs, args.out, method=args.method, n=args.n, layer=args.layer, samples=args.samples,
            sigma=args.sigma, columns=args.columns,
            title=f"{args.method} saliency · {run_label(args.checkpoint)} · {args.split}", progress=start_progress,
        )
    except GradCamLayerError as err:
        raise MiniPlacesError(f"{err} (--layer NAME picks the layer; --method vanilla or smoothgrad needs none)") \
            from err
    print(f"{args.method} saliency of the first {report.images} {args.split} images "
          f"({report.correct}/{report.images} predicted right)")
    print(f"wrote {report.path}")
    return 0


def run_attack(args: argparse.Namespace) -> int:
    from miniplaces.attacks.spec import AttackSpec
    from miniplaces.explain.overlay import run_label
    from miniplaces.pixels import parse_eps_list
    from miniplaces.progress import start_progress
    from miniplaces.workflows.analysis import attack_report

    # The flags become one spec here; everything after reads it.
    spec = AttackSpec.from_mode(args.mode, eps=args.eps, steps=args.steps, step_size=args.step_size,
                                random_start=args.random_start, norm=args.norm)
    sweep = parse_eps_list(args.sweep) if args.sweep is not None else None
    inputs = _load(args)
    report = attack_report(
        inputs, spec, args.out, limit=args.limit, batch_size=args.batch_size, grid=args.grid, sweep=sweep,
        seed=args.seed, title=f"{args.mode} · {run_label(args.checkpoint)} · {args.split}", progress=start_progress,
    )
    result = report.result
    success = "n/a" if result.success_rate is None else f"{result.success_rate:.1f}%"
    print(f"{spec.describe()} on {result.images} {args.split} images")
    print(f"clean        top-1 {result.clean_top1:5.1f}%  top-5 {result.clean_top5:5.1f}%")
    print(f"adversarial  top-1 {result.adv_top1:5.1f}%  top-5 {result.adv_top5:5.1f}%")
    print(f"success rate {success}  ({result.success_definition})")
    print(f"mean ‖δ‖∞ {result.mean_linf * 255:.2f}/255  mean ‖δ‖₂ {result.mean_l2:.3f}")
    print(f"wrote {report.files.result}")
    print(f"wrote {report.files.grid}")
    if report.sweep is not None:
        print("ε          adv top-1  adv top-5  success")
        for row in report.sweep.rows:
            rate = "n/a" if row.success_rate is None else f"{row.success_rate:.1f}%"
            print(f"{row.settings['eps_text']:<10} {row.adv_top1:8.1f}%  {row.adv_top5:8.1f}%  {rate:>7}")
        print(f"wrote {report.files.sweep}")
        print(f"wrote {report.files.sweep_plot}")
    return 0
