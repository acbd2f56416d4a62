"""The training configuration: defaults → YAML file → `--set key=value` flags.

Every key is a typed field of `TrainConfig`. An unknown key or a value of the wrong
type is a `ConfigError` that names the key (and the file and line for YAML). Keys left
at `None` whose default depends on the model (optimizer, lr, weight_decay) are filled in
from the model's card by `resolve`, and the resolved config is what a run saves as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from miniplaces import schema
from miniplaces.attacks.spec import ATTACK_KINDS, TARGET_MODES, AttackSpec
from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import atomic_write_text
from miniplaces.pixels import parse_eps

# Test-time augmentations of `miniplaces eval`; the per-epoch validation (key `tta`) takes flip only.
TTA_MODES = ("flip", "five-crop", "ten-crop")


class ConfigError(MiniPlacesError):
    """A configuration key is unknown or its value has the wrong type or range."""


# The image sides a run may train at: below 16 the models' strides leave nothing; above 1024 the decoded
# cache and the activations grow beyond what this project is for (an image side of 100000 maps terabytes).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024

# A number as YAML 1.1 misses it: PyYAML reads `1e-3` (no dot) as a string.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _key(default: Any = None, help: str = "", *, factory: Any = None) -> Any:
    """A config field with its documentation beside it (read by `config_reference_markdown`)."""
    return schema.key(default, factory=factory, help=help)


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the study's."""

    model: str = _key("simplenet", "registered model name (`miniplaces models`)")
    model_kwargs: dict[str, Any] = _key(
        factory=dict, help="builder arguments of the model, e.g. `{depth: 6}`; `--set model_kwargs.depth=6` sets one")
    init_from: str | None = _key(
        None, "fine-tune: start from the weights of this checkpoint or run folder (its best.pt), same model; a new "
        "classifier when the classes differ; the schedule and optimiser are this run's own")
    root: str = _key("", "dataset folder in the MiniPlaces layout (required)")
    name: str | None = _key(None, "run directory name under `out_dir`; null → `<model>-<date>-<time>`")
    out_dir: str = _key("runs", "folder that holds the run directories")
    epochs: int = _key(60, "training epochs")
    batch_size: int = _key(256, "global batch: split evenly across DDP processes")
    optimizer: Literal["sgd", "adamw", "muon"] | None = _key(
        None, "null → the model card's (SGD for CNNs, AdamW for ViTs, Muon for fastnet); `muon`: Muon at `muon_lr` "
        "for convolution filters (each kept at a fixed norm: for CNNs with BatchNorm), SGD at `lr` for the rest")
    lr: float | None = _key(None, "peak learning rate (Muon's: of all but the filters); null → the optimiser's default "
                            "(SGD and Muon 0.1, AdamW 0.01)")
    momentum: float = _key(0.9, "SGD momentum")
    nesterov: bool = _key(False, "SGD with Nesterov momentum (timm's default for `sgd`; the study's runs are without; "
                          "Muon's SGD part too)")
    muon_lr: float = _key(0.08, "optimizer muon: learning rate of the convolution filters, about the size of each "
                          "step relative to their norm; warmed up and decayed with `lr`")
    muon_momentum: float = _key(0.6, "optimizer muon: Nesterov momentum of the convolution filters")
    weight_decay: float | None = _key(None, "null → the optimiser's default (SGD and Muon 1e-4, AdamW 0.05; "
                                           "Muon's filters take none)")
    warmup_epochs: float = _key(5.0, "linear warm-up length, then cosine decay to `min_lr` (stepped per iteration)")
    min_lr: float = _key(0.0, "learning rate at the end of the cosine decay")
    clip_grad: float | None = _key(None, "max gradient norm; null disables clipping")
    label_smoothing: float = _key(0.0, "label smoothing of the cross-entropy")
    no_wd_norm_bias: bool = _key(False, "keep norms, biases and position embeddings out of weight decay")
    device: str = _key("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    amp: Literal["none", "bf16", "fp16", "auto"] = _key(
        "none", "autocast precision; fp16 adds a grad scaler on CUDA; auto → bf16 where the device runs it fast (CUDA "
        "with bf16, a CPU with AMX or AVX-512-BF16), else none; the run's config.yaml holds the choice and why")
    channels_last: bool = _key(False, "channels-last memory format for model and batches")
    compile: bool = _key(False, "`torch.compile` the model (measure first: `bench train --variants "
                         "bf16+channels_last,bf16+channels_last+compile`; on a 2-core CPU it slowed the CNNs)")
    seed: int = _key(0, "seed of weights, shuffling and augmentation")
    loader: Literal["dataloader", "cache"] = _key(
        "dataloader", "per-sample DataLoader, or the decoded uint8 cache with batched augmentation")
    workers: int = _key(4, "loader worker processes (at most the number of CPU cores)")
    image_size: int = _key(128, "training crop side; a ViT's position embedding and windows are built for it")
    cache_size: int | None = _key(None, "cache loader only: side of the stored images; null → image_size. A larger "
                                         "side (128, MiniPlaces' own) keeps the detail that random crops enlarge")
    tta: Literal["flip"] | None = _key(None, "test-time augmentation of the per-epoch validation (`eval --tta` also "
                                               "takes five-crop and ten-crop)")
    sync_bn: bool = _key(False, "convert BatchNorm to SyncBatchNorm under DDP")
    limit_train_batches: int | None = _key(None, "at most this many training batches per epoch (tests, quick runs)")
    limit_val_batches: int | None = _key(None, "at most this many validation batches per epoch")
    log_every: int = _key(20, "steps between progress updates and per-step tracker scalars (each one "
                          "synchronises with the device)")
    log_to: list[Literal["tensorboard", "csv", "mlflow", "wandb"]] = _key(
        help="experiment trackers: TensorBoard (`tb/`) and CSV (`metrics.csv`) in the run folder, MLflow "
        "(`mlruns/` beside the runs folder, or `MLFLOW_TRACKING_URI`; extra `[mlflow]`) and W&B (extra `[wandb]`; "
        "`WANDB_MODE=offline` keeps it on disk)", factory=lambda: ["tensorboard", "csv"])
    # Adversarial training: every training batch is replaced by an attack on the current model
    # (validation stays clean). Untargeted PGD by default, as in Madry et al. (2018). The keys make
    # one `AttackSpec` (`adversarial_spec`); their allowed values come from the attack table.
    adv_train: Literal[("none", *ATTACK_KINDS)] = _key(  # type: ignore[valid-type]
        "none", "adversarial training: each training batch replaced by this attack on the current model")
    adv_eps: float | str = _key("6/255", "L∞ budget in pixel units: `6/255` or `0.0235`")
    adv_steps: int = _key(10, "PGD steps, each one more forward + backward per training step")
    adv_step_size: float | str | None = _key(None, "PGD step in pixel units; null → ε/10")
    adv_mode: Literal[TARGET_MODES] = _key(  # type: ignore[valid-type]
        "untargeted", "PGD away from the true label, or towards the least likely class (the study's attack)")
    # Training features beyond the study (issue 13); every default leaves the study's recipe unchanged.
    ema: bool = _key(False, "EMA of the weights (timm's ModelEmaV3), updated after every optimiser step and validated "
                     "beside the raw model (val_*_ema); when on, best.pt is chosen by the EMA's val top-1 and "
                     "checkpoints are evaluated, exported and attacked with the EMA's weights")
    ema_decay: float = _key(0.9998, "EMA decay in [0, 1); 0.9998 averages over ~5,000 steps")
    ema_warmup: bool = _key(True, "ramp the EMA decay up from 0 as 1 - (1 + updates)^(-2/3)")
    mixup_alpha: float = _key(0.0, "MixUp on whole batches: Beta(α, α) of the mixing weight; 0 disables MixUp")
    cutmix_alpha: float = _key(0.0, "CutMix on whole batches: Beta(α, α) of the pasted area; 0 disables CutMix")
    mix_prob: float = _key(1.0, "chance that a batch is mixed at all (MixUp/CutMix targets are soft)")
    mix_switch_prob: float = _key(0.5, "with MixUp and CutMix both on: chance of CutMix rather than MixUp")
    auto_augment: Literal["none", "trivialaugment", "randaugment"] = _key(
        "none", "automatic augmentation after the study's: per image on the dataloader path, per group of images "
        "on the cache loader (miniplaces.data.batch_augment)")
    random_erasing: float = _key(0.0, "chance per image of erasing a random rectangle (torchvision's RandomErasing)")
    crop_min_area: float = _key(0.25, "random resized crop: the smallest crop, as a fraction of the image's area, "
                                "in (0, 1]; 1 keeps the whole image (the study's recipe: 0.25)")
    rotation: float = _key(15.0, "random rotation of training images within ± this many degrees, in [0, 180]; "
                           "0 disables it")
    color_jitter: float = _key(0.15, "brightness, contrast and saturation factors drawn from [1 - j, 1 + j], "
                               "j in [0, 1); 0 disables it")
    data_init: bool = _key(False, "before the first step, models whose card allows it set initial weights from "
                                  "training images (fastnet: a whitening stem, as airbench's)")
    progressive_start_size: int | float | None = _key(
        None, "progressive resizing (FFCV): training side at `progressive_start_epoch`, rising linearly in steps of "
        "8 px to `image_size` at `progressive_end_epoch`; validation stays at `image_size`; null disables it. "
        "A fraction in (0, 1) is that share of `image_size` (0.75 of 128 → 96), rounded down to a multiple of 8 px")
    progressive_start_epoch: int | float = _key(
        0, "0-based epoch where progressive resizing starts; a fraction in [0, 1) is that share of `epochs`")
    progressive_end_epoch: int | float | None = _key(
        None, "0-based epoch where it reaches `image_size`; null → the last epoch. A fraction in (0, 1] is that "
        "share of `epochs` (1.0 → `epochs`: one past the last epoch, so training stays below `image_size`)")


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _field_types() -> dict[str, Any]:
    return schema.hints(TrainConfig)


