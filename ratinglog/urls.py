"""Redis URLs as messages and logs may show them: every secret replaced by ``***``."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit

__all__ = ["redact_url"]

# Query parameters whose value is a secret: redis-py takes ?password=... as well as user:pass@.
_SECRET_PARAMS = ("pass", "secret", "token", "auth")


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
        return url  # untouched, so that the log shows exactly what was configured
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{'?' if query else ''}{query}{fragment}"


def _redact_query(query: str) -> str:
    # Split on ; as well as &: a secret after a ; is no less a secret for redis-py not
    # reading it. Pairs are edited in place, so the rest shows exactly as configured.
    return "".join(_redact_pair(segment) for segment in re.split(r"([&;])", query))


def _redact_pair(segment: str) -> str:
    key, eq, _ = segment.partition("=")
    secret = bool(eq) and any(word in unquote_plus(key).lower() for word in _SECRET_PARAMS)
    return f"{key}=***" if secret else segment
