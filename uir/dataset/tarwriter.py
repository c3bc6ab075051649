"""Byte-deterministic WebDataset tar shards, written to a temporary name and renamed.

Every header field that could vary between machines or runs is fixed (mtime 0, uid/gid 0, no
user names, mode 0644, USTAR), members are written in a fixed order, and the SHA-256 is taken
while writing so a shard is never read back just to be hashed.

Members are written directly (``TarInfo.tobuf`` header, data, NUL padding; two zero blocks and
a pad to the 10 KiB record at the end), the bytes ``tarfile.addfile``/``close`` produce, without
its 16 KiB copy loop: one write and one hash update per piece instead of one per 16 KiB.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from uir.dataset.atomic import temporary_path
from uir.dataset.schema import check_key

BLOCK = tarfile.BLOCKSIZE
_END_OF_ARCHIVE = 2 * BLOCK
_ZEROS = bytes(BLOCK)
# What tarfile.open(..., "w") uses for header names: the file system encoding, as it did here.
_ENCODING = tarfile.ENCODING
_ERRORS = "surrogateescape"


@dataclass(frozen=True)
class ShardFile:
    name: str
    sha256: str
    md5: str
    bytes: int
    samples: int


class _HashingFile:
    """Passes writes through to a file while hashing and counting them."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.digest = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.digest.update(data)
        self.md5.update(data)
        self.size += len(data)


def member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def sample_size(members: Mapping[str, bytes]) -> int:
    """Bytes a sample takes in a tar: a header block per member plus padded data."""
    return sum(BLOCK + -(-len(data) // BLOCK) * BLOCK for data in members.values())


class TarShardWriter:
    """Writes one shard; ``close`` renames it into place and returns its checksum."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._temporary = temporary_path(path)
        self._file = open(self._temporary, "xb")  # noqa: SIM115  (closed in close/abort)
        self._hashing = _HashingFile(self._file)
        self.samples = 0
        self.payload = 0

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        """Members in sorted extension order, so a sample's bytes do not depend on dict order."""
        check_key(key)
        out = self._hashing
        for extension in sorted(members):
            data = members[extension]
            info = member_info(f"{key}.{extension}", len(data))
            out.write(info.tobuf(tarfile.USTAR_FORMAT, _ENCODING, _ERRORS))
            if data:
                out.write(data)
            padding = -len(data) % BLOCK
            if padding:
                out.write(_ZEROS[:padding])
        self.samples += 1
        self.payload += sample_size(members)

    def projected_size(self, members: Mapping[str, bytes]) -> int:
        """The file size after adding ``members``: end-of-archive blocks, padded to a record."""
        used = self.payload + sample_size(members) + _END_OF_ARCHIVE
        return -(-used // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def close(self) -> ShardFile:
        self._hashing.write(bytes(_END_OF_ARCHIVE))
        tail = -self._hashing.size % tarfile.RECORDSIZE
        if tail:
            self._hashing.write(bytes(tail))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temporary, self.path)
        return ShardFile(
            self.path.name, self._hashing.digest.hexdigest(), self._hashing.md5.hexdigest(),
            self._hashing.size, self.samples,
        )

    def abort(self) -> None:
        self._file.close()
        self._temporary.unlink(missing_ok=True)
