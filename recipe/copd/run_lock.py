"""One run per output folder: ``trainer.default_local_dir/copd.lock`` holds the owner's pid, host and start time.

A second run on the same folder refuses to start while the owner lives; a lock whose owner is dead (same host,
the pid gone or reused by another process) is taken over, and the takeover is said. A lock from another host
cannot be checked from here: the run refuses and names the file to remove.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass

LOCK_NAME = "copd.lock"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_alive(owner: dict) -> bool:
    """Whether the lock's owner (same host) still runs: the pid exists and started when the lock says."""
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except (OverflowError, ValueError):
        return False
    started = owner.get("proc_start")
    return started is None or _start_time(pid) in (None, started)


@dataclass
class RunLock:
    path: str
    owned: bool = True

    @classmethod
    def acquire(cls, out_dir: str) -> RunLock:
        """Take ``out_dir``'s lock, or raise ValueError (one line) naming the live owner."""
        out_dir = os.path.abspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, LOCK_NAME)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "proc_start": _start_time(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read(path)
                if owner is None:  # gone meanwhile, or garbage: treat as a dead owner's
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
                    continue
                if owner.get("host") != me["host"]:
                    raise ValueError(
                        f"trainer.default_local_dir={out_dir} is locked by pid {owner.get('pid')} on host "
                        f"{owner.get('host')} (since {owner.get('started')}); if that run is dead, remove {path}"
                    ) from None
                if owner_alive(owner):
                    raise ValueError(
                        f"trainer.default_local_dir={out_dir} is in use by a running copd run (pid {owner['pid']} "
                        f"on {owner['host']}, since {owner.get('started')}); wait for it or use another folder"
                    ) from None
                print(f"[copd] taking over {path}: its run (pid {owner.get('pid')}) is dead", flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return cls(path)
        raise ValueError(f"could not take the lock {path}: another run is starting on the same folder")

    def release(self) -> None:
        """Remove the lock if this process still owns it."""
        if self.owned:
            owner = _read(self.path)
            if owner is not None and owner.get("pid") == os.getpid():
                os.remove(self.path)
            self.owned = False


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
