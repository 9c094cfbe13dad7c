"""The rating log's archive: append-only gzip CSV segments under a manifest, in the registry."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ratinglog import ArchiveCorrupt, Entry, RatingArchive, RatingRecord
from ratinglog.archive import ARCHIVE_DIR, KILL_ENV, MANIFEST
from registry.records import VersionMeta
from registry.store import FileRegistry
from tests.ratinglog.support import entries


def everything(archive: RatingArchive, after: str | None = None) -> list[Entry]:
    return [entry for page in archive.pages(after) for entry in page]


def test_an_archive_that_was_never_written_is_empty(tmp_path: Path) -> None:
    archive = RatingArchive(tmp_path, "rbmrec")
    assert archive.last_id is None and archive.entries == 0
    assert everything(archive) == [] and archive.segments() == []
    assert not (tmp_path / ARCHIVE_DIR).exists(), "reading creates nothing"


def test_appended_entries_come_back_exactly_in_log_order(tmp_path: Path) -> None:
    archive = RatingArchive(tmp_path, "rbmrec")
    first = archive.append(entries(0, 5))
    second = archive.append([*entries(5, 3), ("2000-0", RatingRecord(-1, 2**62, 0.1 + 0.2, -5))])
    assert first is not None and second is not None
    assert (first.first_id, first.last_id, first.rows) == ("1000-0", "1000-4", 5)
    assert (second.file, second.rows, second.last_id) == ("000002.csv.gz", 4, "2000-0")
    got = everything(archive)
    assert got == [*entries(0, 8), ("2000-0", RatingRecord(-1, 2**62, 0.1 + 0.2, -5))]
    assert archive.last_id == "2000-0" and archive.entries == 9
    assert [len(page) for page in archive.pages()] == [5, 4], "a page per segment"
    assert archive.path == tmp_path / ARCHIVE_DIR / "rbmrec"
    with gzip.open(archive.path / "000001.csv.gz", "rt") as fh:
        assert fh.readline() == "entry_id,user_id,movie_id,rating,timestamp\n"
    # A second reader of the same folder sees the same archive.
    assert everything(RatingArchive(tmp_path, "rbmrec")) == got


def test_pages_start_after_an_id_and_stop_at_another(tmp_path: Path) -> None:
    archive = RatingArchive(tmp_path, "p")
    for start in (0, 4, 8):
        archive.append(entries(start, 4))
    assert [e[0] for e in everything(archive, "1000-5")] == [f"1000-{n}" for n in range(6, 12)]
    assert everything(archive, "1000-11") == [] and everything(archive, "9999-0") == []
    upto = [e for page in archive.pages(after="1000-2", until="1000-6") for e in page]
    assert [e[0] for e in upto] == ["1000-3", "1000-4", "1000-5", "1000-6"]
    # Ids compare as numbers, not strings: 1000-10 comes after 1000-9.
    assert [e[0] for e in everything(archive, "1000-9")] == ["1000-10", "1000-11"]


def test_append_is_idempotent_and_takes_only_what_is_new(tmp_path: Path) -> None:
    archive = RatingArchive(tmp_path, "p")
    archive.append(entries(0, 10))
    assert archive.append(entries(0, 10)) is None
    assert archive.append(entries(3, 4)) is None
    assert archive.append([]) is None
    segment = archive.append(entries(5, 10))  # overlaps: only 10..14 are new
    assert segment is not None and (segment.first_id, segment.rows) == ("1000-10", 5)
    assert everything(archive) == entries(0, 15)
    assert len(archive.segments()) == 2


def test_append_refuses_entries_out_of_order(tmp_path: Path) -> None:
    archive = RatingArchive(tmp_path, "p")
    with pytest.raises(ValueError, match="log order"):
        archive.append([*entries(5, 1), *entries(4, 1)])
    with pytest.raises(ValueError, match="log order"):
        archive.append([*entries(5, 1), *entries(5, 1)])
    assert archive.entries == 0


def test_a_changed_byte_in_a_segment_is_caught_before_any_entry_is_read(tmp_path: Path) -> None:
    archive = RatingArchive(tmp_path, "p")
    archive.append(entries(0, 50))
    archive.append(entries(50, 50))
    second = archive.path / "000002.csv.gz"
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0x01
    second.write_bytes(bytes(data))
    pages = archive.pages()
    assert next(pages) == entries(0, 50)
    with pytest.raises(ArchiveCorrupt, match=r"000002\.csv\.gz does not match its sha256"):
        next(pages)


def test_a_missing_segment_or_a_broken_manifest_is_corrupt(tmp_path: Path) -> None:
    archive = RatingArchive(tmp_path, "p")
    archive.append(entries(0, 3))
    (archive.path / "000001.csv.gz").unlink()
    with pytest.raises(ArchiveCorrupt, match="missing"):
        everything(archive)
    (archive.path / MANIFEST).write_text("{not json")
    with pytest.raises(ArchiveCorrupt, match="manifest"):
        _ = archive.last_id
    record = {"file": "000001.csv.gz", "sha256": "0", "first_id": "1-0", "last_id": 7, "rows": 1}
    for bad in ({**record, "file": "../../x"}, record, {**record, "last_id": "1-0", "rows": "1"}):
        manifest = {"format": "rbmrec-rating-archive/1", "segments": [bad]}
        (archive.path / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ArchiveCorrupt, match="manifest"):
            _ = archive.entries


def test_a_segment_that_holds_other_entries_than_recorded_is_corrupt(tmp_path: Path) -> None:
    archive = RatingArchive(tmp_path, "p")
    segment = archive.append(entries(0, 3))
    assert segment is not None
    manifest = json.loads((archive.path / MANIFEST).read_text())
    manifest["segments"][0]["rows"] = 4  # a checksum over the wrong rows still matches
    (archive.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArchiveCorrupt, match="does not hold what the manifest says"):
        everything(RatingArchive(tmp_path, "p"))


def test_a_segment_left_by_a_killed_append_is_ignored_then_overwritten(tmp_path: Path) -> None:
    archive = RatingArchive(tmp_path, "p")
    archive.append(entries(0, 3))
    (archive.path / "000002.csv.gz").write_bytes(b"half a segment")  # renamed, not listed
    (archive.path / ".000003.csv.gz.abc.tmp").write_bytes(b"a temp file")  # never renamed
    assert everything(archive) == entries(0, 3) and archive.entries == 3
    segment = archive.append(entries(3, 2))
    assert segment is not None and segment.file == "000002.csv.gz"
    assert everything(archive) == entries(0, 5)
    assert sorted(p.name for p in archive.path.iterdir()) == [
        ".lock",
        "000001.csv.gz",
        "000002.csv.gz",
        MANIFEST,
    ]


@pytest.mark.parametrize("point", ["segment-temp", "segment", "manifest"])
def test_an_append_killed_at_any_step_loses_and_repeats_nothing(tmp_path: Path, point: str) -> None:
    archive = RatingArchive(tmp_path, "p")
    archive.append(entries(0, 10))
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from ratinglog import RatingArchive\n"
        "from tests.ratinglog.support import entries\n"
        "RatingArchive(Path(sys.argv[1]), 'p').append(entries(5, 20))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env={**os.environ, KILL_ENV: f"{point}:2"},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    expected = entries(0, 25) if point == "manifest" else entries(0, 10)
    assert everything(archive) == expected
    archive.append(entries(5, 20))  # the rerun
    assert everything(archive) == entries(0, 25)
    assert [s.rows for s in archive.segments()] == [10, 15]


@pytest.mark.parametrize("prefix", ["..", "a/../b", ".hidden", "a:b", "rbm-test:x.y"])
def test_any_prefix_is_one_folder_under_the_archive_dir(tmp_path: Path, prefix: str) -> None:
    archive = RatingArchive(tmp_path, prefix)
    archive.append(entries(0, 1))
    assert archive.path.parent == tmp_path / ARCHIVE_DIR
    assert not archive.path.name.startswith(".")
    assert everything(RatingArchive(tmp_path, prefix)) == entries(0, 1)


def test_two_prefixes_have_two_archives_and_an_empty_prefix_none(tmp_path: Path) -> None:
    RatingArchive(tmp_path, "a.b").append(entries(0, 1))
    assert RatingArchive(tmp_path, "a/b").entries == 0
    with pytest.raises(ValueError, match="empty"):
        RatingArchive(tmp_path, "")


def test_the_registry_does_not_list_the_archive_as_a_model(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path)
    registry.register("rbm", lambda d: (d / "w.bin").write_bytes(b"w"), VersionMeta())
    RatingArchive(tmp_path, "rbmrec").append(entries(0, 2))
    (tmp_path / ARCHIVE_DIR / "versions").mkdir()  # even one that looks like a model
    assert registry.list_models() == ["rbm"]
