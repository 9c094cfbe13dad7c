"""Names become paths, so bad ones must be refused before any file is touched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from registry import ErrorCode, FileRegistry, RegistryError, VersionInfo, VersionMeta
from registry.names import parse_version_ref

BAD_MODELS = ["../x", "a/b", "..", ".", "", "/etc", "Rbm", "-rf", ".hidden", "x\n", "a" * 65, "a b"]
BAD_ALIASES = ["Prod", "1abc", "a" * 33, "", "a/b", "../x", "..", "prod\n", "-x", "prod_1"]

MakeVersion = Callable[..., VersionInfo]  # the make_version fixture, see conftest.py


@pytest.mark.parametrize("model", BAD_MODELS)
def test_bad_model_names_are_refused(
    reg: FileRegistry, root: Path, tmp_path: Path, model: str
) -> None:
    calls: list[Callable[[], object]] = [
        lambda: reg.register(model, lambda d: None, VersionMeta()),
        lambda: reg.list_versions(model),
        lambda: reg.get_version(model, 1),
        lambda: reg.set_alias(model, "production", 1),
        lambda: reg.gc(model, keep=1),
    ]
    for call in calls:
        with pytest.raises(RegistryError, match="invalid model name") as exc:
            call()
        assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("alias", BAD_ALIASES)
def test_bad_aliases_are_refused(
    reg: FileRegistry, make_version: MakeVersion, root: Path, alias: str
) -> None:
    make_version()
    for call in (
        lambda: reg.set_alias("rbm", alias, 1),
        lambda: reg.get_alias("rbm", alias),
        lambda: reg.delete_alias("rbm", alias),
        lambda: reg.rollback("rbm", alias),
    ):
        with pytest.raises(RegistryError, match="invalid alias") as exc:
            call()
        assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert list((root / "rbm" / "aliases").iterdir()) == []
    assert reg.history("rbm") == []


@pytest.mark.parametrize("good", ["rbm", "rbm-v2", "movielens_1m.rbm", "0", "a" * 64])
def test_good_model_names_are_accepted(reg: FileRegistry, good: str) -> None:
    assert reg.register(good, lambda d: None, VersionMeta()).version == 1


@pytest.mark.parametrize("alias", ["production", "a", "canary-2", "a" * 32])
def test_good_aliases_are_accepted(
    reg: FileRegistry, make_version: MakeVersion, alias: str
) -> None:
    make_version()
    reg.set_alias("rbm", alias, 1)
    assert reg.aliases("rbm") == {alias: 1}


@pytest.mark.parametrize(
    ("ref", "expected"), [("3", 3), (" 12 ", 12), ("production", "production")]
)
def test_version_refs(ref: str, expected: int | str) -> None:
    assert parse_version_ref(ref) == expected


@pytest.mark.parametrize("ref", ["0", "-1", "v_3", "Prod", "../x", "", "3.0"])
def test_bad_version_refs(ref: str) -> None:
    with pytest.raises(RegistryError) as exc:
        parse_version_ref(ref)
    assert exc.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("version", [0, -1, True])
def test_bad_version_numbers(reg: FileRegistry, make_version: MakeVersion, version: int) -> None:
    make_version()
    with pytest.raises(RegistryError) as exc:
        reg.get_version("rbm", version)
    assert exc.value.code is ErrorCode.INVALID_ARGUMENT