def _set(config: TrainConfig, key: str, value: Any, where: str) -> None:
    types_ = _field_types()
    if key not in types_:
        raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(config_keys())}")
    tp = types_[key]
    if (isinstance(value, str) and _NUMBER.fullmatch(value.strip()) and schema.accepts(tp, float)
            and not schema.accepts(tp, str)):
        value = float(value)  # `1e-3`: a number PyYAML leaves as text
    converted, problem = schema.check_key(TrainConfig, key, value)
    if problem is not None:
        raise ConfigError(f"{where}: key {key!r} must be {problem.expected}, got {value!r}")
    setattr(config, key, converted)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice: PyYAML keeps the last silently, which hides a typo."""

    def __init__(self, key: Any, first_line: int, line: int) -> None:
        where = f" (lines {first_line} and {line})" if first_line != line else ""
        super().__init__(f"key {key!r} appears twice{where}")
        self.key, self.first_line, self.line = key, first_line, line


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice (at any depth)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may override keys, as it means to
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """YAML text read as `yaml.safe_load` does, except that a key given twice is a `DuplicateKeyError`."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def apply_yaml(config: TrainConfig, path: Path | str) -> TrainConfig:
    """Apply the keys of a YAML file (a flat mapping) to `config`; errors name the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err
    try:
        text = raw.decode("utf-8-sig")  # a BOM from a Windows editor is not part of the first key
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {err.start}: {raw[err.start]:#04x}); "
                          "save the config file as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = load_yaml(text)
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}:{err.line}: key {err.key!r} is given twice (first on line {err.first_line}); "
                          "keep one") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{_yaml_where(path, err)}: not valid YAML: {_yaml_problem(err)}") from err
    if data is None:
        return config
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value lines")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    for key, value in data.items():
        _set(config, str(key), value, f"{path}:{lines.get(key, '?')}")
    return config


def apply_mapping(config: TrainConfig, data: dict[str, Any], where: str) -> TrainConfig:
    """Apply already-read keys (e.g. a study scale's) to `config`, checked as YAML keys are; errors name `where`."""
    for key, value in data.items():
        _set(config, str(key), value, f"{where}: key {key}")
    return config


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` strings; values are read as YAML (`0.1`, `true`, `null`, `{depth: 6}`).

    `model_kwargs.NAME=value` sets one model argument.
    """
    types_ = _field_types()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        where = f"override {item}"
        if key.startswith("model_kwargs."):
            sub = key.removeprefix("model_kwargs.")
            config.model_kwargs = {**config.model_kwargs, sub: _parse_value(raw, where)}
            continue
        tp = types_.get(key)
        # A string-typed key takes the text as it is (a run named `007` stays `007`), except `null`.
        if tp is not None and schema.accepts(tp, str) and raw not in ("null", "~", ""):
            value: Any = raw
        else:
            value = _parse_value(raw, where)
        _set(config, key, value, where)
    return config


def _parse_value(raw: str, where: str) -> Any:
    try:
        return load_yaml(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: cannot read value {raw!r}: {_yaml_problem(err)}") from err


def _yaml_where(path: Path, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's problem in one line (its message quotes the source over several)."""
    problem = getattr(err, "problem", None)
    context = getattr(err, "context", None)
    text = " ".join(part for part in (context, problem) if part) or str(err).splitlines()[0]
    return text.replace("tag:yaml.org,2002:", "!!")


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill the model card's optimiser defaults and check value ranges; returns a new config."""
    from miniplaces.models import model_card

    config = dataclasses.replace(config, model_kwargs=dict(config.model_kwargs))
    try:
        card = model_card(config.model)
    except MiniPlacesError as err:
        raise ConfigError(f"key 'model': {err}") from None
    optimizer, lr, weight_decay = card.optimizer_defaults(config.optimizer)
    config.optimizer = optimizer  # type: ignore[assignment]
    if config.lr is None:
        config.lr = lr
    if config.weight_decay is None:
        config.weight_decay = weight_decay
    check_ranges(config)
    if config.nesterov and config.optimizer == "adamw":
        raise ConfigError("key 'nesterov' needs SGD with momentum > 0, but optimizer is adamw; "
                          "set nesterov to false or optimizer to sgd")
    if config.nesterov and config.momentum == 0:
        raise ConfigError("key 'nesterov' needs SGD with momentum > 0, but momentum is 0; set nesterov to false "
                          "or momentum above 0")
    config = resolve_progressive(config)
    adversarial_spec(config)
    _check_features(config, card.size_argument)
    if config.data_init and not card.data_init:
        raise ConfigError(f"key 'data_init': model {config.model!r} has no initialisation from data; "
                          "remove data_init (fastnet has one)")
    if not config.root:
        raise ConfigError("key 'root' is not set: it names the MiniPlaces folder")
    from miniplaces.tracking import check_trackers

    check_trackers(config.log_to)  # a missing tracker package is said before the run writes anything
    return config


def _fraction(config: TrainConfig, key: str, low: float, high: float, closed_high: bool) -> float | None:
    """The key's value when it is a fraction (a float) in [low, high] (or [low, high)), None when it is a whole
    number; a float outside the range is an error, since `96.0` or `1.5` is neither a fraction nor a count."""
    value = getattr(config, key)
    if not isinstance(value, float):
        return None
    inside = low <= value <= high if closed_high else low <= value < high
    if not inside:
        interval = f"[{low:g}, {high:g}]" if closed_high else f"[{low:g}, {high:g})"
        raise ConfigError(f"key {key!r}: a fraction must lie in {interval}, got {value!r}; "
                          "a whole number (no decimal point) is read as a count")
    return value


def resolve_progressive(config: TrainConfig) -> TrainConfig:
    """The config with the progressive keys' fractions turned into a side in pixels (a multiple of 8, at least
    MIN_IMAGE_SIZE) and epoch indices, so that a recipe keeps its shape under `--set epochs=N` or
    `--set image_size=S`; counts are kept as they are. Returns a new config."""
    from miniplaces.data.batch_augment import PROGRESSIVE_STEP

    config = dataclasses.replace(config)
    start = _fraction(config, "progressive_start_size", 0.0, 1.0, closed_high=False)
    if start is not None:
        if start == 0.0:
            raise ConfigError("key 'progressive_start_size': a fraction must be above 0, got 0.0")
        side = int(start * config.image_size) // PROGRESSIVE_STEP * PROGRESSIVE_STEP
        config.progressive_start_size = min(config.image_size, max(MIN_IMAGE_SIZE, side))
    start_epoch = _fraction(config, "progressive_start_epoch", 0.0, 1.0, closed_high=False)
    if start_epoch is not None:
        config.progressive_start_epoch = round(start_epoch * config.epochs)
    end_epoch = _fraction(config, "progressive_end_epoch", 0.0, 1.0, closed_high=True)
    if end_epoch is not None:
        config.progressive_end_epoch = max(config.progressive_start_epoch, round(end_epoch * config.epochs))
    return config


def _check_features(config: TrainConfig, size_argument: str | None) -> None:
    """Ranges of the issue-13 feature keys (EMA, MixUp/CutMix, augmentation and its strength, progressive resizing).

    `size_argument`: the model card's builder argument for the image side; such a model (a ViT, whose
    position embedding is built for image_size) cannot train at other sides.
    """
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(f"key 'ema_decay' must be in [0, 1), got {config.ema_decay!r}")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(config, key) < 0:
            raise ConfigError(f"key {key!r} must be ≥ 0 (0 disables it), got {getattr(config, key)!r}")
    for key in ("mix_prob", "mix_switch_prob", "random_erasing"):
        if not 0.0 <= getattr(config, key) <= 1.0:
            raise ConfigError(f"key {key!r} must be a probability in [0, 1], got {getattr(config, key)!r}")
    if (config.mixup_alpha > 0 or config.cutmix_alpha > 0) and config.adv_train != "none":
        raise ConfigError("keys mixup_alpha/cutmix_alpha: MixUp and CutMix cannot be combined with adversarial "
                          "training (its attacks need hard labels); set them to 0 or adv_train to none")
    if not 0.0 < config.crop_min_area <= 1.0:
        raise ConfigError(f"key 'crop_min_area' must be in (0, 1], got {config.crop_min_area!r}")
    if not 0.0 <= config.rotation <= 180.0:
        raise ConfigError(f"key 'rotation' must be between 0 and 180 degrees, got {config.rotation!r}")
    if not 0.0 <= config.color_jitter < 1.0:
        raise ConfigError(f"key 'color_jitter' must be in [0, 1), got {config.color_jitter!r}")
    start = config.progressive_start_size
    if start is not None and not 8 <= start <= config.image_size:
        raise ConfigError(f"key 'progressive_start_size' must be between 8 and image_size "
                          f"({config.image_size}) or null, got {start!r}")
    if start is not None and start < config.image_size and size_argument is not None:
        raise ConfigError(f"key 'progressive_start_size': model {config.model!r} is built for one image side "
                          f"(its {size_argument!r}), so it cannot train at smaller sides; set it to null")
    end_epoch = config.progressive_end_epoch
    if config.progressive_start_epoch < 0:
        raise ConfigError(f"key 'progressive_start_epoch' must be ≥ 0, got {config.progressive_start_epoch!r}")
    if end_epoch is not None and end_epoch < config.progressive_start_epoch:
        raise ConfigError(f"key 'progressive_end_epoch' ({end_epoch}) must be ≥ progressive_start_epoch "
                          f"({config.progressive_start_epoch}) or null")


def check_ranges(config: TrainConfig) -> None:
    """Refuse values of the right type but outside their range, naming the key (before anything is built)."""
    for key in config_keys():
        value = getattr(config, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"key {key!r} must be a finite number, got {value!r}")
    for key in ("epochs", "batch_size", "log_every", "adv_steps"):
        if getattr(config, key) < 1:
            raise ConfigError(f"key {key!r} must be ≥ 1, got {getattr(config, key)!r}")
    if not MIN_IMAGE_SIZE <= config.image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"key 'image_size' must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, "
                          f"got {config.image_size!r}")
    if config.cache_size is not None:
        if not MIN_IMAGE_SIZE <= config.cache_size <= MAX_IMAGE_SIZE:
            raise ConfigError(f"key 'cache_size' must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels or "
                              f"null, got {config.cache_size!r}")
        if config.loader != "cache":
            raise ConfigError(f"key 'cache_size' sets the cache loader's stored side, but loader is "
                              f"{config.loader!r}; set loader: cache or remove cache_size")
    for key in ("limit_train_batches", "limit_val_batches"):
        value = getattr(config, key)
        if value is not None and value < 1:
            raise ConfigError(f"key {key!r} must be ≥ 1 or null, got {value!r}")
    if config.lr is not None and config.lr <= 0:
        raise ConfigError(f"key 'lr' must be > 0, got {config.lr!r}")
    for key in ("warmup_epochs", "min_lr", "weight_decay", "workers"):
        value = getattr(config, key)
        if value is not None and value < 0:
            raise ConfigError(f"key {key!r} must be ≥ 0, got {value!r}")
    if config.muon_lr <= 0:
        raise ConfigError(f"key 'muon_lr' must be > 0, got {config.muon_lr!r}")
    for key in ("momentum", "muon_momentum", "label_smoothing"):
        if not 0 <= getattr(config, key) < 1:
            raise ConfigError(f"key {key!r} must be in [0, 1), got {getattr(config, key)!r}")
    if config.clip_grad is not None and config.clip_grad <= 0:
        raise ConfigError(f"key 'clip_grad' must be > 0 or null, got {config.clip_grad!r}")
    if config.name is not None:
        check_run_name(config.name)


def check_run_name(name: str) -> str:
    """A run name is one folder name inside out_dir: no separator, not absolute, not `.` or `..`."""
    if (not name.strip() or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or Path(name).is_absolute()):
        raise ConfigError(f"key 'name' must be a single folder name inside out_dir (no '/', not '.' or '..'), "
                          f"got {name!r}")
    return name


def _budget(config: TrainConfig, key: str) -> float | None:
    value = getattr(config, key)
    try:
        return None if value is None else parse_eps(value)
    except MiniPlacesError as err:
        raise ConfigError(f"key {key!r}: {err}") from None


def adversarial_spec(config: TrainConfig) -> AttackSpec | None:
    """The attack of adversarial training from the `adv_*` keys, or None for `adv_train: none`.

    The budgets are checked even when adversarial training is off, so a typo never waits for the day it is used.
    """
    eps, step_size = _budget(config, "adv_eps"), _budget(config, "adv_step_size")
    if config.adv_train == "none":
        return None
    try:
        return AttackSpec(kind=config.adv_train, target=config.adv_mode, eps=eps, steps=config.adv_steps,  # type: ignore[arg-type]
                          step_size=step_size)
    except MiniPlacesError as err:
        raise ConfigError(f"keys adv_train/adv_mode/adv_steps: {err}") from None


def load_config(path: Path | str | None = None, overrides: list[str] | None = None,
                base: TrainConfig | None = None) -> TrainConfig:
    """Defaults (or `base`) → the YAML file at `path` → `overrides`; not yet resolved."""
    config = dataclasses.replace(base) if base is not None else TrainConfig()
    if path is not None:
        apply_yaml(config, path)
    return apply_overrides(config, list(overrides or []))


def config_from_dict(data: dict[str, Any], where: str = "checkpoint") -> TrainConfig:
    """A config from a saved mapping (a checkpoint's `config`), checked key by key."""
    config = TrainConfig()
    for key, value in data.items():
        _set(config, key, value, where)
    return config


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_yaml(config: TrainConfig) -> str:
    """The config as the YAML text a run folder's config.yaml holds."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_config(config: TrainConfig, path: Path | str, note: str | None = None) -> Path:
    """Write `config` as YAML; `note` (e.g. why `amp: auto` chose its precision) becomes a leading comment."""
    text = "".join(f"# {line}\n" for line in (note or "").splitlines()) + config_yaml(config)
    return atomic_write_text(path, text)


def _default_text(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        value = f.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "" or value == {}:
        return "`" + ("{}" if value == {} else '""') + "`"
    if isinstance(value, list):
        return "`[" + ", ".join(map(str, value)) + "]`"
    return f"`{value}`"


def config_reference_markdown() -> str:
    """The table of every `TrainConfig` key (type, default, help) that docs/training.md embeds."""
    types_ = _field_types()
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        type_text = schema.type_name(types_[f.name]).replace("|", "\\|")
        help_text = f.metadata.get("help", "").replace("|", "\\|")
        lines.append(f"| `{f.name}` | {type_text} | {_default_text(f)} | {help_text} |")
    return "\n".join(lines) + "\n"
