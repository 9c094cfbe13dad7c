"""TLS credentials for the gRPC port and for ``rbm-client``, read from PEM files.

Every file is read and parsed before the server binds, so a missing file, a key that does
not match its certificate or a CA file with no certificate is a one-line error at start-up
rather than a failed handshake per call. Errors name the file, never its content.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

__all__ = ["channel_credentials", "check_pair", "server_credentials"]


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def _no_password() -> bytes:
    # gRPC cannot use an encrypted key; without this, OpenSSL would prompt on the terminal.
    raise ValueError("the TLS key is encrypted; give an unencrypted PEM key")


def check_pair(cert: str | None, key: str | None, flags: str = "--tls-cert/--tls-key") -> None:
    """Raise ValueError unless both or neither of ``cert`` and ``key`` are given."""
    if bool(cert) != bool(key):
        raise ValueError(f"{flags} must be given together")


def _load_pair(cert: str, key: str) -> tuple[bytes, bytes]:
    pair = _read(cert, "TLS certificate"), _read(key, "TLS key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(
            f"{cert} and {key} are not a PEM certificate and its matching unencrypted key: {exc}"
        ) from exc
    return pair


def _load_ca(path: str, what: str) -> bytes:
    data = _read(path, what)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(f"the {what} {path} holds no PEM certificate: {exc}") from exc
    return data


def server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    """Server TLS; with ``client_ca``, mutual TLS requiring a client certificate it signed."""
    chain, private_key = _load_pair(cert, key)
    roots = _load_ca(client_ca, "client CA file") if client_ca else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def channel_credentials(
    ca: str | None, cert: str | None, key: str | None
) -> grpc.ChannelCredentials:
    """TLS for a client: trust ``ca`` (else the system roots); present ``cert``/``key`` if given."""
    check_pair(cert, key, "--tls-cert/--tls-key")
    roots = _load_ca(ca, "CA file") if ca else None
    private_key, chain = None, None
    if cert and key:
        chain, private_key = _load_pair(cert, key)
    return grpc.ssl_channel_credentials(roots, private_key, chain)
