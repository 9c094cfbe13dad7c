"""A file-based model registry: immutable numbered versions, aliases, audit history."""

from registry.errors import ErrorCode, RegistryError
from registry.gate import GatePolicy, check_gate, promote
from registry.names import DEFAULT_MODEL, check_alias, check_model_name
from registry.records import AliasChange, VerifyReport, VersionInfo, VersionMeta
from registry.store import ENV_VAR, FileRegistry, resolve_root

__all__ = [
    "DEFAULT_MODEL",
    "ENV_VAR",
    "AliasChange",
    "ErrorCode",
    "FileRegistry",
    "GatePolicy",
    "RegistryError",
    "VerifyReport",
    "VersionInfo",
    "VersionMeta",
    "check_alias",
    "check_gate",
    "check_model_name",
    "promote",
    "resolve_root",
]
