"""Training configuration: dataclasses resolved from a YAML file or a named recipe plus dotted overrides.

    cfg = load_config("fashion-mnist", ["optim.base_lr=1e-3", "run.batch_size=64"])
    print(config_to_yaml(cfg))
    pre = load_config("simmim-fashion-mnist", kind=PretrainConfig)   # SimMIM pre-training

Classification training (`TrainConfig`) and SimMIM pre-training (`PretrainConfig`) share the model, data,
optim, schedule and run sections; the first adds `augment`, the second `simmim`.

Every field is converted to its annotated type when a section is built, so a value from YAML,
from the command line or from Python code is checked the same way, and errors name the key."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Iterable

import yaml

from ..errors import ConfigError
from ..models.config import SwinV2Config
from ..models.registry import list_models
from .distributed import MODES as DISTRIBUTED_MODES
from .precision import PRECISIONS, check_device_name

DATASETS = ("folder", "list", "fashion-mnist")
RECIPE_SUFFIX = ".yaml"
AUTO = "auto"


# ------------------------------------------------------------------------------ type conversion
class _Mismatch(Exception):
    """A value that does not fit an annotation; turned into a ConfigError that names the key."""


def describe(annotation: Any) -> str:
    """What a value of this annotation looks like, for error messages."""
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(describe(argument) for argument in arguments)
    if typing.get_origin(annotation) is tuple:
        count = "" if arguments[-1] is Ellipsis else f"{len(arguments)} "
        return f"a list of {count}{describe(arguments[0]).split(' ', 1)[-1]}s"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(annotation, "a mapping")


def _convert(value: Any, annotation: Any) -> Any:
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # `X | None`, or `float | str | None`: the first that fits
        if value is None and type(None) in arguments:
            return None
        for inner in (argument for argument in arguments if argument is not type(None)):
            try:
                return _convert(value, inner)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        element_types = [arguments[0]] * len(value) if arguments[-1] is Ellipsis else list(arguments)
        if len(element_types) != len(value):
            raise _Mismatch
        return tuple(_convert(element, element_type) for element, element_type in zip(value, element_types))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise _Mismatch
        return {key: plain(element) for key, element in value.items()}
    return _convert_scalar(value, annotation)


def _convert_scalar(value: Any, annotation: Any) -> Any:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is int and is_number and isinstance(value, int):
        return value
    if annotation is float and is_number:
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-4" (no dot) as a string
            return float(value)
        except ValueError:
            raise _Mismatch from None
    if annotation is str and (isinstance(value, str) or is_number):
        return str(value)
    raise _Mismatch


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """`value` converted to `annotation` (lists to tuples, ints to floats, "5e-4" to 5e-4)."""
    try:
        return _convert(value, annotation)
    except _Mismatch:
        raise ConfigError(f"{key} must be {describe(annotation)}, got {value!r}") from None


def plain(value: Any) -> Any:
    """Tuples as lists, recursively: what YAML reads back, so configs compare equal after a round trip."""
    if isinstance(value, (list, tuple)):
        return [plain(element) for element in value]
    if isinstance(value, dict):
        return {key: plain(element) for key, element in value.items()}
    return value


# ------------------------------------------------------------------------------------- sections
class Section:
    """Base of every section: converts each field to its annotation, then runs `check`."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        for key, annotation in self.field_types().items():
            setattr(self, key, coerce(getattr(self, key), annotation, f"{self.section}.{key}"))
        self.check()

    def check(self) -> None:
        """Value checks beyond the type; each raises ConfigError naming the key."""

    def require(self, condition: bool, key: str, message: str) -> None:
        if not condition:
            raise ConfigError(f"{self.section}.{key} {message}, got {getattr(self, key)!r}")

    def require_fraction(self, *keys: str) -> None:
        for key in keys:
            self.require(0.0 <= getattr(self, key) <= 1.0, key, "must be between 0 and 1")

    def require_positive(self, *keys: str) -> None:
        """Each key is None (where allowed) or above zero."""
        for key in keys:
            value = getattr(self, key)
            self.require(value is None or value > 0, key, "must be positive")

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Each field's annotation, evaluated (this module postpones annotations)."""
        hints = typing.get_type_hints(cls)
        return {item.name: hints[item.name] for item in fields(cls)}


