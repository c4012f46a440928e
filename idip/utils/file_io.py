"""Atomic file writes: a crash at any moment leaves the old file or the new one, never a torn one.

The content goes to a temporary sibling (``.{name}.tmp.{pid}``), is flushed and fsync'd, and is
renamed over the target with ``os.replace``; the folder is fsync'd so the rename survives a
power cut.
"""

from __future__ import annotations

import io
import os
from typing import Any, Callable

import torch


def temporary_name(path: str) -> str:
    """The temporary sibling :func:`atomic_write` writes ``path`` through."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp.{os.getpid()}")


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Writes ``path`` through ``write(file)``; on any exception ``path`` is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partially written ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
