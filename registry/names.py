"""Validation of model names, aliases and version references.

Names become path components, so they are checked before any path is built:
nothing that passes can contain a separator or be `.`/`..`.
"""

from __future__ import annotations

import re

from registry.errors import ErrorCode, RegistryError

__all__ = [
    "ALIAS_RE",
    "DEFAULT_MODEL",
    "check_alias",
    "check_model_name",
    "check_version",
    "parse_version_ref",
]

DEFAULT_MODEL = "rbm"

# The first character can be neither "." nor "-", which rules out ".", ".." and
# names that look like command-line flags.
_MODEL_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
ALIAS_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_VERSION_RE = re.compile(r"[0-9]{1,18}")


def check_model_name(model: str) -> str:
    """Return `model` if it is a valid model name, else raise INVALID_ARGUMENT."""
    # fullmatch, not match with "$": "$" would accept a trailing newline.
    if not isinstance(model, str) or not _MODEL_RE.fullmatch(model):
        raise RegistryError(
            f"invalid model name {model!r}: use 1-64 characters from [a-z0-9_.-], "
            "starting with a letter or digit",
            ErrorCode.INVALID_ARGUMENT,
        )
    return model


def check_alias(alias: str) -> str:
    """Return `alias` if it is a valid alias name, else raise INVALID_ARGUMENT."""
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise RegistryError(
            f"invalid alias {alias!r}: use 1-32 characters from [a-z0-9-], starting with a letter",
            ErrorCode.INVALID_ARGUMENT,
        )
    return alias


def check_version(version: int) -> int:
    """Return `version` if it is a positive integer, else raise INVALID_ARGUMENT."""
    # bool is an int subclass; True must not mean version 1.
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(
            f"invalid version {version!r}: versions are integers >= 1",
            ErrorCode.INVALID_ARGUMENT,
        )
    return version


def parse_version_ref(ref: str) -> int | str:
    """Split a reference into a version number ("3") or a checked alias ("production")."""
    ref = ref.strip()
    if _VERSION_RE.fullmatch(ref):
        return check_version(int(ref))
    try:
        return check_alias(ref)
    except RegistryError:
        raise RegistryError(
            f"invalid version reference {ref!r}: give a version number or an alias name",
            ErrorCode.INVALID_ARGUMENT,
        ) from None
