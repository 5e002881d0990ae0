"""The results CSV under damage and odd destinations: a torn last line never merges with new rows, readers skip
what is torn instead of dropping the file, a destination that cannot take rows is refused before the work, and
rows are rescued (never lost) when it stops taking them during the work."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from qwenbench.errors import ResultsFileError
from qwenbench.report import load_results
from qwenbench.results import append_records, check_appendable, read_records, read_table

from .test_results_and_metrics import make_record


def _base(path: Path, n: int = 4) -> list[str]:
    ids = [f"run{i}" for i in range(n)]
    append_records(path, [replace(make_record(), run_id=run_id, error='a "quoted" reason, with a comma')
                          for run_id in ids])
    return ids


def test_a_last_row_without_its_line_break_is_kept_whole(tmp_path: Path) -> None:
    path = tmp_path / "base.csv"
    ids = _base(path)
    path.write_bytes(path.read_bytes()[:-1])  # `head -c -1`: once merged with the next row into one of 127 fields
    assert [r["run_id"] for r in read_records(path)] == ids
    appended = append_records(path, [replace(make_record(), run_id="new")])
    assert "ended without a line break" in appended.notes[0]
    assert [r["run_id"] for r in read_records(path)] == [*ids, "new"]
    assert not (tmp_path / "base.csv.torn").exists()


def test_a_torn_last_line_never_merges_with_new_rows(tmp_path: Path) -> None:
    torn = tmp_path / "torn.csv"
    ids = _base(torn)
    data = torn.read_bytes()
    torn.write_bytes(data[:-300])  # `head -c -300`: cut inside the last row's quoted field
    table = read_table(torn)  # before mending: the torn line is skipped, not the file
    assert [row["run_id"] for row in table.dicts()] == ids[:-1]
    assert len(table.notes) == 1 and "torn.csv:5: torn or malformed row skipped" in table.notes[0]
    appended = append_records(torn, [replace(make_record(), run_id="new")])
    assert appended.path == torn and "ended in a torn row" in appended.notes[0]
    assert [r["run_id"] for r in read_records(torn)] == [*ids[:-1], "new"]
    assert read_table(torn).notes == ()  # mended: nothing left to skip
    last_line = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    assert (tmp_path / "torn.csv.torn").read_bytes() == last_line[:-299] + b"\n"  # kept, not lost


def test_a_torn_row_in_the_middle_costs_only_that_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    ids = _base(path)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:150]  # cut inside its quoted error: an open quote that must not swallow what follows
    path.write_bytes(b"\n".join(lines))
    assert [r["run_id"] for r in read_records(path)] == [ids[0], *ids[2:]]
    frame = load_results([path])
    assert len(frame) == 3 and any("r.csv:3: torn" in note for note in frame.attrs["notes"])


def test_a_value_with_line_breaks_stays_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    append_records(path, [replace(make_record(), error="line one\nline two\r\nthree")])
    assert path.read_text().count("\n") == 2  # header and one row
    assert read_records(path)[0]["error"] == "line one line two three"


def test_a_pipe_is_read_once(tmp_path: Path) -> None:
    source = tmp_path / "base.csv"
    ids = _base(source)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(source.read_bytes()))
    writer.start()
    frame = load_results([fifo])
    writer.join(timeout=10)
    assert list(frame["run_id"]) == ids


def test_what_is_not_a_results_file_is_refused_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ResultsFileError, match="is not a file or a pipe"):
        read_table(Path("/dev/zero"))  # once hung for ever
    with pytest.raises(ResultsFileError, match="is a folder"):
        read_table(tmp_path)
    noise = tmp_path / "noise.csv"
    noise.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ResultsFileError, match="not UTF-8"):
        read_table(noise)
    other = tmp_path / "other.csv"
    other.write_text("name,value\na,1\n")
    with pytest.raises(ResultsFileError, match="no schema_version column"):
        read_table(other)


@pytest.mark.parametrize(("content", "message"), [
    (None, "is a folder"),
    (b"\xff\xfe random bytes\n" * 8, "not UTF-8"),
    (b"name,value\na,1\n", "another tool's file"),
    (b"schema_version,run_id,test\n3,old,pp512\n", "schema 3, this is"),
])
def test_a_destination_that_cannot_take_rows_is_refused_before_the_work(tmp_path: Path, content: bytes | None,
                                                                       message: str) -> None:
    target = tmp_path / "results.csv"
    if content is None:
        target.mkdir()
    else:
        target.write_bytes(content)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ResultsFileError, match=message):
        check_appendable(target)
    assert sorted(tmp_path.rglob("*")) == before  # the check leaves nothing behind


def test_new_and_torn_destinations_are_accepted(tmp_path: Path) -> None:
    check_appendable(tmp_path / "new" / "folder" / "results.csv")
    assert not (tmp_path / "new").exists()
    torn = tmp_path / "torn.csv"
    _base(torn)
    torn.write_bytes(torn.read_bytes()[:-5])
    check_appendable(torn)
    with pytest.raises(ResultsFileError, match="cannot write results"):
        check_appendable(Path("/proc/qwenbench/results.csv"))


def test_rows_are_rescued_when_the_file_stops_taking_them(tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    check_appendable(target)
    target.mkdir()  # between the check and the end of the run
    appended = append_records(target, [make_record()])
    assert appended.path.parent == tmp_path and appended.path.name.startswith("results.rescued-")
    assert f"they are in {appended.path}" in appended.notes[0]
    assert len(read_records(appended.path)) == 1


def test_many_small_files_read_as_one(tmp_path: Path) -> None:
    single = tmp_path / "all.csv"
    parts = []
    for index in range(50):
        part = tmp_path / f"part{index}.csv"
        records = [replace(make_record(), run_id=f"r{index}-{n}", avg_ts=float(index + n)) for n in range(3)]
        append_records(part, records)
        append_records(single, records)
        parts.append(part)
    many, one = load_results(parts), load_results([single])
    columns = [c for c in one.columns if c != "source"]
    assert many[columns].equals(one[columns]) and len(one) == 150
