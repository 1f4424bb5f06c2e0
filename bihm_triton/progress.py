"""Progress bars on a terminal only, everywhere (issue 16): never carriage-return lines in a log file."""

from __future__ import annotations

__all__ = ["bar_disable"]


def bar_disable(progress: bool | None, default: bool = True) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` argument. ``False``: no bar. ``True``, or ``None`` where the
    caller shows a bar by default (``default``): a bar when the output is a terminal — tqdm's
    ``disable=None`` — and none when it goes to a file or a pipe."""
    if progress is False or (progress is None and not default):
        return True
    return None
