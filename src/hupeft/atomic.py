"""Atomic file writes: a temporary file in the destination's folder, then one rename.

A reader (or a grid re-run after a kill) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(dest: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path), then rename tmp_path over dest; on any error remove tmp_path."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def atomic_write_text(dest: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(dest, write)


def atomic_write_jsonl(dest: str | os.PathLike, rows) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept readable)."""
    import json

    return atomic_write_text(dest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike):
    """Yield a temporary folder beside `dest`; when the block ends without error, rename it to
    `dest` (which must be absent or empty), else remove it. A reader sees no folder or a whole one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; results are meant to be shared
        os.rename(tmp, dest)  # atomic; refuses a dest that exists and is not empty
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