@dataclass
class ModelSection(Section):
    """Which registered model, changed how (any SwinV2Config field), initialised from which checkpoint."""

    section: ClassVar[str] = "model"
    name: str = "swinv2_tiny_window8_256"
    overrides: dict[str, Any] = field(default_factory=dict)
    # Any checkpoint `swinv2.load_pretrained` reads, at any resolution/window (position tables are rebuilt).
    init_from: str | None = None

    def check(self) -> None:
        self.require(self.name in list_models(), "name", f"must be a registered model ({', '.join(list_models())})")
        known = {item.name for item in fields(SwinV2Config)}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise ConfigError(f"model.overrides: unknown SwinV2Config fields {unknown}; valid: {sorted(known)}")


@dataclass
class DataSection(Section):
    section: ClassVar[str] = "data"
    dataset: str = "folder"
    train_path: str | None = None
    val_path: str | None = None
    img_size: int | None = None  # None: the model's
    load_size: int | None = None  # folder/list images are resized to this at load, so batches stack
    channels: int = 3
    num_workers: int = 2
    mean: tuple[float, ...] | None = None  # None: swinv2.data.DATASET_STATS for the dataset
    std: tuple[float, ...] | None = None
    crop_pct: float = 0.875  # evaluation: resize to img_size / crop_pct, centre crop (1.0: plain resize)
    max_train_images: int | None = None  # a subset, for quick runs and tests
    max_val_images: int | None = None
    # A class-balanced subset of the training images: this many of each class, drawn at random with
    # subset_seed (the same seed, the same images): training with few labels. Before max_train_images.
    images_per_class: int | None = None
    subset_seed: int = 0

    def check(self) -> None:
        self.require(self.dataset in DATASETS, "dataset", f"must be one of {', '.join(DATASETS)}")
        self.require(self.channels in (1, 3), "channels", "must be 1 or 3")
        self.require_positive("img_size", "load_size", "max_train_images", "max_val_images", "images_per_class")
        self.require(self.subset_seed >= 0, "subset_seed", "must be 0 or positive")
        self.require(self.num_workers >= 0, "num_workers", "must be 0 (load in the main process) or more")
        self.require(0.0 < self.crop_pct <= 1.0, "crop_pct", "must be in (0, 1]")
        for key in ("mean", "std"):
            value = getattr(self, key)
            self.require(value is None or len(value) == self.channels, key, f"needs one value per channel ({self.channels})")
        self.require(self.std is None or min(self.std) > 0, "std", "must be positive")


@dataclass
class AugmentSection(Section):
    """The arguments of swinv2.data.TrainAugmentation; 0 or null switches a part off.
    Defaults: microsoft/Swin-Transformer config.py (AUG.*, MODEL.LABEL_SMOOTHING)."""

    section: ClassVar[str] = "augment"
    scale: tuple[float, float] = (0.08, 1.0)  # random resized crop: area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # and aspect ratio
    hflip: float = 0.5
    color_jitter: float = 0.4
    # (number of ops, magnitude): AUG.AUTO_AUGMENT rand-m9-mstd0.5-inc1 is 2 ops at magnitude 9
    # (timm's default op count); its magnitude noise (mstd0.5) and inc1 op set have no setting here.
    randaugment: tuple[int, int] | None = (2, 9)
    random_erasing: float = 0.25
    mixup: float = 0.8  # Beta(alpha, alpha) for the mixing weight
    cutmix: float = 1.0
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both are on
    label_smoothing: float = 0.1

    def check(self) -> None:
        self.require_fraction("hflip", "random_erasing", "mix_prob", "switch_prob")
        self.require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        for key in ("color_jitter", "mixup", "cutmix"):
            self.require(getattr(self, key) >= 0, key, "must be 0 (off) or positive")
        self.require(0.0 < self.scale[0] <= self.scale[1] <= 1.0, "scale", "must be (low, high) with 0 < low <= high <= 1")
        self.require(0.0 < self.ratio[0] <= self.ratio[1], "ratio", "must be (low, high) with 0 < low <= high")
        self.require(self.randaugment is None or min(self.randaugment) >= 0, "randaugment", "must be null or two counts >= 0")


