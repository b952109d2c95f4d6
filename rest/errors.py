"""The base of every error rest-em reports as one clear message (the CLI and a phase's process catch it)."""
from __future__ import annotations


class RestError(Exception):
    """A problem the user can act on (bad recipe or data, a locked run directory, a failed phase, ...): its
    message names the problem; the CLI prints it without a traceback and exits non-zero."""
