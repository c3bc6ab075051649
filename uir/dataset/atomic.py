"""Atomic file writes: readers and resumed builds never see a half-written file."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from uir.dataset.schema import TEMP_PREFIX


def temporary_path(path: Path) -> Path:
    """A hidden sibling in the same folder, so the final rename stays on one filesystem."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    temporary = temporary_path(path)
    try:
        with open(temporary, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, dumps(value) + "\n")


def dumps(value: Any) -> str:
    """Canonical JSON: sorted keys and fixed separators, so equal content is equal bytes."""
    return json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False)


def remove_temporaries(folder: Path, stem: str = "") -> int:
    """Delete leftovers of writes that a killed build never finished."""
    removed = 0
    for path in folder.glob(f"{TEMP_PREFIX}{stem}*.tmp"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
