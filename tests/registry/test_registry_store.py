"""FileRegistry on real files: publish, read back, verify, aliases, history, gc, failures."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from registry import (
    AliasChange,
    ErrorCode,
    FileRegistry,
    RegistryError,
    VersionInfo,
    VersionMeta,
    resolve_root,
)

MakeVersion = Callable[..., VersionInfo]  # the make_version fixture, see conftest.py
Tamper = Callable[[Path, bytes], None]  # the tamper fixture


def _code(exc: pytest.ExceptionInfo[RegistryError]) -> ErrorCode:
    return exc.value.code


def test_register_writes_files_meta_and_manifest(reg: FileRegistry, root: Path) -> None:
    def write(directory: Path) -> None:
        (directory / "weights.bin").write_bytes(b"\x00\x01" * 1000)
        (directory / "sub").mkdir()
        (directory / "sub" / "config.json").write_text("{}")

    meta = VersionMeta(
        metrics={"val_rmse": 0.91, "epochs": 3},
        params={"hidden": 128, "layers": [1, 2]},
        data_fingerprint="sha256:abc",
        library_versions={"torch": "2.13.0"},
        description="first",
    )
    info = reg.register("rbm", write, meta)

    assert info.version == 1
    assert info.path == root / "rbm" / "versions" / "1"
    assert sorted(info.files) == ["meta.json", "sub/config.json", "weights.bin"]
    assert all(len(digest) == 64 for digest in info.files.values())
    stored = json.loads((info.path / "meta.json").read_text())
    assert stored["metrics"] == {"val_rmse": 0.91, "epochs": 3.0}
    assert stored["params"] == {"hidden": 128, "layers": [1, 2]}
    assert stored["parent_version"] is None
    created = dt.datetime.fromisoformat(stored["created_at"])
    assert created.utcoffset() == dt.timedelta(0)
    manifest = json.loads((info.path / "MANIFEST.json").read_text())
    assert manifest["files"] == info.files
    assert reg.get_version("rbm", 1) == info
    assert reg.verify("rbm", 1).ok
    assert not any((root / "rbm" / ".staging").iterdir())  # nothing left behind


def test_versions_are_listed_ascending_with_aliases(
    reg: FileRegistry, make_version: MakeVersion
) -> None:
    for _ in range(3):
        make_version()
    make_version(model="other")
    reg.set_alias("rbm", "production", 2)
    reg.set_alias("rbm", "canary", 2)

    assert [info.version for info in reg.list_versions("rbm")] == [1, 2, 3]
    assert reg.get_version("rbm", 2).aliases == ("canary", "production")
    assert reg.list_models() == ["other", "rbm"]
    assert reg.aliases("rbm") == {"canary": 2, "production": 2}
    assert reg.resolve("rbm", "production").version == 2
    assert reg.resolve("rbm", "3").version == 3
    assert reg.get_alias("rbm", "staging") is None


def test_missing_things_are_not_found(reg: FileRegistry, make_version: MakeVersion) -> None:
    with pytest.raises(RegistryError, match="does not exist") as exc:
        reg.list_models()
    assert _code(exc) is ErrorCode.NOT_FOUND
    make_version()
    for call in (
        lambda: reg.list_versions("nope"),
        lambda: reg.get_version("rbm", 9),
        lambda: reg.resolve("rbm", "production"),
        lambda: reg.verify("rbm", 9),
        lambda: reg.set_alias("rbm", "production", 9),
        lambda: reg.delete_alias("rbm", "production"),
    ):
        with pytest.raises(RegistryError) as exc:
            call()
        assert _code(exc) is ErrorCode.NOT_FOUND


def test_metadata_is_validated_before_anything_is_written(reg: FileRegistry, root: Path) -> None:
    for bad in ({"rmse": float("nan")}, {"rmse": True}, {"rmse": "0.9"}):
        with pytest.raises(RegistryError) as exc:
            VersionMeta(metrics=bad)  # type: ignore[arg-type]
        assert _code(exc) is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(RegistryError) as exc:
        reg.register("rbm", lambda d: None, VersionMeta(params={"f": object()}))
    assert _code(exc) is ErrorCode.INVALID_ARGUMENT
    assert not root.exists()


@pytest.mark.parametrize("name", ["meta.json", "MANIFEST.json"])
def test_caller_cannot_write_reserved_files(reg: FileRegistry, name: str) -> None:
    def write(directory: Path) -> None:
        (directory / name).write_text("{}")

    with pytest.raises(RegistryError) as exc:
        reg.register("rbm", write, VersionMeta())
    assert _code(exc) is ErrorCode.ALREADY_EXISTS
    assert reg.list_versions("rbm") == []


def test_symlinks_are_refused(reg: FileRegistry, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("outside")
    with pytest.raises(RegistryError, match="regular files") as exc:
        reg.register("rbm", lambda d: (d / "link").symlink_to(secret), VersionMeta())
    assert _code(exc) is ErrorCode.INVALID_ARGUMENT
    assert reg.list_versions("rbm") == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_errors_leave_no_version_and_no_alias_move(
    reg: FileRegistry, make_version: MakeVersion, root: Path, code: int
) -> None:
    make_version()
    reg.set_alias("rbm", "production", 1)

    def write(directory: Path) -> None:
        (directory / "weights.bin").write_bytes(b"half a model")
        raise OSError(code, os.strerror(code))

    with pytest.raises(RegistryError) as exc:
        reg.register("rbm", write, VersionMeta())
    assert _code(exc) is ErrorCode.IO_ERROR
    assert errno.errorcode[code] in exc.value.message
    assert [info.version for info in reg.list_versions("rbm")] == [1]
    assert reg.get_alias("rbm", "production") == 1
    assert list((root / "rbm" / ".staging").iterdir()) == []
    assert make_version().version == 2


def test_verify_reports_changed_missing_and_extra_files(
    reg: FileRegistry, make_version: MakeVersion, tamper: Tamper
) -> None:
    info = make_version()
    tamper(info.path / "weights.bin", b"tampered")
    (info.path / "config.json").unlink()
    (info.path / "notes.txt").write_text("added later")

    report = reg.verify("rbm", info.version)
    assert not report.ok
    assert report.mismatched == ("weights.bin",)
    assert report.missing == ("config.json",)
    assert report.extra == ("notes.txt",)
    assert "weights.bin" in report.summary()


def test_verify_catches_edited_metrics(
    reg: FileRegistry, make_version: MakeVersion, tamper: Tamper
) -> None:
    info = make_version(rmse=0.99)
    meta_path = info.path / "meta.json"
    tamper(meta_path, meta_path.read_bytes().replace(b"0.99", b"0.5"))
    assert reg.verify("rbm", info.version).mismatched == ("meta.json",)


def test_verify_reports_a_missing_manifest(reg: FileRegistry, make_version: MakeVersion) -> None:
    info = make_version()
    (info.path / "MANIFEST.json").unlink()
    report = reg.verify("rbm", info.version)
    assert not report.ok
    assert "MANIFEST.json is missing" in report.error


def test_corrupt_files_raise_corrupt_not_a_crash(
    reg: FileRegistry, make_version: MakeVersion, root: Path, tamper: Tamper
) -> None:
    info = make_version()
    tamper(info.path / "meta.json", b"{not json")
    with pytest.raises(RegistryError) as exc:
        reg.list_versions("rbm")
    assert _code(exc) is ErrorCode.CORRUPT
    (root / "rbm" / "aliases" / "production").write_text("banana")
    with pytest.raises(RegistryError) as exc:
        reg.get_alias("rbm", "production")
    assert _code(exc) is ErrorCode.CORRUPT


def test_alias_moves_are_recorded_and_rolled_back(
    reg: FileRegistry, make_version: MakeVersion
) -> None:
    for _ in range(3):
        make_version()
    reg.set_alias("rbm", "production", 1, reason="first release")
    reg.set_alias("rbm", "production", 2, reason="better ndcg")
    change = reg.rollback("rbm", reason="latency spike")

    assert change.from_version == 2
    assert change.to_version == 1
    assert reg.get_alias("rbm", "production") == 1
    moves = [(c.from_version, c.to_version, c.action, c.reason) for c in reg.history("rbm")]
    assert moves == [
        (None, 1, "set", "first release"),
        (1, 2, "set", "better ndcg"),
        (2, 1, "rollback", "latency spike"),
    ]
    last = reg.history("rbm")[-1]
    assert last.user
    assert dt.datetime.fromisoformat(last.time).utcoffset() == dt.timedelta(0)
    # Rollback undoes the last move, so a second one returns to 2.
    assert reg.rollback("rbm").to_version == 2


def test_rollback_restores_a_deleted_alias(reg: FileRegistry, make_version: MakeVersion) -> None:
    make_version()
    reg.set_alias("rbm", "staging", 1)
    reg.delete_alias("rbm", "staging", reason="retire")
    assert reg.get_alias("rbm", "staging") is None
    assert reg.rollback("rbm", "staging").to_version == 1
    assert reg.get_alias("rbm", "staging") == 1


def test_rollback_without_a_previous_target_is_refused(
    reg: FileRegistry, make_version: MakeVersion
) -> None:
    make_version()
    with pytest.raises(RegistryError, match="no history") as exc:
        reg.rollback("rbm")
    assert _code(exc) is ErrorCode.FAILED_PRECONDITION
    reg.set_alias("rbm", "production", 1)
    with pytest.raises(RegistryError, match="did not exist") as exc:
        reg.rollback("rbm")
    assert _code(exc) is ErrorCode.FAILED_PRECONDITION
    assert reg.get_alias("rbm", "production") == 1


def test_setting_an_alias_to_its_current_version_records_nothing(
    reg: FileRegistry, make_version: MakeVersion
) -> None:
    make_version()
    reg.set_alias("rbm", "production", 1)
    change = reg.set_alias("rbm", "production", 1, reason="again")
    assert isinstance(change, AliasChange)
    assert len(reg.history("rbm")) == 1


def test_compare_and_set_refuses_a_stale_expectation(
    reg: FileRegistry, make_version: MakeVersion
) -> None:
    make_version()
    make_version()
    reg.set_alias("rbm", "production", 1)
    with pytest.raises(RegistryError, match="meanwhile") as exc:
        reg.set_alias("rbm", "production", 2, expected=None)
    assert _code(exc) is ErrorCode.FAILED_PRECONDITION
    assert reg.set_alias("rbm", "production", 2, expected=1).to_version == 2


def test_gc_keeps_aliased_versions_and_never_reuses_numbers(
    reg: FileRegistry, make_version: MakeVersion, root: Path
) -> None:
    for _ in range(4):
        make_version()
    reg.set_alias("rbm", "production", 2)

    assert reg.gc("rbm", keep=1) == [1, 3]
    assert [info.version for info in reg.list_versions("rbm")] == [2, 4]
    assert make_version().version == 5
    assert reg.gc("rbm", keep=0) == [4, 5]
    assert [info.version for info in reg.list_versions("rbm")] == [2]
    assert make_version().version == 6
    assert not any((root / "rbm" / ".trash").iterdir())


def test_gc_keeps_the_version_a_rollback_would_return_to(
    reg: FileRegistry, make_version: MakeVersion
) -> None:
    for _ in range(3):
        make_version()
    reg.set_alias("rbm", "production", 1)
    reg.set_alias("rbm", "production", 2)
    assert reg.gc("rbm", keep=1) == []
    assert reg.rollback("rbm").to_version == 1


def test_gc_rejects_negative_keep(reg: FileRegistry, make_version: MakeVersion) -> None:
    make_version()
    with pytest.raises(RegistryError) as exc:
        reg.gc("rbm", keep=-1)
    assert _code(exc) is ErrorCode.INVALID_ARGUMENT


def test_numbering_survives_a_lost_counter(
    reg: FileRegistry, make_version: MakeVersion, root: Path
) -> None:
    make_version()
    make_version()
    (root / "rbm" / "next_version").unlink()
    assert make_version().version == 3


def test_resolve_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RBMREC_REGISTRY", raising=False)
    assert resolve_root(None) == tmp_path / "registry"
    monkeypatch.setenv("RBMREC_REGISTRY", str(tmp_path / "from-env"))
    assert resolve_root(None) == tmp_path / "from-env"
    assert resolve_root(str(tmp_path / "from-flag")) == tmp_path / "from-flag"
    assert resolve_root("relative") == tmp_path / "relative"


def test_published_files_are_read_only(make_version: MakeVersion) -> None:
    info = make_version()
    for name in [*info.files, "MANIFEST.json"]:
        assert (info.path / name).stat().st_mode & 0o777 == 0o444
