"""A training run's OUTPUT_DIR: created with clear errors, held by one run, never silently reused.

- :class:`RunLock` — rank 0 holds an exclusive ``flock`` on ``OUTPUT_DIR/.train.lock`` for the
  run (the file names the holder's pid and host). A second run into the same folder stops at
  once, naming the holder, instead of interleaving checkpoints and ``metrics.json``. The kernel
  releases the lock when the holder exits, crash included, so a stale lock file never blocks.
- :func:`check_fresh_start` — a run without ``--resume`` into a folder that holds a previous
  run's ``last_checkpoint`` would overwrite its checkpoints and append a second history to
  ``metrics.json``: refused, naming both ways out; with ``--start-over`` the previous run's files
  are moved aside into ``replaced_run_<time>/`` (nothing is deleted).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import shutil
import socket

from .checkpoint import LAST_CHECKPOINT, CheckpointError

LOCK_FILE = ".train.lock"
# What a finished or interrupted run leaves in OUTPUT_DIR (moved aside by --start-over).
_RUN_FILES = ("last_checkpoint", "metrics.json", "log.txt", "config.yaml")
_RUN_PREFIXES = ("model_", "events.out.tfevents.", "coco_")


class RunDirectoryError(CheckpointError):
    """OUTPUT_DIR cannot be used for this run (a user error: one line, exit 2)."""


def make_output_dir(output_dir: str) -> None:
    """Creates OUTPUT_DIR, or says in one line why it cannot be created or written."""
    try:
        os.makedirs(output_dir, exist_ok=True)
    except FileExistsError:
        raise RunDirectoryError(f"OUTPUT_DIR '{output_dir}' exists and is not a folder") from None
    except OSError as err:
        raise RunDirectoryError(
            f"OUTPUT_DIR '{output_dir}' cannot be created: {err.strerror}"
        ) from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"OUTPUT_DIR '{output_dir}' cannot be written (permission denied)")


class RunLock:
    """An exclusive lock on OUTPUT_DIR for the lifetime of one training run (rank 0).

    The lock file is removed on release (while still locked); a run that opened it just before
    holds a removed file, which it detects (another inode at the path) and opens again.
    """

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._fd: int | None = None
        for _ in range(10):
            fd = self._open(output_dir)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_holder(fd)
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunDirectoryError(
                        f"OUTPUT_DIR '{output_dir}' is in use by another training run ({holder}); "
                        "wait for it to finish, or choose another OUTPUT_DIR"
                    ) from None
                raise RunDirectoryError(
                    f"OUTPUT_DIR '{output_dir}' cannot be locked: {err.strerror}"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and our lock: again
        else:
            raise RunDirectoryError(f"OUTPUT_DIR '{output_dir}': could not take {LOCK_FILE}")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    @staticmethod
    def _open(output_dir: str) -> int:
        try:
            return os.open(os.path.join(output_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirectoryError(
                f"OUTPUT_DIR '{output_dir}' cannot be written: {err.strerror}"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __del__(self):
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


def check_fresh_start(output_dir: str, start_over: bool) -> str | None:
    """For a run that does not resume: refuse a folder holding a previous run, or move that
    run's files aside with ``start_over``. Returns what was done, for the log."""
    if not os.path.isfile(os.path.join(output_dir, LAST_CHECKPOINT)):
        return None
    if not start_over:
        raise RunDirectoryError(
            f"OUTPUT_DIR '{output_dir}' holds a previous run (last_checkpoint): add --resume to "
            "continue it, or --start-over to train from scratch there (its files are moved to "
            "replaced_run_<time>/), or choose another OUTPUT_DIR"
        )
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = os.path.join(output_dir, f"replaced_run_{stamp}")
    os.makedirs(target, exist_ok=True)
    moved = 0
    for name in sorted(os.listdir(output_dir)):
        if name in _RUN_FILES or name.startswith(_RUN_PREFIXES):
            shutil.move(os.path.join(output_dir, name), os.path.join(target, name))
            moved += 1
    return f"--start-over: moved {moved} files of the previous run to {target}"
