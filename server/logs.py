"""Log set-up for rbm-serve: readable text, or one JSON object per line for log collectors."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["JsonFormatter", "configure_logging", "redact_url"]

# Query parameters whose value is a secret: redis-py takes ?password=... as well as user:pass@.
_SECRET_PARAMS = ("pass", "secret", "token", "auth")


class JsonFormatter(logging.Formatter):
    """Formats a record as {"time", "level", "logger", "message"[, "exc"]}."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str) -> None:
    """Send logs to stderr at ``level`` as ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def redact_url(url: str) -> str:
    """``url`` with its password, and any secret-looking query value, replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a bad IPv6 literal: too odd to take apart safely
        return "<unparseable URL>"
    if "@" in parts.path + parts.query + parts.fragment:
        # An unescaped / ? or # in a password ends the host part early: drop all before the
        # last @ rather than trust the split (over-redacting a stray @ costs nothing).
        return redact_url(f"{parts.scheme}://***@{url.rpartition('@')[2]}")
    userinfo, at, netloc = parts.netloc.rpartition("@")
    if at:
        # user:secret@ -> user:***@; a lone name may be the secret itself (redis://secret@).
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{netloc}" if colon else f"***@{netloc}"
    query = _redact_query(parts.query)
    if not at and query == parts.query:
        return url
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{'?' if query else ''}{query}{fragment}"


def _redact_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    secret = [any(word in k.lower() for word in _SECRET_PARAMS) for k, _ in pairs]
    if not any(secret):
        return query  # untouched, so that the log shows exactly what was configured
    redacted = [(k, "***" if s else v) for (k, v), s in zip(pairs, secret, strict=True)]
    return urlencode(redacted, safe="/*:")
