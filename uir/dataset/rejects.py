"""Rejected inputs: every file the build saw and did not use gets one line saying why."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from uir.dataset.atomic import write_text_atomic


@dataclass(frozen=True, order=True)
class Rejection:
    source: str
    path: str
    stage: str
    reason: str


def write_rejects(path: Path, rejections: Iterable[Rejection]) -> None:
    lines = [json.dumps(asdict(r), sort_keys=True) for r in sorted(rejections)]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_rejects(path: Path) -> list[Rejection]:
    if not path.is_file():
        return []
    return [Rejection(**json.loads(line)) for line in path.read_text().splitlines() if line]
