"""`miniplaces saliency` and `miniplaces attack`: what a trained model looks at, and how easily it is fooled."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from miniplaces.errors import MiniPlacesError

DEFAULT_SWEEP = "0,1/255,2/255,4/255,8/255"


def register(subparsers: argparse._SubParsersAction) -> None:
    saliency = subparsers.add_parser(
        "saliency",
        help="saliency maps of a checkpoint on the first images of a split (PNG grid)",
        description="Draw where a trained model looks: vanilla gradient saliency, SmoothGrad or Grad-CAM, as "
        "heat-map overlays with the true and predicted classes, in runs/<name>/saliency/saliency_<method>.png.",
    )
    _common_arguments(saliency)
    saliency.add_argument("--method", choices=("vanilla", "smoothgrad", "gradcam"), default="vanilla",
                          help="vanilla: |input gradient| of the predicted class's loss; smoothgrad: its average over "
                          "noisy copies; gradcam: class-weighted conv feature map (default: vanilla)")
    saliency.add_argument("--n", type=int, default=16, help="how many images, the first of the split (default: 16)")
    saliency.add_argument("--layer", help="Grad-CAM: the module name to read (default: the model's last conv block)")
    saliency.add_argument("--samples", type=int, default=16, help="SmoothGrad: noisy copies (default: 16)")
    saliency.add_argument("--sigma", type=float, default=0.15,
                          help="SmoothGrad: noise std as a fraction of the pixel range (default: 0.15)")
    saliency.add_argument("--columns", type=int, default=8, help="images per row of the grid (default: 8)")
    saliency.set_defaults(func=run_saliency)

    attack = subparsers.add_parser(
        "attack",
        help="accuracy under PGD/FGSM attack, with a grid of adversarial images and an optional ε sweep",
        description="Attack a trained model under an L∞ budget in pixel units and report clean and adversarial "
        "top-1/top-5, the attack's success rate and the perturbation's size (attack.json, attack_grid.png; "
        "with --sweep also sweep.json and sweep.png) in runs/<name>/attack/. Defaults are the study's: "
        "least-likely targeted PGD, ε = 6/255 (0.1 in normalised units), 10 steps of ε/10.",
    )
    _common_arguments(attack)
    attack.add_argument("--mode", choices=("least-likely", "untargeted", "fgsm"), default="least-likely",
                        help="least-likely: PGD towards the class the model finds least likely; untargeted: PGD away "
                        "from the true class; fgsm: one step of size ε (default: least-likely)")
    attack.add_argument("--eps", default="6/255",
                        help="L∞ budget in pixel units, e.g. 6/255 or 0.0235 (default: 6/255)")
    attack.add_argument("--steps", type=int, default=10, help="PGD steps, each a forward and a backward (default: 10)")
    attack.add_argument("--step-size", help="PGD step in pixel units, e.g. 1/255 (default: ε/10)")
    attack.add_argument("--random-start", action="store_true", help="PGD starts at a random point of the ε-ball")
    attack.add_argument("--limit", type=int, help="attack only the first N images of the split (default: all)")
    attack.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    attack.add_argument("--grid", type=int, default=8, help="images shown in attack_grid.png (default: 8)")
    attack.add_argument("--sweep", nargs="?", const=DEFAULT_SWEEP, metavar="EPS,EPS,…",
                        help=f"also measure robust accuracy at each ε (bare --sweep: {DEFAULT_SWEEP})")
    attack.set_defaults(func=run_attack)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint written by miniplaces train")
    parser.add_argument("--root", required=True, type=Path, help="the dataset folder (MiniPlaces layout)")
    parser.add_argument("--split", choices=("train", "val"), default="val", help="labelled split to use (default: val)")
    parser.add_argument("--out", type=Path,
                        help="output folder (default: <run>/attack or <run>/saliency beside the checkpoint's run)")
    parser.add_argument("--image-size", type=int,
                        help="centre-crop size of the val transform, resized to size·144/128 first "
                        "(default: the checkpoint's training image_size, else 128)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random starts and SmoothGrad noise (default: 0)")


def run_dir(checkpoint: Path) -> Path:
    """The run a checkpoint belongs to: `runs/<name>` for `runs/<name>/checkpoints/x.pt`, else its folder."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise MiniPlacesError(f"{flag} must be ≥ 1; got {value}")


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any, list[str]]:
    """Model (eval, on the device), checkpoint, dataset with the val transform, and class names."""
    import torch

    from miniplaces.data import MiniPlaces, resize_for, val_transform
    from miniplaces.engine.checkpoint import load_model
    from miniplaces.engine.device import resolve_device

    torch.manual_seed(args.seed)
    _positive(args.image_size, "--image-size")
    device = resolve_device(args.device, source="--device")
    model, checkpoint = load_model(args.checkpoint, device=device)
    if args.image_size is None:
        config = checkpoint.get("config")
        args.image_size = int(config.get("image_size", 128)) if isinstance(config, dict) else 128
    dataset = MiniPlaces(args.root, args.split, transform=val_transform(args.image_size, resize_for(args.image_size)))
    categories = list(checkpoint.get("categories") or dataset.classes)
    outputs = int(getattr(model, "num_classes", len(categories) or 0))
    if dataset.classes and outputs and len(dataset.classes) != outputs:
        raise MiniPlacesError(
            f"checkpoint {args.checkpoint} predicts {outputs} classes but {args.root} has {len(dataset.classes)}; "
            "use the dataset the model was trained on"
        )
    if len(dataset) == 0:
        raise MiniPlacesError(f"the {args.split} split of {args.root} has no images")
    return model, checkpoint, dataset, categories


