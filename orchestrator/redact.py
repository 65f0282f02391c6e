"""Keep secrets out of MLflow and logs: pure, no Ray, no MLflow."""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
SECRET_KEY = re.compile(r"(token|secret|passw(or)?d|api[_-]?key|access[_-]?key|credential|auth)", re.IGNORECASE)
URI_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``postgresql://user:pass@host`` -> ``postgresql://user:***@host``."""
    return URI_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def redact(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with secret-looking keys masked and URI passwords removed."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, key) for v in value)
    if isinstance(value, str):
        return MASK if key and SECRET_KEY.search(key.rsplit(".", 1)[-1]) and value else redact_text(value)
    return value


class _Redacting(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (masked := redact_text(message)) != message:
            record.msg, record.args = masked, ()
        return True


def redact_logs(name: str) -> None:
    """URI passwords masked in what another library logs under ``name`` (MLflow's system
    metrics thread puts the tracking URI in its warnings): on the logger and on its
    handlers, which also see its children's records."""
    logger = logging.getLogger(name)
    for target in (logger, *logger.handlers):
        if not any(isinstance(f, _Redacting) for f in target.filters):
            target.addFilter(_Redacting())
