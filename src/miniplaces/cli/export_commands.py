"""`miniplaces export`: a checkpoint's model as ONNX, TorchScript or a safetensors + config.json folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint's model to ONNX, TorchScript or safetensors (+ config.json)",
        description=(
            "Write a checkpoint's model to a folder: model.onnx (dynamic batch axis), model.torchscript.pt "
            "(traced) or model.safetensors, each beside a config.json (architecture, arguments, class names, "
            "input size, normalisation). Each export is compared with PyTorch before it is written; the "
            "largest difference on the logits is printed. A safetensors folder can be given to "
            "`miniplaces predict --checkpoint`. An output folder holding files another program wrote (a "
            "model file without config.json, a foreign config.json) is refused unless --force. "
            "Needs `pip install 'miniplaces[export]'`."
        ),
    )
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a checkpoint of `miniplaces train`, a run folder (its checkpoints/best.pt), "
                             "or a safetensors export folder")
    parser.add_argument("--format", required=True, metavar="FORMAT", help="onnx, torchscript or safetensors")
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/export/<format>)")
    parser.add_argument("--force", action="store_true",
                        help="write into --out even where it holds a model file or config.json that "
                             "miniplaces export did not write (they are replaced)")
    parser.add_argument("--images", type=Path, nargs="+", metavar="IMAGE_OR_DIR",
                        help="up to 8 images to check the export on (default: the run's val images, else random)")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from miniplaces.errors import MiniPlacesError
    from miniplaces.workflows.export import ATOL, RTOL, ForeignFolderError, export_checkpoint

    try:
        result, inputs = export_checkpoint(args.checkpoint, args.format, args.out, args.images or (),
                                           overwrite=args.force)
    except ForeignFolderError as err:
        raise MiniPlacesError(f"{err}, or pass --force to replace it") from err
    sizes = " and ".join(map(str, result.batch_sizes))
    print(f"{result.format} export → {result.model_file} (+ config.json)")
    print(f"checked against PyTorch on {inputs}, batch sizes {sizes}: max abs difference on the logits "
          f"{result.max_abs_diff:.3g} (tolerance {ATOL:g} + {RTOL:g}·|logit|)")
    return 0
