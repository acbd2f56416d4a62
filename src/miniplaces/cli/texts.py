"""What `miniplaces --help` and `miniplaces CMD --help` say about each command: one table, so the whole
command line's wording can be read and kept consistent in one place (`add_command` looks it up by name)."""

from __future__ import annotations

from typing import NamedTuple


class CommandText(NamedTuple):
    """The one-line help in the list of commands, and the paragraph at the top of the command's own --help."""

    help: str
    description: str


COMMANDS: dict[str, CommandText] = {
    "saliency": CommandText(
        "saliency maps of a checkpoint on the first images of a split (PNG grid)",
        "Draw where a trained model looks: vanilla gradient saliency, SmoothGrad or Grad-CAM, as "
        "heat-map overlays with the true and predicted classes, in runs/<name>/saliency/saliency_<method>.png.",
    ),
    "attack": CommandText(
        "accuracy under PGD/FGSM attack, with a grid of adversarial images and an optional ε sweep",
        "Attack a trained model under an L∞ budget in pixel units and report clean and adversarial "
        "top-1/top-5, the attack's success rate and the perturbation's size (attack.json, attack_grid.png; "
        "with --sweep also sweep.json and sweep.png) in runs/<name>/attack/. Defaults are the study's: "
        "least-likely targeted PGD, ε = 6/255 (0.1 in normalised units), 10 steps of ε/10.",
    ),
    "cache": CommandText(
        "decode a split once into a memory-mapped uint8 cache (reused while up to date)",
        "Decode every image of a split once into <cache dir>/<split>-<S>.images.npy (uint8 N×S×S×3) "
        "with its labels and metadata, for the batched loader. An up-to-date cache is reused; a changed "
        "label file or image list rebuilds it. The cache goes to <root>/cache, or to "
        "~/.cache/miniplaces/<name>-<hash> when the dataset folder is read-only.",
    ),
    "download": CommandText(
        "download and extract the official MiniPlaces archive and label files, then verify",
        "Download data.tar.gz (official URLs, or --url) and the devkit label files into ROOT, "
        "resuming a partial download; reject unsafe archives; extract to ROOT/images/{train,val,test}; "
        "then verify. Files already in ROOT (data.tar.gz, train.txt, val.txt, categories.txt) are used "
        "as they are, so you can also place them there by hand.",
    ),
    "verify": CommandText(
        "check a dataset folder: sizes, labels, every image present and decodable",
        "Check ROOT in the MiniPlaces layout: categories.txt, train.txt and val.txt (format, labels in "
        "range), every listed image present and fully decodable, the optional test split. Prints split "
        "sizes, images per class, full dataset or subset, and every problem. Exit 0 when sound, else 1.",
    ),
    "synth": CommandText(
        "write a deterministic synthetic dataset in the MiniPlaces layout",
        "Write procedurally drawn scenes (one style per class: sky/ground colours, horizon, texture, shape) "
        "as JPEGs with label files, in the official layout. The same arguments give identical files.",
    ),
    "demo": CommandText(
        "make synthetic data, train SimpleNet, evaluate, saliency, attack, report (a few minutes on a CPU)",
        "The one-command tour: make (or reuse) a synthetic dataset under OUT/data, train SimpleNet for a few "
        "epochs, evaluate it, draw a saliency grid, attack it (PGD, with an ε sweep) and write the report "
        "(OUT/report/report.html). With --root, the same on a real MiniPlaces folder such as "
        "../shared/miniplaces (lower --epochs or --image-size to keep it short on a CPU).",
    ),
    "models": CommandText(
        "list the registered models: parameters, multiply-adds, description",
        "List the registered models with their parameter count and multiply-adds (MACs) for one "
        "image, counted with torch.utils.flop_counter (MACs = FLOPs / 2).",
    ),
    "predict": CommandText(
        "top-5 categories of images, or the challenge submission file for the test split",
        "Classify images with a checkpoint: the top categories with probabilities per image, as a table "
        "or JSON. Images of any size and mode are converted as the val transform does. With --challenge, "
        "write the MiniPlaces submission for the test split of --root: one line per test image, sorted "
        "by name, 'test/00000001.jpg l1 l2 l3 l4 l5' (most likely first).",
    ),
    "report": CommandText(
        "results table (Markdown, CSV), figures and report.html from run directories",
        "Read run directories written by `miniplaces train` (and `eval`, `attack`, `saliency`) and write "
        "results.md, results.csv, accuracy/loss/time-memory/attack figures, the runs' grids and a "
        "self-contained report.html. A folder holding runs stands for the runs inside it; with several "
        "paths (e.g. runs/*), those that are not runs are skipped with a note.",
    ),
    "serve": CommandText(
        "explore checkpoints in a local web page: top-5, saliency, attacks, two models side by side",
        "Serve a local web page to browse images with a model's top-5, its saliency maps "
        "(vanilla, SmoothGrad, Grad-CAM) and adversarial attacks (PGD, FGSM); with two checkpoints, "
        "side by side, including whether an attack made on one model transfers to the other. It listens on "
        "127.0.0.1 and answers only its own page (a per-server token, Host and Origin checks), so other web "
        "pages cannot drive it; the checkpoints' class names must match the --root dataset's.",
    ),
    "study": CommandText(
        "the whole study in one command: train, eval, attack, saliency, report (resumable)",
        "Train the study's experiments (configs/: simplenet, simplenet_unfold, vit, msvit, resnet18), evaluate "
        "each on val, attack it with the study's least-likely PGD (ε=6/255, 10 steps), draw its saliency grid "
        "and write the report with the study-vs-this-project table into OUT/report. Rerun the same command "
        "to continue: finished steps are skipped, an interrupted run resumes exactly. --scale full is the "
        "seed's settings (a GPU); --scale cpu the study on a CPU (64 px, 10 epochs each, plus the fast recipe); "
        "--scale mini a quick CPU check (64 px, a few epochs); --scale fast "
        "trains the fast recipe (configs/fast.yaml) instead and compares it with the seed's SimpleNet.",
    ),
    "train": CommandText(
        "train a model (resumable; torchrun for many GPUs)",
        "Train a model on MiniPlaces. Settings come from the defaults, then --config, then the flags; "
        "the resolved config is saved in the run directory runs/<name>/. "
        "Ctrl-C writes checkpoints/last.pt; continue with --resume runs/<name>. "
        "Under `torchrun --nproc_per_node=N -m miniplaces train …` it trains with DDP.",
    ),
    "eval": CommandText(
        "evaluate a checkpoint: top-1/top-5, loss, per-class accuracy, confusion matrix",
        "Evaluate a checkpoint on a labelled split. The model is rebuilt from the checkpoint alone; "
        "the result is written as JSON to <checkpoint dir>/eval_<split>.json or --out.",
    ),
}
