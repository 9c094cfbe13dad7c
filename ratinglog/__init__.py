"""The rating log: its wire format, reading it, and showing its URL without secrets."""

from ratinglog.format import (
    MalformedEntry,
    RatingRecord,
    decode_fields,
    encode_fields,
    entry_key,
    stream_key,
)
from ratinglog.stream import Entry, Malformed, Page, aread_after, decode_page, read_after, read_all
from ratinglog.urls import redact_url

__all__ = [
    "Entry",
    "Malformed",
    "MalformedEntry",
    "Page",
    "RatingRecord",
    "aread_after",
    "decode_fields",
    "decode_page",
    "encode_fields",
    "entry_key",
    "read_after",
    "read_all",
    "redact_url",
    "stream_key",
]
