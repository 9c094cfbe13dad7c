"""The rating log: its wire format, reading it, its archive and retention, showing its URL
without secrets, and the online evaluation that joins it with the impression stream."""

from ratinglog.archive import ArchiveCorrupt, RatingArchive, Segment
from ratinglog.format import (
    MalformedEntry,
    RatingRecord,
    decode_fields,
    encode_fields,
    entry_key,
    stream_key,
)
from ratinglog.impressions import Impression, decode_impression, encode_impression, impressions_key
from ratinglog.online import (
    Outcomes,
    Skipped,
    Verdict,
    VersionFigures,
    compare,
    compare_versions,
    online_figures,
    outcomes,
    read_outcomes,
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
    "Impression",
    "Malformed",
    "MalformedEntry",
    "Outcomes",
    "Page",
    "RatingArchive",
    "RatingRecord",
    "Segment",
    "Skipped",
    "StreamStatus",
    "TrimResult",
    "Verdict",
    "VersionFigures",
    "absorbed_until",
    "aread_after",
    "compare",
    "compare_versions",
    "decode_fields",
    "decode_impression",
    "decode_page",
    "encode_fields",
    "encode_impression",
    "entry_key",
    "impressions_key",
    "next_id",
    "online_figures",
    "outcomes",
    "read_after",
    "read_all",
    "read_full_log",
    "read_outcomes",
    "redact_url",
    "stream_key",
    "stream_status",
    "trim",
]
