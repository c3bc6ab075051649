"""Discovery: turn configured sources into a sorted list of candidate files.

Real LQ/GT pairs are matched by name with an explicit rule, never by sorted order (the
reference scripts' silent mispairing); whatever cannot be matched is reported, not dropped.
"""

from __future__ import annotations

import glob
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from uir.dataset.config import ConfigError, DatasetConfig, HQSource, PairSource
from uir.dataset.rejects import Rejection
from uir.demo import PHOTO_SUFFIXES, demo_dir
from uir.imageio import SIDECAR_SUFFIXES

_GLOB_MAGIC = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Candidate:
    """One HQ image to synthesise from, or one real LQ/GT pair."""

    source: str
    path: Path
    rel: str
    lq_path: Path | None = None
    lq_rel: str | None = None
    label: str | None = None
    split: str | None = None

    @property
    def is_pair(self) -> bool:
        return self.lq_path is not None


def is_image_name(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in PHOTO_SUFFIXES and not name.endswith(SIDECAR_SUFFIXES)


def _relative(path: Path, root: Path) -> str:
    """A machine-independent name for provenance: relative to the params file when possible."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def _expand(config: DatasetConfig, pattern: str, recursive: bool) -> list[Path]:
    path = config.resolve_path(pattern)
    if _GLOB_MAGIC.search(pattern):
        found = [Path(p) for p in glob.glob(str(path), recursive=True)]
        files = [p for p in found if p.is_file() and is_image_name(p)]
        if not files:
            raise ConfigError(f"source pattern {pattern!r} matched no image files")
        return files
    if path.is_file():
        return [path]
    if path.is_dir():
        walker = path.rglob("*") if recursive else path.glob("*")
        return [p for p in walker if p.is_file() and is_image_name(p)]
    raise ConfigError(f"source path {pattern!r} does not exist (resolved to {path})")


def _hq_candidates(config: DatasetConfig, source: HQSource) -> list[Candidate]:
    root = Path(config.root)
    files = {
        p.resolve() for pattern in source.paths for p in _expand(config, pattern, source.recursive)
    }
    return [Candidate(source.name, p, _relative(p, root)) for p in files]


def _demo_candidates(config: DatasetConfig, name: str) -> list[Candidate]:
    folder = demo_dir()
    if not folder.is_dir():
        raise ConfigError(f"demo folder {folder} is missing")
    root = Path(config.root)
    return [
        Candidate(name, p.resolve(), _relative(p, root))
        for p in folder.iterdir()
        if p.is_file() and is_image_name(p)
    ]


def pair_id(stem: str, source: PairSource, side: str) -> str | None:
    """The name an LQ or GT file pairs on, or None when the file does not fit the rule."""
    if source.pairing == "stem":
        return stem
    if source.pairing == "prefix":
        head = stem.split(source.separator, 1)[0]
        return head or None
    pattern = source.lq_pattern if side == "lq" else source.gt_pattern
    before, after = pattern.split("{id}")
    regex = re.compile(re.escape(before) + "(.+)" + re.escape(after) + "$")
    match = regex.match(stem)
    return match.group(1) if match else None


def _pair_candidates(
    config: DatasetConfig, source: PairSource, rejects: list[Rejection]
) -> list[Candidate]:
    root = Path(config.root)
    lq_files = _expand(config, source.lq, recursive=False)
    gt_files = _expand(config, source.gt, recursive=False)
    split = None if source.split == "auto" else source.split

    def reject(path: Path, reason: str) -> None:
        rejects.append(Rejection(source.name, _relative(path, root), "pairing", reason))

    gt_by_id: dict[str, list[Path]] = defaultdict(list)
    for path in gt_files:
        key = pair_id(path.stem, source, "gt")
        if key is None:
            reject(path, f"GT name does not match {source.gt_pattern!r}")
        else:
            gt_by_id[key].append(path)
    for key, paths in gt_by_id.items():
        if len(paths) > 1:
            for path in paths:
                reject(path, f"ambiguous GT: {len(paths)} GT files share the pair id {key!r}")
    used: set[str] = set()
    pairs: list[Candidate] = []
    for path in lq_files:
        key = pair_id(path.stem, source, "lq")
        if key is None:
            reject(path, f"LQ name does not match {source.lq_pattern!r}")
            continue
        matches = gt_by_id.get(key, [])
        if len(matches) != 1:
            reason = "no GT" if not matches else "ambiguous GT"
            reject(path, f"unmatched LQ: {reason} with pair id {key!r} ({source.pairing} rule)")
            continue
        used.add(key)
        gt = matches[0]
        pairs.append(
            Candidate(
                source.name, gt.resolve(), _relative(gt, root), path.resolve(),
                _relative(path, root), source.label, split,
            )
        )
    for key, paths in gt_by_id.items():
        if key not in used and len(paths) == 1:
            reject(paths[0], f"unmatched GT: no LQ with pair id {key!r} ({source.pairing} rule)")
    return pairs


def discover(config: DatasetConfig) -> tuple[list[Candidate], list[Rejection]]:
    """All candidates in a stable order (source order, then path), and the pairing rejects."""
    rejects: list[Rejection] = []
    candidates: list[Candidate] = []
    for source in config.sources:
        if isinstance(source, HQSource):
            found = _hq_candidates(config, source)
        elif isinstance(source, PairSource):
            found = _pair_candidates(config, source, rejects)
        else:
            found = _demo_candidates(config, source.name)
        candidates.extend(sorted(found, key=lambda c: (c.rel, c.lq_rel or "")))
    return candidates, rejects

