"""The rating log's entry format, malformed entries, and URLs shown without secrets."""

from __future__ import annotations

import pytest

from ratinglog import (
    Malformed,
    MalformedEntry,
    RatingRecord,
    decode_fields,
    decode_page,
    encode_fields,
    entry_key,
    redact_url,
    stream_key,
)

GOOD = {b"user": b"7", b"movie": b"42", b"rating": b"4.5", b"ts": b"1700000000"}


def _as_redis_returns(fields: dict[str, str | int]) -> dict[bytes, bytes]:
    return {k.encode(): str(v).encode() for k, v in fields.items()}


def test_the_stream_key_is_the_prefix_and_ratings() -> None:
    assert stream_key("rbmrec") == "rbmrec:ratings"


def test_a_good_entry_decodes() -> None:
    assert decode_fields(GOOD) == RatingRecord(7, 42, 4.5, 1_700_000_000)


def test_an_encoded_record_decodes_to_itself() -> None:
    record = RatingRecord(-3, 2**63 - 1, 0.1 + 0.2, 0)  # repr keeps the float exact
    assert decode_fields(_as_redis_returns(encode_fields(record))) == record


def test_the_field_names_are_those_stored_in_redis() -> None:
    assert set(encode_fields(RatingRecord(1, 2, 3.0, 4))) == {"user", "movie", "rating", "ts"}


def test_extra_fields_are_ignored() -> None:
    assert decode_fields(GOOD | {b"source": b"import"}) == decode_fields(GOOD)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({b"user": None}, "field 'user' is missing"),
        ({b"movie": None}, "field 'movie' is missing"),
        ({b"rating": None}, "field 'rating' is missing"),
        ({b"ts": None}, "field 'ts' is missing"),
        ({b"movie": b"x"}, "field 'movie' is not an integer: b'x'"),
        ({b"user": b"4.0"}, "field 'user' is not an integer: b'4.0'"),
        ({b"ts": b""}, "field 'ts' is not an integer: b''"),
        ({b"rating": b"four"}, "field 'rating' is not a number: b'four'"),
        ({b"user": str(2**63).encode()}, "field 'user' is out of the int64 range"),
        ({b"ts": str(-(2**63) - 1).encode()}, "field 'ts' is out of the int64 range"),
        ({b"movie": b"9" * 100}, "field 'movie' is out of the int64 range"),
        ({b"movie": b"x" * 100}, f"field 'movie' is not an integer: {b'x' * 40!r}"),
    ],
)
def test_each_kind_of_malformed_entry_says_why(
    change: dict[bytes, bytes | None], reason: str
) -> None:
    fields = {k: v for k, v in (GOOD | change).items() if v is not None}
    with pytest.raises(MalformedEntry) as err:
        decode_fields(fields)
    assert str(err.value) == reason


def test_an_off_scale_rating_is_not_malformed() -> None:
    # The trainer counts NaN, inf and 4.5 on a whole-star scale as off the scale instead.
    for value in (b"nan", b"inf", b"-1e400"):
        decode_fields(GOOD | {b"rating": value})


def test_a_page_sets_malformed_entries_aside_and_ends_at_the_last_entry_read() -> None:
    page = decode_page(
        [
            (b"1-0", GOOD),
            (b"1-1", {b"hello": b"world"}),
            (b"2-0", GOOD | {b"user": b"8"}),
            (b"3-0", GOOD | {b"movie": b"x"}),
        ]
    )
    assert [entry_id for entry_id, _ in page.entries] == ["1-0", "2-0"]
    assert page.entries[1][1].user_id == 8
    assert page.malformed == [
        Malformed("1-1", "field 'user' is missing"),
        Malformed("3-0", "field 'movie' is not an integer: b'x'"),
    ]
    assert page.last_id == "3-0" and page.size == 4


def test_an_empty_page() -> None:
    page = decode_page([])
    assert page.entries == [] and page.malformed == [] and page.last_id is None
    assert page.size == 0


def test_entry_ids_sort_in_stream_order() -> None:
    ids = ["10-0", "9-5", "9-10", "0-0", "9"]
    assert sorted(ids, key=entry_key) == ["0-0", "9", "9-5", "9-10", "10-0"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (
            "rediss://h:6380/0?ssl_ca_certs=/etc/ca.pem",
            "rediss://h:6380/0?ssl_ca_certs=/etc/ca.pem",
        ),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
        ("redis://:s3cr3t@h", "redis://:***@h"),
        ("redis://:s3cr3t@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://alice:s3cr3t@h:1/0", "redis://alice:***@h:1/0"),
        ("redis://alice:s3cr3t@h/0", "redis://alice:***@h/0"),
        ("redis://s3cr3t@h/0", "redis://***@h/0"),  # a lone name may be the password
        ("redis://:s3%40cr3t@h/0", "redis://:***@h/0"),
        (
            "rediss://:s3cr3t@h:6380/0?ssl_ca_certs=/etc/ca.pem",
            "rediss://:***@h:6380/0?ssl_ca_certs=/etc/ca.pem",
        ),
        ("rediss://alice:s3cr3t@h:6380/1", "rediss://alice:***@h:6380/1"),
        ("redis://h/0?password=s3cr3t", "redis://h/0?password=***"),
        ("redis://h/0?db=1&password=s3cr3t", "redis://h/0?db=1&password=***"),
        ("redis://h/0?db=1;password=s3cr3t", "redis://h/0?db=1;password=***"),
        ("redis://h/0?PassWord=s3cr3t&db=1", "redis://h/0?PassWord=***&db=1"),
        ("redis://h/0?pass%77ord=s3cr3t", "redis://h/0?pass%77ord=***"),
        ("rediss://h/0?ssl_password=s3cr3t", "rediss://h/0?ssl_password=***"),
        ("redis://h/0?token=s3cr3t&auth=s3cr3t", "redis://h/0?token=***&auth=***"),
        ("redis://u:s3cr3t@h/0?password=s3cr3t", "redis://u:***@h/0?password=***"),
        ("redis://:s3@cr3t@h/0", "redis://:***@h/0"),
        ("redis://:s3/cr3t@h/0", "redis://***@h/0"),
        ("redis://:s3?cr3t@h/0", "redis://***@h/0"),
        ("redis://:s3#cr3t@h/0", "redis://***@h/0"),
        ("unix:///run/redis.sock?password=s3cr3t", "unix:///run/redis.sock?password=***"),
        ("redis://:s3cr3t@[::1/0", "<unparseable URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "cr3t" not in redact_url(url)


def test_the_server_shows_urls_the_same_way() -> None:
    from server.logs import redact_url as servers

    assert servers is redact_url
