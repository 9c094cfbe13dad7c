"""Malformed bytes on the wire: garbage TCP, unparsable request bodies, oversized messages.

Request bodies are sent through ``channel.unary_unary(path, request_serializer=None)``, so the
bytes reach the server unchanged. grpc parses a unary body before the handler runs (left to
itself it answers UNKNOWN "Unexpected DecodeError"); the server registers lenient parsers
that hand the failure to the handler, which answers INVALID_ARGUMENT naming the message
type, as it does for a message in the UpdateRatings stream. Bytes that do parse are requests
like any other and must get the code the oracle gives their parsed form.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import example, given
from hypothesis import strategies as st

from rbmrec.v1 import recommender_pb2 as pb
from tests.harness.server import RunningServer
from tests.property.support import (
    GRPC_MAX_RECEIVE,
    OK,
    PROPERTY,
    Catalogue,
    assert_clear_error,
    assert_healthy,
    code_of,
    predict_code,
    recommend_code,
    rpc_error,
)

SERVICE = "/rbmrec.v1.Recommender/"
UNPARSABLE = {grpc.StatusCode.INVALID_ARGUMENT}
CORRUPT = [b"\xff\xff\xff\xff", b"\x08", b"\x12\x05ab", b"\x0b\x00"]  # bad tag, cut varint, ...


_REQUEST_TYPES: dict[str, type[Message]] = {
    "Recommend": pb.RecommendRequest,
    "PredictRatings": pb.PredictRatingsRequest,
    "GetModelInfo": pb.GetModelInfoRequest,
}


def _expected_code(parsed: Message, catalogue: Catalogue) -> grpc.StatusCode:
    if isinstance(parsed, pb.RecommendRequest):
        return recommend_code(parsed)
    if isinstance(parsed, pb.PredictRatingsRequest):
        return predict_code(parsed, catalogue)
    return OK  # GetModelInfoRequest has no field to get wrong


def _raw_unary(server: RunningServer, method: str) -> Callable[..., bytes]:
    return server.channel.unary_unary(
        SERVICE + method, request_serializer=None, response_deserializer=None
    )


@pytest.mark.parametrize("method", list(_REQUEST_TYPES))
@pytest.mark.parametrize("body", CORRUPT, ids=lambda b: b.hex())
def test_an_unparsable_unary_body_fails_cleanly(
    server: RunningServer, method: str, body: bytes
) -> None:
    request_type = _REQUEST_TYPES[method]
    with pytest.raises(DecodeError):
        request_type.FromString(body)  # the premise: this is not a valid message
    error = rpc_error(_raw_unary(server, method), body, timeout=10)
    assert error is not None and error.code() in UNPARSABLE, error
    assert request_type.DESCRIPTOR.full_name in error.details()


@PROPERTY
@given(method=st.sampled_from(list(_REQUEST_TYPES)), body=st.binary(max_size=48))
@example(method="Recommend", body=b"")  # every field at its default
@example(method="Recommend", body=b"\x08\x01\x12\x05hello")  # n sent with the wrong wire type
@example(method="PredictRatings", body=b"\x08\x01\x12\x02\x01\x02")  # user 1, movies 1 and 2
@example(method="GetModelInfo", body=b"\xf8\x07\x01")  # an unknown field: ignored
def test_any_bytes_get_the_code_of_what_they_parse_to(
    server: RunningServer, catalogue: Catalogue, method: str, body: bytes
) -> None:
    try:
        parsed = _REQUEST_TYPES[method].FromString(body)
    except DecodeError:
        parsed = None
    error = rpc_error(_raw_unary(server, method), body, timeout=30)
    if parsed is None:
        assert error is not None and error.code() in UNPARSABLE, error
        assert error.details()
    else:
        assert code_of(error) == _expected_code(parsed, catalogue), (parsed, error)


def _raw_updates(server: RunningServer, bodies: list[bytes]) -> tuple[list[bytes], grpc.RpcError]:
    call = server.channel.stream_stream(
        SERVICE + "UpdateRatings", request_serializer=None, response_deserializer=None
    )
    acks: list[bytes] = []
    with pytest.raises(grpc.RpcError) as failed:
        acks.extend(call(iter(bodies), timeout=30))
    return acks, failed.value


def test_an_unparsable_update_ends_the_stream_with_invalid_argument(server: RunningServer) -> None:
    good = pb.RatingUpdate(user_id=40_000_100, movie_id=1, rating=4.0).SerializeToString()
    acks, error = _raw_updates(server, [good, CORRUPT[0], good])
    assert [pb.RatingAck.FromString(a).accepted for a in acks] == [True], "one ack, then the end"
    assert_clear_error(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert "update 2 " in error.details()


def test_an_update_over_grpcs_receive_limit_is_resource_exhausted(server: RunningServer) -> None:
    # A RatingUpdate padded with a 5 MB unknown field (number 15, length-delimited).
    padding = b"x" * (5 * 1024 * 1024)
    body = pb.RatingUpdate(user_id=1, movie_id=1, rating=4.0).SerializeToString()
    body += b"\x7a" + _varint(len(padding)) + padding
    assert len(body) > GRPC_MAX_RECEIVE
    acks, error = _raw_updates(server, [body])
    assert acks == []
    assert_clear_error(error, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def test_an_unknown_method_is_unimplemented(server: RunningServer) -> None:
    error = rpc_error(_raw_unary(server, "Nope"), b"", timeout=10)
    assert_clear_error(error, grpc.StatusCode.UNIMPLEMENTED)


# -- raw TCP --------------------------------------------------------------------------------
GARBAGE = {
    "http/1.1": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "zeros": bytes(4096),
    "every byte": bytes(range(256)) * 64,
    "preface then junk": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64,
    "half a preface": b"PRI * HTTP/2.0\r\n",
}


def _address(server: RunningServer) -> tuple[str, int]:
    host, port = server.target.rsplit(":", 1)
    return host, int(port)


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """Read until the peer closes (True) or ``within_s`` passes (False)."""
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


@pytest.mark.parametrize("payload", list(GARBAGE))
def test_garbage_on_the_port_gets_the_connection_closed(
    server: RunningServer, payload: str
) -> None:
    with socket.create_connection(_address(server), timeout=10) as sock:
        sock.sendall(GARBAGE[payload])
        if payload == "half a preface":
            sock.shutdown(socket.SHUT_WR)  # and then nothing more
        assert _closed_by_peer(sock, within_s=10), "the server kept a garbage connection open"


def test_many_open_garbage_connections_do_not_stop_real_calls(server: RunningServer) -> None:
    sockets = [socket.create_connection(_address(server), timeout=10) for _ in range(50)]
    try:
        for sock in sockets:
            sock.sendall(b"\x00" * 100)
        assert_healthy(server)
    finally:
        for sock in sockets:
            sock.close()