def _first_images(dataset: Any, n: int, device: Any) -> tuple[Any, Any]:
    import torch

    items = [dataset[i] for i in range(min(n, len(dataset)))]
    x = torch.stack([image for image, _ in items]).to(device)
    y = torch.tensor([label for _, label in items], device=device)
    return x, y


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def run_saliency(args: argparse.Namespace) -> int:
    import torch

    from miniplaces.explain import saliency
    from miniplaces.explain.overlay import class_label, saliency_grid

    _positive(args.n, "--n")
    _positive(args.samples, "--samples")
    _positive(args.columns, "--columns")
    model, _, dataset, categories = _load(args)
    device = next(model.parameters()).device
    x, y = _first_images(dataset, args.n, device)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    maps = saliency(model, x, method=args.method, layer=args.layer, samples=args.samples, sigma=args.sigma)
    out = args.out or run_dir(args.checkpoint) / "saliency"
    true_names = [class_label(categories, int(k)) for k in y]
    pred_names = [class_label(categories, int(k)) for k in predicted]
    title = f"{args.method} saliency · {args.checkpoint.name} · {args.split}"
    path = saliency_grid(x.cpu(), maps.cpu(), true_names, pred_names, out / f"saliency_{args.method}.png",
                         title=title, columns=args.columns)
    correct = int((predicted == y).sum())
    print(f"{args.method} saliency of the first {len(x)} {args.split} images ({correct}/{len(x)} predicted right)")
    print(f"wrote {path}")
    return 0


def _settings_line(result: dict[str, Any]) -> str:
    if result["mode"] == "fgsm":
        return f"fgsm, ε = {result['eps_text']}"
    start = ", random start" if result["random_start"] else ""
    return (f"{result['mode']} PGD, ε = {result['eps_text']}, {result['steps']} steps of "
            f"{result['step_size'] * 255:.3g}/255{start}")


def run_attack(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader, Subset

    from miniplaces.attacks import attack_batch, evaluate_attack, parse_eps, parse_eps_list, robustness_sweep
    from miniplaces.explain.overlay import attack_grid, class_label, sweep_plot

    eps = parse_eps(args.eps)
    step_size = parse_eps(args.step_size) if args.step_size is not None else None
    sweep = parse_eps_list(args.sweep) if args.sweep is not None else None
    _positive(args.limit, "--limit")
    _positive(args.batch_size, "--batch-size")
    _positive(args.grid, "--grid")
    if args.steps < 1:
        raise MiniPlacesError(f"--steps must be ≥ 1; got {args.steps}")
    model, checkpoint, dataset, categories = _load(args)
    device = next(model.parameters()).device
    if args.limit is not None:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    options = {"mode": args.mode, "steps": args.steps, "step_size": step_size, "random_start": args.random_start}
    result = evaluate_attack(model, loader, eps=eps, device=device, **options)
    out = args.out or run_dir(args.checkpoint) / "attack"
    context = {"checkpoint": str(args.checkpoint), "model": checkpoint["model"], "root": str(args.root),
               "split": args.split, "image_size": args.image_size, "limit": args.limit, "seed": args.seed}
    _write_json(out / "attack.json", {**result, **context})

    x, y = _first_images(dataset, args.grid, device)
    shown = attack_batch(model, x, y, eps=eps, **options)
    names = [class_label(categories, int(k)) for k in y]
    grid = attack_grid(
        x.cpu(), shown.x_adv.cpu(), names,
        [class_label(categories, int(k)) for k in shown.clean_logits.argmax(1)],
        [class_label(categories, int(k)) for k in shown.adv_logits.argmax(1)],
        out / "attack_grid.png", title=_settings_line(result),
        target_names=None if shown.target is None else [class_label(categories, int(k)) for k in shown.target],
    )

    success = "n/a" if result["success_rate"] is None else f"{result['success_rate']:.1f}%"
    print(f"{_settings_line(result)} on {result['images']} {args.split} images")
    print(f"clean        top-1 {result['clean_top1']:5.1f}%  top-5 {result['clean_top5']:5.1f}%")
    print(f"adversarial  top-1 {result['adv_top1']:5.1f}%  top-5 {result['adv_top5']:5.1f}%")
    print(f"success rate {success}  ({result['success_definition']})")
    print(f"mean ‖δ‖∞ {result['mean_linf'] * 255:.2f}/255  mean ‖δ‖₂ {result['mean_l2']:.3f}")
    print(f"wrote {out / 'attack.json'}")
    print(f"wrote {grid}")
    if sweep is not None:
        torch.manual_seed(args.seed)
        rows = robustness_sweep(model, loader, eps_list=sweep, device=device, **options)
        _write_json(out / "sweep.json", {"rows": rows, **context})
        plot = sweep_plot(rows, out / "sweep.png", title=f"{args.mode} · {args.checkpoint.name} · {args.split}")
        print("ε          adv top-1  adv top-5  success")
        for row in rows:
            rate = "n/a" if row["success_rate"] is None else f"{row['success_rate']:.1f}%"
            print(f"{row['eps_text']:<10} {row['adv_top1']:8.1f}%  {row['adv_top5']:8.1f}%  {rate:>7}")
        print(f"wrote {out / 'sweep.json'}")
        print(f"wrote {plot}")
    return 0
