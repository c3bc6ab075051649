"""Typed build configuration, loaded from a dataset entry of ``params.yaml``.

One model per concern so that DVC can depend on exactly the parameters a stage reads, and a
misspelt key fails the build before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from degradations.config import Config
from uir.imageio import DEFAULT_MAX_PIXELS

PARAMS_FILE = Path("params.yaml")
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
SplitName = Literal["train", "val", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "val", "test")
ConfigModel = TypeVar("ConfigModel", bound=Config)


class ConfigError(ValueError):
    """A params.yaml problem, reported as one line naming the key."""


class HQSource(Config):
    """Clean images to synthesise from: folders, files or globs (relative to the params file)."""

    name: str
    kind: Literal["hq"] = "hq"
    paths: tuple[str, ...]
    recursive: bool = True


class DemoSource(Config):
    """The photographs embedded in the repository (offline; captions in sidecars)."""

    name: str = "demo"
    kind: Literal["demo"] = "demo"


PairingRule = Literal["stem", "prefix", "rename"]


class PairSource(Config):
    """Real LQ/GT pairs with one degradation label, e.g. Rain100H or LOL.

    Files pair by name, never by sorted order: ``stem`` (same stem), ``prefix`` (the part of
    the stem before ``separator``) or ``rename`` (``lq_pattern``/``gt_pattern`` with one
    ``{id}`` each, e.g. ``rain-{id}`` and ``norain-{id}``).
    """

    name: str
    kind: Literal["pairs"] = "pairs"
    lq: str
    gt: str
    label: str
    pairing: PairingRule = "stem"
    separator: str = "_"
    lq_pattern: str = "{id}"
    gt_pattern: str = "{id}"
    split: SplitName | Literal["auto"] = "auto"

    @field_validator("label")
    @classmethod
    def _known_label(cls, label: str) -> str:
        from degradations.registry import get_degradation

        try:
            get_degradation(label)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        return label

    @model_validator(mode="after")
    def _patterns(self) -> PairSource:
        if self.pairing == "rename":
            for pattern in (self.lq_pattern, self.gt_pattern):
                if pattern.count("{id}") != 1:
                    raise ValueError(f"pattern {pattern!r} needs exactly one {{id}}")
        return self


Source = Annotated[HQSource | PairSource | DemoSource, Field(discriminator="kind")]


class IngestConfig(Config):
    min_size: int = Field(64, ge=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)


class SplitConfig(Config):
    """Fractions of HQ images per split; the hash of the HQ pixels decides, with ``salt``."""

    train: Fraction = 0.9
    val: Fraction = 0.05
    test: Fraction = 0.05
    salt: str = "uir-forge"

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-9:
            raise ValueError("train + val + test must be 1")
        return self


class CaptionConfig(Config):
    source: Literal["sidecar", "blip", "sidecar-or-blip"] = "sidecar-or-blip"
    model: str = "Salesforce/blip-image-captioning-large"
    device: str = "auto"
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    cache: str = ".uir-cache/captions.sqlite"


class Recipe(Config):
    """One way to degrade an HQ image: a preset (or pipeline, or YAML path) with overrides.

    ``type: hazy`` is short for the ``daclip`` preset restricted to that one type.
    """

    name: str = ""
    preset: str = ""
    type: str = ""
    overrides: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _preset_or_type(self) -> Recipe:
        if bool(self.preset) == bool(self.type):
            raise ValueError("a recipe names exactly one of 'preset' or 'type'")
        check_recipe(*self.resolved())
        return self

    @property
    def label(self) -> str:
        return self.name or self.type or self.preset

    def resolved(self) -> tuple[str, dict[str, Any]]:
        """(preset, overrides) as `degradations.synthesize_sample` takes them."""
        if self.type:
            return "daclip", {"types": [self.type], **self.overrides}
        return self.preset, dict(self.overrides)


def check_recipe(preset_name: str, overrides: dict[str, Any]) -> None:
    """Fail at load time, not in a worker halfway through the build."""
    from degradations.config import build_config, merge
    from degradations.presets import resolve_preset
    from degradations.registry import get_pipeline

    try:
        preset = resolve_preset(preset_name)
        build_config(get_pipeline(preset.pipeline).config_type, merge(preset.config, overrides))
    except KeyError as err:
        raise ValueError(err.args[0]) from None


class CropConfig(Config):
    mode: Literal["full", "random"] = "full"
    size: int = Field(256, ge=8)
    # What rain streaks, raindrops and snowflakes of a random crop are sized for: "photo", the
    # photo it is cut from (a crop of a rainy photo); "crop", the crop as if it were a whole
    # photo (4 px streaks in a 64 px crop). "crop" is the default so existing dataset
    # definitions rebuild byte for byte.
    weather_size: Literal["crop", "photo"] = "crop"


class SynthesisConfig(Config):
    variants: int = Field(4, ge=0)
    recipes: tuple[Recipe, ...] = (Recipe(preset="realesrgan"),)
    crop: CropConfig = CropConfig()

    @model_validator(mode="after")
    def _recipes(self) -> SynthesisConfig:
        if self.variants and not self.recipes:
            raise ValueError("variants > 0 needs at least one recipe")
        labels = [recipe.label for recipe in self.recipes]
        if len(set(labels)) != len(labels):
            raise ValueError(f"recipe names must be unique, got {labels}; set 'name'")
        return self


class ShardConfig(Config):
    max_count: int = Field(1000, ge=1)
    max_bytes: int = Field(1 << 30, ge=1 << 16)
    # 0 stores the PNGs: deflate level 1 saves ~45% of the bytes for ~1.8 ms/pair at 256x256.
    png_compression: int = Field(0, ge=0, le=9)
    # wids uses md5sum only to check downloads; the manifest's SHA-256 is the integrity check.
    md5: bool = False


RunnerKind = Literal["process", "thread", "dask", "ray", "sequential"]


class RunnerConfig(Config):
    """How shard tasks run: a local pool, or Dask/Ray clusters at ``address``."""

    kind: RunnerKind = "process"
    workers: int = Field(2, ge=1)
    address: str | None = None
    retries: int = Field(2, ge=0)


class DatasetConfig(Config):
    name: str
    version: str = "0.1.0"
    seed: int = Field(0, ge=0)
    output: str
    sources: tuple[Source, ...]
    ingest: IngestConfig = IngestConfig()
    splits: SplitConfig = SplitConfig()
    captions: CaptionConfig = CaptionConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    shards: ShardConfig = ShardConfig()
    runner: RunnerConfig = RunnerConfig()
    dvc_stage: str | None = None
    root: str = "."

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"dataset name {name!r} must be letters, digits, '-' or '_'")
        return name

    @model_validator(mode="after")
    def _unique_sources(self) -> DatasetConfig:
        names = [source.name for source in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        return self

    def resolve_path(self, path: str) -> Path:
        """Paths in params.yaml are relative to the file's folder, not the caller's cwd."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else Path(self.root) / candidate

    @property
    def output_dir(self) -> Path:
        return self.resolve_path(self.output)

    def params_hash(self) -> str:
        """Hash of everything that decides the shard bytes (runner and paths excluded)."""
        relevant = self.model_dump(
            mode="json", exclude={"runner", "root", "output", "dvc_stage"}
        )
        relevant["captions"].pop("cache")
        relevant["captions"].pop("device")
        relevant["captions"].pop("batch_size")
        blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise ConfigError(f"{path}: expected a top-level 'datasets:' mapping")
    return data


def dataset_names(path: str | Path = PARAMS_FILE) -> list[str]:
    return list(load_params(path)["datasets"])


def load_dataset_config(
    name: str, path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None
) -> DatasetConfig:
    """The typed config of ``datasets.<name>``; relative paths resolve against the file."""
    from degradations.config import merge

    path = Path(path)
    datasets = load_params(path)["datasets"]
    if name not in datasets:
        raise ConfigError(f"{path}: no dataset {name!r}; defined: {', '.join(datasets)}")
    entry = merge(dict(datasets[name] or {}), overrides or {})
    entry.setdefault("name", name)
    entry.setdefault("root", str(path.resolve().parent))
    return parse_dataset_config(entry, where=f"{path}: datasets.{name}")


def parse_dataset_config(entry: dict[str, Any], where: str = "dataset") -> DatasetConfig:
    return validate_entry(DatasetConfig, entry, where)


def validate_entry(model: type[ConfigModel], entry: dict[str, Any], where: str) -> ConfigModel:
    """Validate one params.yaml entry; its first problem becomes a one-line ConfigError that
    names the key (pydantic's report is many lines of internals)."""
    try:
        return model.model_validate(entry)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{where}.{key}: {first['msg']}") from None
