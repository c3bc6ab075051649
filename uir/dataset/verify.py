"""Check a built dataset against its manifest: every byte, count, key and split.

Reads each shard once, hashing and parsing it in the same pass; reports every problem it finds
rather than stopping at the first, so one run tells the whole story.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from uir.dataset import schema
from uir.dataset.config import SPLITS
from uir.dataset.rejects import read_rejects
from uir.dataset.splits import find_leaks

_READ = 1 << 20


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


class _HashingReader:
    """Hashes exactly the bytes tarfile reads, so verification is a single pass."""

    def __init__(self, file: BinaryIO, md5: bool) -> None:
        self._file = file
        self.digest = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._update(data)
        return data

    def _update(self, data: bytes) -> None:
        self.digest.update(data)
        if self.md5 is not None:
            self.md5.update(data)

    def drain(self) -> None:
        while chunk := self._file.read(_READ):
            self._update(chunk)


def load_manifest(folder: Path) -> dict[str, Any]:
    path = folder / schema.MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {schema.MANIFEST} (not a finished UIR Forge dataset)"
        )
    return json.loads(path.read_text())


def iter_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, members) of one shard, grouped the way WebDataset groups them."""
    with tarfile.open(path, mode="r:") as tar:
        yield from _group(tar)


def _group(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    key: str | None = None
    members: dict[str, bytes] = {}
    for info in tar:
        name_key, _, extension = info.name.partition(".")
        if key is not None and name_key != key:
            yield key, members
            members = {}
        key = name_key
        file = tar.extractfile(info)
        members[extension] = file.read() if file else b""
    if key is not None:
        yield key, members


def _check_sample(
    shard: str, split: str, key: str, members: dict[str, bytes], report: VerifyReport
) -> dict[str, Any] | None:
    where = f"{shard}: {key}"
    missing = [m for m in schema.REQUIRED_MEMBERS if m not in members]
    unknown = set(members) - {*schema.REQUIRED_MEMBERS, *schema.OPTIONAL_MEMBERS}
    if missing:
        report.problems.append(f"{where}: missing {', '.join(missing)}")
    if unknown:
        report.problems.append(f"{where}: unexpected members {sorted(unknown)}")
    if not schema.KEY_PATTERN.match(key):
        report.problems.append(f"{where}: key is not dot-free")
    try:
        metadata = json.loads(members.get(schema.METADATA, b""))
    except ValueError:
        report.problems.append(f"{where}: metadata is not JSON")
        return None
    if metadata.get("key") != key or metadata.get("split") != split:
        report.problems.append(f"{where}: metadata names key/split {metadata.get('key')}/"
                               f"{metadata.get('split')}")
    caption = members.get(schema.CAPTION, b"").decode("utf-8", "replace")
    if caption != metadata.get("caption"):
        report.problems.append(f"{where}: caption differs from its metadata")
    for member in (schema.HQ, schema.LQ, schema.MASK):
        if member in members and not members[member].startswith(b"\x89PNG\r\n\x1a\n"):
            report.problems.append(f"{where}: {member} is not a PNG")
    return metadata


def _check_shard(
    folder: Path, entry: dict[str, Any], report: VerifyReport,
    keys: Counter[str], hq_splits: list[tuple[str, str]],
) -> None:
    path = folder / entry["name"]
    if not path.is_file():
        report.problems.append(f"{entry['name']}: missing")
        return
    if path.stat().st_size != entry["bytes"]:
        report.problems.append(
            f"{entry['name']}: {path.stat().st_size} bytes, manifest says {entry['bytes']}"
        )
    count = 0
    with open(path, "rb") as raw:
        reader = _HashingReader(raw, md5=bool(entry["md5"]))
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for key, members in _group(tar):
                    count += 1
                    keys[key] += 1
                    metadata = _check_sample(entry["name"], entry["split"], key, members, report)
                    if metadata and "hq_sha256" in metadata:
                        hq_splits.append((metadata["hq_sha256"], entry["split"]))
        except (tarfile.TarError, OSError, EOFError) as err:
            report.problems.append(f"{entry['name']}: unreadable tar ({err})")
        reader.drain()
    if reader.digest.hexdigest() != entry["sha256"]:
        report.problems.append(f"{entry['name']}: sha256 mismatch (content changed)")
    elif reader.md5 is not None and reader.md5.hexdigest() != entry["md5"]:
        report.problems.append(f"{entry['name']}: md5 mismatch")
    if count != entry["samples"]:
        report.problems.append(
            f"{entry['name']}: {count} samples, manifest says {entry['samples']}"
        )
    report.shards += 1
    report.samples += count


def verify(folder: Path) -> VerifyReport:
    report = VerifyReport()
    try:
        manifest = load_manifest(folder)
    except (FileNotFoundError, ValueError) as err:
        report.problems.append(str(err))
        return report
    keys: Counter[str] = Counter()
    hq_splits: list[tuple[str, str]] = []
    listed = {entry["name"] for entry in manifest["shards"]}
    for entry in manifest["shards"]:
        _check_shard(folder, entry, report, keys, hq_splits)
    for path in sorted(folder.glob("*.tar")):
        if path.name not in listed:
            report.problems.append(f"{path.name}: shard not in the manifest")
    for key, count in keys.items():
        if count > 1:
            report.problems.append(f"key {key} appears {count} times")
    for hq_hash, splits in find_leaks(hq_splits).items():
        report.problems.append(f"leakage: HQ {hq_hash[:16]} is in {', '.join(splits)}")
    _check_counts(folder, manifest, report)
    return report


def _check_counts(folder: Path, manifest: dict[str, Any], report: VerifyReport) -> None:
    counts = manifest["counts"]
    if report.samples != counts["samples"]:
        report.problems.append(f"{report.samples} samples, manifest says {counts['samples']}")
    split_sums = {
        s: sum(e["samples"] for e in manifest["shards"] if e["split"] == s) for s in SPLITS
    }
    if split_sums != counts["splits"]:
        report.problems.append(f"split counts {split_sums} != manifest {counts['splits']}")
    rejects = read_rejects(folder / schema.REJECTS)
    if len(rejects) != counts["rejected"]:
        report.problems.append(f"{schema.REJECTS} has {len(rejects)} lines, manifest says "
                               f"{counts['rejected']}")
    if counts["accepted"] + counts["rejected"] != counts["seen"]:
        report.problems.append("accepted + rejected != seen")
    sizes_path = folder / schema.SIZES
    expected_sizes = {e["name"]: e["samples"] for e in manifest["shards"]}
    try:
        sizes = json.loads(sizes_path.read_text())
    except (OSError, ValueError):
        sizes = None
    if sizes != expected_sizes:
        report.problems.append(f"{schema.SIZES} does not match the manifest")
    for split in SPLITS:
        index_path = folder / schema.WIDS_INDEX.format(split=split)
        entries = [e for e in manifest["shards"] if e["split"] == split]
        if not entries:
            continue
        try:
            index = json.loads(index_path.read_text())
            listed = [
                (s["url"], s["nsamples"], s["filesize"], s.get("md5sum"))
                for s in index["shardlist"]
            ]
        except (OSError, ValueError, KeyError, TypeError):
            report.problems.append(f"{index_path.name}: missing or unreadable")
            continue
        if listed != [(e["name"], e["samples"], e["bytes"], e["md5"]) for e in entries]:
            report.problems.append(f"{index_path.name} does not match the manifest")


def summary(folder: Path) -> dict[str, Any]:
    """What `uir inspect` prints: the manifest's counts and shard totals, no shard reads."""
    manifest = load_manifest(folder)
    shards = manifest["shards"]
    return {
        "dataset": manifest["dataset"],
        "version": manifest["version"],
        "params_hash": manifest["params_hash"][:16],
        "git_commit": manifest["code"]["git_commit"],
        "shards": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        **manifest["counts"],
    }
