"""The rating log's wire format: the server writes it, the trainer reads it."""

from ratinglog.format import RatingRecord, decode_fields, encode_fields, stream_key

__all__ = ["RatingRecord", "decode_fields", "encode_fields", "stream_key"]
