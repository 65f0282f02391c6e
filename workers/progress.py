"""Progress with rate and ETA for the long steps before the first trial (the embedded
model's build, tokenization, the reference pass): a live bar on a terminal, a log line
every 30 s elsewhere (a Ray task's log, a file, CI). A step shorter than that shows none:
the line after it says how long it took."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("rightsweep.progress")
LOG_EVERY_S = 30


class _LogLines:
    """A file for tqdm that logs each refresh as a line: in a Ray task's log or a file, a
    bar redrawn with carriage returns becomes one endless line."""

    def write(self, text: str) -> None:
        if text := text.strip("\r\n "):
            log.info("%s", text)

    def flush(self) -> None:
        pass


def progress_bar(total: int, label: str, unit: str, show: bool = True):
    from tqdm import tqdm

    if not show:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=label, unit=unit, delay=1)
    return tqdm(total=total, desc=label, unit=unit, file=_LogLines(), mininterval=LOG_EVERY_S, delay=LOG_EVERY_S, ascii=True)
