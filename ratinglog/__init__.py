"""The rating log: its wire format, reading it, its archive and retention, and showing its URL
without secrets."""

from ratinglog.archive import ArchiveCorrupt, RatingArchive, Segment
from ratinglog.format import (
    MalformedEntry,
    RatingRecord,
    decode_fields,
    encode_fields,
    entry_key,
    stream_key,
)
from ratinglog.retention import (
    StreamStatus,
    TrimResult,
    absorbed_until,
    next_id,
    read_full_log,
    stream_status,
    trim,
)
from ratinglog.stream import Entry, Malformed, Page, aread_after, decode_page, read_after, read_all
from ratinglog.urls import redact_url

__all__ = [
    "ArchiveCorrupt",
    "Entry",
    "Malformed",
    "MalformedEntry",
    "Page",
    "RatingArchive",
    "RatingRecord",
    "Segment",
    "StreamStatus",
    "TrimResult",
    "absorbed_until",
    "aread_after",
    "decode_fields",
    "decode_page",
    "encode_fields",
    "entry_key",
    "next_id",
    "read_after",
    "read_all",
    "read_full_log",
    "redact_url",
    "stream_key",
    "stream_status",
    "trim",
]
