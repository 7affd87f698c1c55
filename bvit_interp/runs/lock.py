"""One writer per run directory: an exclusive ``fcntl.flock`` on ``<run>/.lock``, held for the run's life.

The holder writes its pid, host, command line and start time into the lock file, so a second writer's
error names who holds it. The kernel drops the lock when the holder exits, however it exits, so a stale
lock file never blocks a later run.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import IO, Any

LOCK_NAME = ".lock"


class RunLockedError(FileExistsError):
    """Another process (or another ``Run`` of this one) is writing this run directory."""


class RunLock:
    """An exclusive lock on one run directory; ``release()`` (or the process ending) lets go."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle: IO[str] | None = handle

    @classmethod
    def acquire(cls, directory: str | os.PathLike[str]) -> RunLock:
        """Lock ``directory`` (which must exist) or raise ``RunLockedError`` naming the holder."""
        path = Path(directory) / LOCK_NAME
        handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's life; "a+" keeps the holder's record
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise RunLockedError(
                f"{directory} is in use by another run ({holder}); wait for it to finish or stop it, "
                "or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder_record()) + "\n")
        handle.flush()
        return cls(path, handle)

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        """Let go of the lock (idempotent); the lock file stays for the next holder."""
        if self._handle is not None:
            try:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            finally:
                self._handle.close()
                self._handle = None

    def __del__(self) -> None:
        self.release()


def holder_record() -> dict[str, Any]:
    """What a lock file says about its holder: pid, host, command line, start time."""
    return {"pid": os.getpid(), "host": platform.node(), "command": " ".join(sys.argv),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _describe(text: str) -> str:
    """'pid 123 on host, started ..., command ...' from a lock file's record."""
    try:
        rec = json.loads(text)
        return (f"pid {rec['pid']} on {rec['host']}, started {rec['started_at']}, "
                f"command: {rec['command']}")
    except (ValueError, KeyError, TypeError):
        return "holder not recorded yet"
