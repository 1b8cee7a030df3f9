"""The experiment schema, YAML loading, `--set` overrides and run ids.

One typed, strict config drives everything (the big_vision habit): a run is a pure
function of its resolved config. Every user mistake becomes a `ConfigError` that
names the file and the dotted key path, before anything is written.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from resexp.core.bundled import SUFFIX, bundled_configs, bundled_name, is_bundled, resolve_config, unknown_name
from resexp.core.errors import ConfigError
from resexp.core.variants import ShortcutOption

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion_mnist")


class _Section(BaseModel):
    # strict: no silent "1" -> True or "0.1" -> 0.1 coercions; forbid: typos are errors.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class DataConfig(_Section):
    name: Literal["digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion_mnist"] = "digits"
    dir: str | None = None  # where file-backed datasets live (default: ~/.cache/resexp/<name>)
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(500, gt=0)
    augment: bool | None = None  # pad-4 random crop + flip; None = on for CIFAR only
    # What the 4-pixel border of an augmented crop holds: `mean` pads after normalising (the border
    # is the mean colour, as fb.resnet.torch), `zero` pads raw black pixels before (akamaster).
    pad_value: Literal["mean", "zero"] = "mean"
    # `synthetic` only: a deterministic procedural classification set of any size/shape.
    num_train: int = Field(2048, gt=0)
    num_test: int = Field(512, gt=0)
    image_size: int = Field(32, gt=0)
    channels: int = Field(3, gt=0)
    num_classes: int = Field(10, ge=2)


class ModelConfig(_Section):
    kind: Literal["cnn", "mlp"] = "cnn"
    depth: int = Field(20, gt=0)  # weight layers: 2 * stages * n + 2 (6n+2 for widths 16/32/64)
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    shortcut: bool = True  # False: the plain net with exactly the same layers
    projection: Literal["zero_pad", "learned", "learned_all"] = "zero_pad"  # a ShortcutOption value
    norm: Literal["batch", "none"] = "batch"
    zero_init_residual: bool = False  # last BN scale of each branch starts at 0 (Goyal et al.)
    rezero: bool = False  # a learned scalar gate, initialised to 0, on each branch (ReZero/SkipInit)
    # Blocks of a stage run under lax.scan, this many per loop iteration; True unrolls fully.
    # "auto": 1 on CPU (flat compile time in depth), fully unrolled on GPU/TPU, where the loop
    # keeps XLA from fusing and graphing across blocks (1.27-1.75x the images/s on an H100).
    scan_unroll: int | bool | Literal["auto"] = "auto"

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        if any(w <= 0 for w in widths):
            raise ValueError("every width must be a positive integer")
        return widths

    @model_validator(mode="after")
    def _depth_fits_family(self) -> ModelConfig:
        stages = len(self.widths)
        per_n = 2 * stages
        try:
            blocks_per_stage(self.depth, stages)
        except ValueError:
            lo = max(per_n + 2, (self.depth - 2) // per_n * per_n + 2)
            hint = f"nearest valid: {lo}" + (f" or {lo + per_n}" if lo < self.depth else "")
            family = "CNN" if self.kind == "cnn" else "MLP"
            raise ValueError(
                f"depth {self.depth} is not {per_n}n+2 (n >= 1) for the {family} family with "
                f"{stages} stages of widths {self.widths}; {hint}"
            ) from None
        return self

    @property
    def blocks_per_stage(self) -> int:
        return blocks_per_stage(self.depth, len(self.widths))


def blocks_per_stage(depth: int, stages: int = 3) -> int:
    """n of a net `depth` weight layers deep: a stem, `stages` stages of n two-layer blocks and a
    head (depth = 2 * stages * n + 2; 6n+2 for the CIFAR family). The schema, the model and the
    tools that count blocks share it; a ValueError if no n >= 1 fits."""
    per_n = 2 * stages
    if depth < per_n + 2 or (depth - 2) % per_n:
        raise ValueError(f"depth {depth} is not {per_n}n+2 (n >= 1) for {stages} stages")
    return (depth - 2) // per_n


class WarmupConfig(_Section):
    """How the first steps' learning rate departs from the schedule (see `resexp.core.optim`).

    linear:   lr ramps from lr/steps to lr over `steps` (same as `optim.warmup_steps`).
    constant: lr is held at `warmup.lr` until step `steps`, or until a logging window's
              training error (1 - mean train accuracy of the window) falls below
              `until_train_error`, whichever comes first (He et al. 2016, ResNet-110).
    """

    kind: Literal["linear", "constant"] = "linear"
    steps: int = Field(gt=0)
    lr: float | None = Field(None, gt=0)
    until_train_error: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _fits_kind(self) -> WarmupConfig:
        if self.kind == "constant" and self.lr is None:
            raise ValueError("lr is required for kind: constant (the held learning rate, e.g. 0.01)")
        if self.kind == "linear" and (self.lr is not None or self.until_train_error is not None):
            raise ValueError(
                "lr and until_train_error apply to kind: constant only "
                "(a linear warm-up ramps to optim.lr over `steps`)"
            )
        return self


class OptimConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)
    decay_biases_and_norms: bool = True  # the lecture's argument decays W *and* b
    schedule: Literal["constant", "step", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)  # shorthand for warmup: {kind: linear, steps: N}
    warmup: WarmupConfig | None = None
    boundaries: list[int] = Field(default_factory=list)  # `step`: lr *= decay_factor at each
    decay_factor: float = Field(0.1, gt=0, le=1)

    @field_validator("boundaries")
    @classmethod
    def _increasing(cls, b: list[int]) -> list[int]:
        if any(x <= 0 for x in b) or b != sorted(set(b)):
            raise ValueError("boundaries must be strictly increasing positive steps")
        return b

    @model_validator(mode="after")
    def _one_warmup(self) -> OptimConfig:
        if self.warmup is not None and self.warmup_steps:
            raise ValueError(
                "warmup_steps and warmup are two spellings of one setting: give one "
                "(warmup_steps: N is warmup: {kind: linear, steps: N})"
            )
        return self

    @property
    def linear_warmup_steps(self) -> int:
        """Steps of the linear ramp, whichever spelling set it (0: none)."""
        if self.warmup is not None:
            return self.warmup.steps if self.warmup.kind == "linear" else 0
        return self.warmup_steps

    @property
    def constant_warmup(self) -> WarmupConfig | None:
        return self.warmup if self.warmup is not None and self.warmup.kind == "constant" else None


class TrainConfig(_Section):
    steps: int = Field(1000, gt=0)
    seed: int = Field(0, ge=0)
    log_every: int = Field(50, gt=0)  # steps per device dispatch, and the logging window
    eval_every: int = Field(0, ge=0)  # 0: evaluate at the end only
    checkpoint_every: int = Field(0, ge=0)  # 0: checkpoint at the end only
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params stay float32
    diagnostics: bool = True  # residual ratios, response std, weight/grad norms at eval
    vmap_seeds: int = Field(1, ge=1)  # train seeds seed..seed+S-1 in one program
    eval_examples: int | None = Field(None, gt=0)  # cap on test examples per eval
    # Precise BN: before each evaluation, recompute the BN statistics over this many fixed,
    # un-augmented training batches (data.batch_size each) with the weights frozen, and evaluate
    # with them; the running averages stay in the training state (and checkpoint) and are
    # evaluated too, for comparison. 0: evaluate with the running averages (the paper's way).
    precise_bn_batches: int = Field(0, ge=0)
    # A finite loss can explode too (lr 1e4: loss 6671, accuracy at chance): a logging window whose
    # mean loss exceeds this many times the first step's loss (the untrained net's, ~ln classes)
    # marks the run diverged, like a NaN does. None: only non-finite losses count.
    max_loss_factor: float | None = Field(100.0, gt=1)

    @model_validator(mode="after")
    def _cadences_align(self) -> TrainConfig:
        # Chunks are `log_every` steps; checkpoints and evals land on chunk boundaries so a
        # resumed run replays exactly the same chunks as an uninterrupted one.
        for key in ("eval_every", "checkpoint_every"):
            value = getattr(self, key)
            if value and value % self.log_every:
                raise ValueError(f"{key} ({value}) must be a multiple of log_every ({self.log_every})")
        return self


class ReportConfig(_Section):
    """What `resexp report` sets beside a sweep's numbers (it changes no run)."""

    reference: Literal["he2016_table6"] | None = None  # published numbers: see resexp.reporting.references