@dataclass
class OptimSection(Section):
    """AdamW. The lr actually used is base_lr * total batch / lr_reference_batch (see optim.scaled_lr)."""

    section: ClassVar[str] = "optim"
    base_lr: float = 5e-4
    lr_reference_batch: int = 512
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float | None = 5.0  # max global gradient norm; null: no clipping
    # Layer-wise lr decay for fine-tuning (SPEC 3); null: off. auto: 0.75 (the official SimMIM fine-tunes')
    # when model.init_from is a SimMIM checkpoint, else off; the run prints and saves the value it chose.
    layer_decay: float | str | None = AUTO
    accumulation_steps: int = 1  # batches per optimizer step

    def check(self) -> None:
        self.require_positive("base_lr", "lr_reference_batch", "eps", "clip_grad", "accumulation_steps")
        self.require(self.weight_decay >= 0, "weight_decay", "must be 0 or positive")
        self.require(all(0.0 <= beta < 1.0 for beta in self.betas), "betas", "must be two numbers in [0, 1)")
        decay = self.layer_decay
        self.require(decay is None or decay == AUTO or (isinstance(decay, float) and 0.0 < decay <= 1.0),
                     "layer_decay", f"must be null or in (0, 1] (or {AUTO}: 0.75 after SimMIM, else null)")


