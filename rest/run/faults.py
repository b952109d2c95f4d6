"""Fault injection for tests: SIGKILL the process at a named point, as a crash would.

Set ``REST_EM_KILL_AT=<point>`` (or ``<point>#<n>`` for its n-th visit) in a phase's environment.
Unset, :func:`kill_point` costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

KILL_ENV = "REST_EM_KILL_AT"
_visits: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """Die here, immediately and without clean-up, when the environment asks for it."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("#")
    if point != name:
        return
    _visits[name] += 1
    if _visits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