class SweepOverride(_Section):
    """Per-cell settings: every sweep cell whose config matches `when` gets `set` applied."""

    when: dict[str, Any] = Field(min_length=1)  # dotted key -> value, e.g. {model.depth: 110}
    set: dict[str, Any] = Field(min_length=1)  # dotted key -> value, e.g. {optim.warmup: {...}}


class Config(_Section):
    name: str = Field("experiment", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)  # dotted key -> values (a grid axis)
    sweep_overrides: list[SweepOverride] = Field(default_factory=list)
    report: ReportConfig = Field(default_factory=ReportConfig)


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.1 would make it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A `--set`/`--grid` value, typed as YAML would type it (`1e-4`, `true`, `[16, 32]`)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def _read_yaml(path: Path, source: str) -> dict:
    if not path.exists():
        raise ConfigError(source, None, "no such file")
    if path.is_dir():
        raise ConfigError(source, None, "is a directory, not a YAML config")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read ({exc.strerror or exc})") from None
    try:
        if b"\x00" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\x00"), raw.index(b"\x00") + 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            source,
            None,
            f"not a YAML config: binary or non-UTF-8 content (byte {exc.start}); "
            "pass a .yaml file like those in configs/",
        ) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError(source, None, f"not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(source, None, "empty config (expected a mapping with data/model/optim/train)")
    if not isinstance(data, dict):
        raise ConfigError(source, None, f"expected a YAML mapping at the top level, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- keys


def _sections() -> dict[str, type[BaseModel]]:
    return {
        name: f.annotation
        for name, f in Config.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }


def valid_keys() -> list[str]:
    """Every dotted key a user may set, e.g. `model.depth`."""
    keys = [
        name for name in Config.model_fields if name not in _sections() and name not in ("sweep", "sweep_overrides")
    ]
    for section, model in _sections().items():
        keys += [f"{section}.{field}" for field in model.model_fields]
    return keys


def _suggest(key: str) -> str:
    # A top-level slip ("modell") is compared with the top-level names, not with every dotted key.
    choices = valid_keys() if "." in key else [*Config.model_fields]
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    if not close:  # a bare field name ("depth") is a common slip
        close = [k for k in valid_keys() if k.split(".")[-1] == key.split(".")[-1]][:1]
    return f" (did you mean {close[0]}?)" if close else ""


def _suggest_value(value: Any, expected: str) -> str:
    """The allowed value a slip was meant to be (``fashion-mnist`` -> ``fashion_mnist``, ``SGD`` ->
    ``sgd``), from pydantic's list of a Literal field's values (``'a', 'b' or 'c'``)."""
    choices = re.findall(r"'([^']*)'", expected)
    if not isinstance(value, str) or not choices:
        return ""
    plain = {re.sub(r"[^a-z0-9]", "", c.lower()): c for c in choices}
    close = plain.get(re.sub(r"[^a-z0-9]", "", value.lower()))
    if close is None:
        matches = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.6)
        close = matches[0] if matches else None
    return f" (did you mean {close}?)" if close else ""


def check_key(source: str, key: str) -> None:
    if key not in valid_keys():
        raise ConfigError(source, key, f"unknown key{_suggest(key)}")


def set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def get_dotted(cfg: Config | dict, key: str) -> Any:
    node: Any = cfg.model_dump() if isinstance(cfg, Config) else cfg
    for part in key.split("."):
        node = node[part]
    return node


def parse_assignment(source: str, text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(source, None, "expected key=value (e.g. model.depth=20)")
    key, value = text.split("=", 1)
    key = key.strip()
    check_key(source, key)
    return key, value


# --------------------------------------------------------------------------- loading


def _validate(raw: dict, source: str, origins: dict[str, str]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()  # a misspelt key is the cause of the "missing" error beside it: name it first
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = [p for p in err["loc"] if not str(p).startswith("function-after")]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
        msg = err["msg"].removeprefix("Value error, ")
        section = _sections().get(key or "")
        if section is not None:  # a cross-field check: point at the field it names first
            field = msg.split(" ", 1)[0]
            if field in section.model_fields:
                key = f"{key}.{field}"
        if err["type"] == "extra_forbidden":
            msg = f"unknown key{_suggest(key or '')}"
        elif err["type"] == "literal_error":
            expected = err["ctx"]["expected"]
            msg = f"{err.get('input')!r} is not one of: {expected}{_suggest_value(err.get('input'), expected)}"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        # Name the --set that supplied the bad value, if one did.
        for prefix, origin in origins.items():
            if key and (key == prefix or key.startswith(prefix + ".")):
                source = f"{source} ({origin})"
                break
        raise ConfigError(source, key, msg) from None


BASE_KEY = "base"


def _source(path: Path) -> str:
    return path.stem if is_bundled(path) else str(path)  # messages name `demo`, not site-packages/...


def _base_file(path: Path, source: str, base: Any) -> Path:
    """The file a `base:` value names: a path relative to the config's own file, else a bundled config."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(
            source, BASE_KEY, f"expected another config's file name or path (e.g. cifar10.yaml), got {base!r}"
        )
    beside = path.parent / Path(base).expanduser()
    if beside.is_file():
        return beside
    name = bundled_name(base)
    if name is not None and beside.name == name and beside.with_name(name + SUFFIX).is_file():  # `demo`: demo.yaml
        return beside.with_name(name + SUFFIX)
    if name is not None and name in bundled_configs():
        return bundled_configs()[name]
    what = f"no such file {base!r} beside this config, and no bundled config of that name"
    raise ConfigError(source, BASE_KEY, unknown_name(base, what).message)


def merge_configs(base: dict, child: dict) -> dict:
    """`child` over `base`: mappings merge key by key, anything else (lists, scalars) replaces.

    Two keys are a config's own: `name` is never inherited (a child's runs get a directory of their
    own), and `sweep` replaces as a whole (a grid is one choice: merged axes would multiply cells).
    """
    out = _merge({k: v for k, v in base.items() if k != "name"}, {k: v for k, v in child.items() if k != "sweep"})
    if "sweep" in child:
        out["sweep"] = copy.deepcopy(child["sweep"])
    return out


def _merge(base: dict, child: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in child.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else copy.deepcopy(value)
    return out


def read_config(path: Path, source: str | None = None, chain: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with its `base:` chain resolved: what validation and run ids see."""
    source = source or _source(path)
    raw = _read_yaml(path, source)
    if BASE_KEY not in raw:
        return raw
    base = _base_file(path, source, raw.pop(BASE_KEY))
    seen = (*chain, path.resolve())
    if base.resolve() in seen:
        loop = " -> ".join(_source(p) for p in (*seen, base.resolve()))
        raise ConfigError(source, BASE_KEY, f"a cycle of bases: {loop}")
    return merge_configs(read_config(base, _source(base), seen), raw)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (a path or a bundled config's name, see `resexp.core.bundled`) and its `base:`
    chain, apply `key=value` overrides, validate the whole thing."""
    path = resolve_config(path)
    source = _source(path)
    raw = read_config(path, source)
    origins: dict[str, str] = {}
    for text in overrides:
        key, value = parse_assignment(f"{source} (--set {text})", text)
        set_dotted(raw, key, parse_value(value))
        origins[key] = f"--set {text}"
    raw.setdefault("name", re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or "experiment")
    cfg = _validate(raw, source, origins)
    check_sweep(cfg, source)
    return cfg


def check_sweep(cfg: Config, source: str) -> None:
    for key, values in cfg.sweep.items():
        if key not in valid_keys():
            raise ConfigError(source, f"sweep.{key}", f"unknown key{_suggest(key)}")
        if key == "name":
            raise ConfigError(source, "sweep.name", "cannot sweep the experiment name")
        if not values:
            raise ConfigError(source, f"sweep.{key}", "empty sweep axis (give at least one value)")
    check_sweep_overrides(cfg, source)


def same_value(a: Any, b: Any) -> bool:
    """Config equality that keeps `true` apart from 1 (YAML gives both)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def check_sweep_overrides(cfg: Config, source: str) -> None:
    """Each override names real keys, changes no sweep axis, and matches a cell of the file's grid.

    A cell matches when every `when` key has its value there; the grid is a cartesian product,
    so that holds for some cell iff each value is on its axis (or, unswept, in the base config).
    """
    base = cfg.model_dump()
    for i, override in enumerate(cfg.sweep_overrides):
        where = f"sweep_overrides[{i}]"
        for part in ("when", "set"):
            for key in getattr(override, part):
                if key not in valid_keys():
                    raise ConfigError(source, f"{where}.{part}.{key}", f"unknown key{_suggest(key)}")
        for key in override.set:
            if key == "name" or key in cfg.sweep:
                raise ConfigError(
                    source,
                    f"{where}.set.{key}",
                    "is a sweep axis; an override may not change it"
                    if key != "name"
                    else "cannot override the experiment name",
                )
        for key, value in override.when.items():
            axis = cfg.sweep.get(key)
            if axis is not None and not any(same_value(v, value) for v in axis):
                raise ConfigError(
                    source, f"{where}.when.{key}", f"{value!r} matches no sweep cell ({key} is swept over {axis})"
                )
            if axis is None and not same_value(get_dotted(base, key), value):
                raise ConfigError(
                    source,
                    f"{where}.when.{key}",
                    f"{value!r} matches no sweep cell ({key} is not swept and is "
                    f"{get_dotted(base, key)!r} in every cell)",
                )


def apply_overrides(cfg: Config, cell: Config, source: str = "config") -> Config:
    """`cell` with the `set` of every override of `cfg` whose `when` it matches (in file order)."""
    values = cell.model_dump()
    out = cell.model_copy(update={"sweep_overrides": []})
    for i, override in enumerate(cfg.sweep_overrides):
        if not all(same_value(get_dotted(values, k), v) for k, v in override.when.items()):
            continue
        try:
            out = with_updates(out, override.set, source=source)
        except ConfigError as exc:
            raise ConfigError(source, f"sweep_overrides[{i}].set.{exc.key}", exc.message) from None
    return out


def with_updates(cfg: Config, updates: dict[str, Any], source: str = "sweep") -> Config:
    """A copy of `cfg` with dotted-key updates applied, fully re-validated."""
    raw = cfg.model_dump()
    for key, value in updates.items():
        set_dotted(raw, key, copy.deepcopy(value))
    origins = {key: f"{source} {key}={value!r}" for key, value in updates.items()}
    return _validate(raw, source, origins)


# --------------------------------------------------------------------------- run ids


# The readable prefix of a run id for each dataset but the default one (digits runs have none).
DATASET_TAGS = {
    "synthetic": "synth",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "mnist": "mnist",
    "fashion_mnist": "fmnist",
}
# The data.* keys only `synthetic` reads.
SYNTHETIC_ONLY = ("num_train", "num_test", "image_size", "channels", "num_classes")


def identity_dict(cfg: Config) -> dict:
    """What determines a run's numbers: everything except bookkeeping that does not.

    `name`, `sweep`, `sweep_overrides` and `report` say where a run came from and how it is
    reported, and `vmap_seeds` how it was batched with others; none changes what one seed's
    run computes. Nor does `data.dir`, where the files happen to be: a file dataset is known by
    its content (the published digests resexp checks, resexp.core.datasets.CONTENT_SHA256, which
    stand in the identity where they exist), and the `synthetic`-only keys mean nothing to it.
    Settings added later are left out at their default (which is what runs before them
    computed), so existing run ids stay valid: a digits run keeps the id it always had.
    """
    d = legacy_identity_dict(cfg)
    d["data"]["dir"] = None  # the key stays, at what runs without a data.dir were hashed with
    if cfg.data.name not in ("digits", "synthetic"):
        from resexp.core.datasets import CONTENT_SHA256, content_digest

        for key in SYNTHETIC_ONLY:
            d["data"].pop(key)
        if cfg.data.name in CONTENT_SHA256:
            d["data"]["content_sha256"] = content_digest(CONTENT_SHA256[cfg.data.name])
    return d


def legacy_identity_dict(cfg: Config) -> dict:
    """The identity before file datasets were known by their content (`data.dir` counted then):
    what the ids of runs made by earlier versions hash, so those runs are still found."""
    d = cfg.model_dump(mode="json", exclude={"name", "sweep", "sweep_overrides", "report"})
    d["train"].pop("vmap_seeds", None)
    if d["train"]["max_loss_factor"] == TrainConfig.model_fields["max_loss_factor"].default:
        d["train"].pop("max_loss_factor")
    if d["train"]["precise_bn_batches"] == 0 or cfg.model.norm == "none":  # no BN statistics to recompute
        d["train"].pop("precise_bn_batches")
    if d["optim"]["warmup"] is None:
        d["optim"].pop("warmup")
    if d["model"]["scan_unroll"] == "auto":  # what runs before "auto" were hashed with (CPU's choice)
        d["model"]["scan_unroll"] = 1
    augmented = cfg.data.augment if cfg.data.augment is not None else cfg.data.name in ("cifar10", "cifar100")
    if d["data"]["pad_value"] == "mean" or not augmented:  # no crop, no border
        d["data"].pop("pad_value")
    if not cfg.model.shortcut:  # a plain net has no shortcut to project, pad or gate
        for key in ("projection", "zero_init_residual", "rezero"):
            d["model"].pop(key)
    return d


def _hash(identity: dict) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def config_hash(cfg: Config) -> str:
    return _hash(identity_dict(cfg))


def legacy_config_hash(cfg: Config) -> str:
    """The hash earlier versions gave `cfg` (in its run id and its checkpoints)."""
    return _hash(legacy_identity_dict(cfg))


def run_id(cfg: Config) -> str:
    """Readable and stable: `resnet20-a-wd0.0001-s0-1a2b3c4d` (the hash covers the rest), with the
    dataset in front unless it is the default digits: `fmnist-plain56-wd0.0001-s0-5e6f7a8b`."""
    tag = DATASET_TAGS.get(cfg.data.name)
    return f"{tag + '-' if tag else ''}{_readable(cfg)}-{config_hash(cfg)}"


def legacy_run_id(cfg: Config) -> str:
    """The id earlier versions gave `cfg`: no dataset in front, `data.dir` in the hash."""
    return f"{_readable(cfg)}-{legacy_config_hash(cfg)}"


def legacy_id_prefix(cfg: Config) -> str:
    """What every legacy id of `cfg` starts with, whatever `data.dir` it was made with."""
    return f"{_readable(cfg)}-"


def _readable(cfg: Config) -> str:
    m = cfg.model
    if m.kind == "cnn":
        arch = f"resnet{m.depth}-{ShortcutOption(m.projection).tag}" if m.shortcut else f"plain{m.depth}"
    else:
        arch = f"mlp-{'res' if m.shortcut else 'plain'}{m.depth}"
    return f"{arch}-wd{cfg.optim.weight_decay:g}-s{cfg.train.seed}"


def resolved_dict(cfg: Config) -> dict:
    """The resolved config as a run records it (config.yaml, summary.json): every key, but the
    `synthetic`-only data keys (image_size, channels, ...) only for `synthetic` and the digits,
    whose run ids have always hashed them; elsewhere they would misdescribe the data."""
    d = cfg.model_dump(mode="json")
    if cfg.data.name not in ("digits", "synthetic"):
        for key in SYNTHETIC_ONLY:
            d["data"].pop(key)
    return d


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(resolved_dict(cfg), sort_keys=False)
