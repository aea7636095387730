"""Progress bars (tqdm), drawn only on an interactive terminal outside CI unless asked. No torch here."""

from __future__ import annotations

import os
import sys
from typing import Any


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a progress bar: as asked, else only on an interactive terminal outside CI."""
    if progress is not None:
        return progress
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(total: int, desc: str, progress: bool | None) -> Any:
    """A tqdm bar over ``total`` images (a disabled one, which draws nothing, in CI / non-TTY)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not show_progress(progress), leave=False)