@dataclass
class ScheduleSection(Section):
    """Linear warm-up, then cosine to min_lr, stepped per optimizer step. Epochs may be fractional."""

    section: ClassVar[str] = "schedule"
    epochs: float = 300.0
    warmup_epochs: float = 20.0
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    max_steps: int | None = None  # a fixed number of optimizer steps instead of epochs (quick runs, tests)

    def check(self) -> None:
        self.require_positive("epochs", "max_steps")
        self.require(0.0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", f"must be in [0, epochs={self.epochs}]")
        for key in ("warmup_lr", "min_lr"):
            self.require(getattr(self, key) >= 0, key, "must be 0 or positive")


@dataclass
class RunSection(Section):
    section: ClassVar[str] = "run"
    name: str = "run"
    output_dir: str = "runs"  # the run writes to output_dir/name
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "auto"  # auto, fp32, bf16, fp16 (see swinv2.train.precision)
    batch_size: int = 128  # per optimizer micro-step; the lr scales with batch_size * accumulation_steps
    eval_batch_size: int | None = None  # None: batch_size
    ema_decay: float | None = None  # e.g. 0.9998; null: no EMA of the weights
    log_every: int = 10  # steps between log lines
    eval_every: int = 1  # epochs between evaluations
    compile: bool = False  # torch.compile the model
    # Training checkpoints in output_dir/name/checkpoints (see swinv2.train.checkpointing): one at every
    # epoch end, and every checkpoint_every optimizer steps when set; the newest keep_last and the best stay.
    checkpoint_every: int | None = None
    keep_last: int = 3
    resume: str | None = None  # a run directory, its checkpoints/ or a checkpoint file to continue from
    # Stop (after a checkpoint) once this many optimizer steps are done, leaving the schedule as it is:
    # a long run split into jobs of limited time, each started with --resume.
    stop_after_steps: int | None = None
    distributed: str = "ddp"  # under torchrun: ddp (whole model per process) or fsdp (sharded, ZeRO-3)
    # glibc's malloc keeps the memory a step frees for the next one instead of returning it to the kernel
    # (swinv2.allocator): null, on where the run trains on the CPU; true or false to choose.
    keep_freed_memory: bool | None = None

    def check(self) -> None:
        self.require(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
        check_device_name(self.device)  # availability is checked when the run starts, on its machine
        self.require_positive("batch_size", "eval_batch_size", "log_every", "eval_every", "checkpoint_every",
                              "keep_last", "stop_after_steps")
        self.require(self.seed >= 0, "seed", "must be 0 or positive")
        self.require(self.distributed in DISTRIBUTED_MODES, "distributed", f"must be one of {', '.join(DISTRIBUTED_MODES)}")
        self.require(self.resume is None or bool(self.resume.strip()), "resume", "must be null or a path")
        self.require(self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "ema_decay", "must be null or in (0, 1)")
        self.require(bool(self.name), "name", "must not be empty")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as config.yaml in the run directory."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    run: RunSection = field(default_factory=RunSection)


@dataclass
class SimMIMSection(Section):
    """Masking, targets and the input transform of SimMIM pre-training. Defaults: the official SwinV2 SimMIM
    configs (DATA.MASK_PATCH_SIZE, DATA.MASK_RATIO, MODEL.SIMMIM.NORM_TARGET, the SimMIMTransform crop)."""

    section: ClassVar[str] = "simmim"
    mask_patch_size: int = 32  # px; divides the image and is a multiple of the model's patch
    mask_ratio: float = 0.6  # ceil(ratio * mask patches) are masked
    norm_target: bool = True  # predict locally normalised pixels (SwinV2's configs), not raw ones
    norm_target_window: int | None = None  # odd px; null: 47 at 192 px, scaled with the image (7 at 28 px)
    crop_scale: tuple[float, float] = (0.67, 1.0)  # random resized crop: area fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # and aspect ratio
    hflip: float = 0.5

    def check(self) -> None:
        self.require_positive("mask_patch_size", "norm_target_window")
        self.require(0.0 < self.mask_ratio <= 1.0, "mask_ratio", "must be in (0, 1]")
        self.require(self.norm_target_window is None or self.norm_target_window % 2 == 1, "norm_target_window",
                     "must be odd (the window is centred on each pixel) or null")
        self.require_fraction("hflip")
        self.require(0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0, "crop_scale",
                     "must be (low, high) with 0 < low <= high <= 1")
        self.require(0.0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio", "must be (low, high) with 0 < low <= high")


# Everything a SimMIM pre-training run needs (no labels are used); saved as config.yaml in the run directory.
# TrainConfig's sections with `simmim` in the place of `augment`.
PretrainConfig = dataclasses.make_dataclass(
    "PretrainConfig",
    [("simmim", SimMIMSection, field(default_factory=SimMIMSection)) if item.name == "augment"
     else (item.name, item.type, field(default_factory=item.default_factory)) for item in fields(TrainConfig)],
    namespace={"__module__": __name__, "__doc__": "A SimMIM pre-training configuration: model, data, simmim, optim, "
                                                  "schedule and run sections."},
)


Config = TrainConfig | PretrainConfig
COMMANDS = {TrainConfig: "swinv2 train", PretrainConfig: "swinv2 pretrain"}


def sections(kind: type[Config] = TrainConfig) -> dict[str, type[Section]]:
    """The sections of a configuration class, by name."""
    return {item.name: item.default_factory for item in fields(kind)}


SECTIONS: dict[str, type[Section]] = sections(TrainConfig)


# ------------------------------------------------------------------------------ building a config
def check_section(section: str, origin: str, kind: type[Config] = TrainConfig) -> None:
    valid = sections(kind)
    if section in valid:
        return
    owner = next((other for other in COMMANDS if section in sections(other)), None)
    hint = f" (a {section} section makes it a `{COMMANDS[owner]}` configuration)" if owner else ""
    raise ConfigError(f"unknown section {section!r} in {origin}{hint}; valid sections for `{COMMANDS[kind]}`: "
                      f"{', '.join(valid)}")


def check_key(section: str, key: str, origin: str, kind: type[Config] = TrainConfig) -> None:
    """ConfigError listing the valid names when `section.key` does not exist."""
    check_section(section, origin, kind)
    valid = sections(kind)[section].field_types()
    if key not in valid:
        raise ConfigError(f"unknown key {section}.{key} in {origin}; valid keys of {section}: {', '.join(valid)}")


def check_structure(values: dict[str, Any], origin: str, kind: type[Config] = TrainConfig) -> None:
    """Every section and key exists, and each section is a mapping."""
    for section, entries in values.items():
        check_section(section, origin, kind)
        if entries is not None and not isinstance(entries, dict):
            raise ConfigError(f"section {section!r} in {origin} must be a mapping of keys, got {entries!r}")
        for key in entries or {}:  # "run:" with nothing under it is an empty section
            check_key(section, key, origin, kind)


def config_from_dict(values: dict[str, Any], origin: str = "the configuration", kind: type[Config] = TrainConfig) -> Config:
    """A `kind` (TrainConfig or PretrainConfig) from nested plain values ({section: {key: value}});
    missing keys keep their defaults."""
    check_structure(values, origin, kind)
    classes = sections(kind)
    return kind(**{section: classes[section](**(entries or {})) for section, entries in values.items()})


def parse_override(override: str) -> tuple[list[str], Any]:
    """"optim.base_lr=5e-4" -> (["optim", "base_lr"], 5e-4): the value is typed by YAML."""
    path, separator, text = override.partition("=")
    keys = path.strip().split(".")
    if not separator or len(keys) < 2 or not all(keys):
        raise ConfigError(f"override {override!r} must look like section.key=value, e.g. optim.base_lr=5e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({error})") from None
    return keys, value


def apply_override(values: dict[str, Any], override: str, kind: type[Config] = TrainConfig) -> None:
    """Set one `section.key=value` (or `model.overrides.field=value`) in nested plain values."""
    keys, value = parse_override(override)
    section, key, *rest = keys
    origin = f"override {override!r}"
    check_key(section, key, origin, kind)
    entries = values[section] = values.get(section) or {}
    if rest:
        if (section, key, len(rest)) != ("model", "overrides", 1):
            raise ConfigError(f"{origin}: only model.overrides takes a sub-key (model.overrides.drop_path_rate=0.1)")
        entries[key] = dict(entries.get(key) or {}, **{rest[0]: value})
        return
    is_text = sections(kind)[section].field_types()[key] in (str, str | None)
    # Keep the text as typed for string fields: YAML would turn run.name=007 into 7.
    entries[key] = override.partition("=")[2].strip() if is_text and value is not None else value


def read_source(source: str | Path | None) -> tuple[dict[str, Any], str]:
    """The nested values of a YAML file or a recipe, and a description of where they came from."""
    if source is None:
        return {}, "the defaults"
    path = Path(source)
    if not path.is_file():
        name = str(source)
        if name in list_recipes(None):
            return parse_yaml(recipe_text(name), f"recipe {name!r}"), f"recipe {name!r}"
        if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
            raise ConfigError(f"config file {str(source)!r} not found")
        raise ConfigError(f"{name!r} is neither a config file nor a recipe; recipes: {', '.join(list_recipes(None))}")
    return parse_yaml(path.read_text(), str(path)), str(path)


def parse_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin} is not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{origin} must be a mapping of sections ({', '.join(SECTIONS)}, ...), got {type(values).__name__}")
    return values


def load_config(source: str | Path | None = None, overrides: Iterable[str] = (),
                kind: type[Config] = TrainConfig) -> Config:
    """Resolve a YAML path or a recipe name (None: the defaults) plus `section.key=value` overrides into a
    `kind`: TrainConfig (`swinv2 train`) or PretrainConfig (`swinv2 pretrain`)."""
    values, origin = read_source(source)
    check_structure(values, origin, kind)  # before the overrides, so that a typo is blamed on the right source
    for override in overrides:
        apply_override(values, override, kind)
    return config_from_dict(values, origin, kind)


class _Dumper(yaml.SafeDumper):
    """Lists on one line ([0.9, 0.999]), mappings as blocks."""


def _represent_flow_list(dumper: yaml.SafeDumper, values: Iterable[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", list(values), flow_style=True)


_Dumper.add_representer(list, _represent_flow_list)
_Dumper.add_representer(tuple, _represent_flow_list)


def config_to_yaml(config: Config) -> str:
    """The resolved configuration as YAML that `load_config` reads back to an equal configuration."""
    return yaml.dump(dataclasses.asdict(config), Dumper=_Dumper, sort_keys=False)


# -------------------------------------------------------------------------------------- recipes
def _recipe_directory() -> Any:
    return resources.files(__package__).joinpath("recipes")


def list_recipes(kind: type[Config] | None = TrainConfig) -> list[str]:
    """Names of the recipes shipped in swinv2/train/recipes for `kind` (TrainConfig: `swinv2 train`,
    PretrainConfig: `swinv2 pretrain`, whose recipes have a simmim section; None: all of them)."""
    names = sorted(
        entry.name[: -len(RECIPE_SUFFIX)] for entry in _recipe_directory().iterdir() if entry.name.endswith(RECIPE_SUFFIX)
    )
    if kind is None:
        return names
    return [name for name in names if set(parse_yaml(recipe_text(name), name)) <= set(sections(kind))]


def recipe_text(name: str) -> str:
    """The YAML of a shipped recipe, comments included."""
    if name not in list_recipes(None):
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(list_recipes(None))}")
    return _recipe_directory().joinpath(name + RECIPE_SUFFIX).read_text()
