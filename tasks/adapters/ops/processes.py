"""Which process owns something, and whether it still runs: recorded by whoever takes a slot or
opens a tracked run, checked by whoever finds it left behind."""
from __future__ import annotations

import os
import socket


def this_process() -> dict[str, str]:
    """Host, pid and start time of this process (the start time tells a reused pid apart)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "started": str(_started(os.getpid()))}


def _started(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def is_gone(owner: dict[str, str]) -> bool:
    """True when `owner` (from `this_process`) ran on this host and has ended. A process of
    another host is never judged gone: only its own lease can say."""
    import psutil

    if owner.get("host") != socket.gethostname() or not owner.get("pid"):
        return False
    try:
        started = owner.get("started")
        return bool(started) and abs(_started(int(owner["pid"])) - float(started)) >= 1.0
    except psutil.AccessDenied:  # someone else's process: alive, and not ours to judge
        return False
    except (psutil.NoSuchProcess, ValueError):  # gone (a zombie counts as gone)
        return True
