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


def test_a_last_row_cut_inside_a_character_costs_only_that_row(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    append_records(path, [replace(make_record(), run_id=f"run{i}", cpu_model="Intel® Core™ i7") for i in range(3)])
    data = path.read_bytes()
    path.write_bytes(data[:data.rindex("™".encode()) + 1])  # the first byte of three
    table = read_table(path)
    assert [row["run_id"] for row in table.dicts()] == ["run0", "run1"]
    assert table.notes == (f"{path}:4: torn or malformed row skipped (the last line, cut short)",)
    appended = append_records(path, [replace(make_record(), run_id="new")])
    assert "ended in a torn row" in appended.notes[0]
    assert [r["run_id"] for r in read_records(path)] == ["run0", "run1", "new"]
    assert (tmp_path / "r.csv.torn").read_bytes().endswith("Intel® Core".encode() + b"\xe2\n")


def test_a_last_row_cut_inside_its_quoted_json_is_not_read_as_whole(tmp_path: Path) -> None:
    path = tmp_path / "serve.csv"
    metrics = '{"requests": 10, "failed": 0, "ttft_p50_ms": 41.5}'
    append_records(path, [replace(make_record(), run_id=f"run{i}", server="http://box:8080", serve_metrics=metrics)
                          for i in range(3)])
    path.write_bytes(path.read_bytes()[:-8])  # every field still there, the last one's closing quote gone
    records = read_records(path)
    assert [r["run_id"] for r in records] == ["run0", "run1"] and records[-1]["serve_metrics"] == metrics
    appended = append_records(path, [replace(make_record(), run_id="new")])  # the appender judges alike
    assert "ended in a torn row" in appended.notes[0] and (tmp_path / "serve.csv.torn").exists()


def test_a_word_where_a_number_belongs_costs_its_row_not_the_read(tmp_path: Path) -> None:
    from qwenbench.results import read_records_with_notes

    path = tmp_path / "r.csv"
    _base(path, 3)
    path.write_text(path.read_text().replace(",2048,512,", ",lots,512,", 1))
    records, notes = read_records_with_notes(path)
    assert [r["run_id"] for r in records] == ["run1", "run2"]
    assert len(notes) == 1 and "'run0'" in notes[0] and "lots" in notes[0]
    assert [r["run_id"] for r in read_records(path)] == ["run1", "run2"]


def test_rows_are_rescued_beside_the_file_when_the_cache_setting_is_broken(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("x")
    monkeypatch.setenv("QWENBENCH_CACHE_DIR", str(not_a_folder))  # only consulted when beside fails
    target = tmp_path / "results.csv"
    target.mkdir()
    appended = append_records(target, [make_record()])
    assert appended.path.parent == tmp_path and len(read_records(appended.path)) == 1


def test_a_destination_that_became_a_pipe_is_not_waited_on(tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    check_appendable(target)
    os.mkfifo(target)
    outcome: list = []
    writer = threading.Thread(target=lambda: outcome.append(append_records(target, [make_record()])), daemon=True)
    writer.start()
    writer.join(timeout=10)
    if writer.is_alive():  # release the open that waits for a reader, then fail
        os.close(os.open(target, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=10)
        pytest.fail("append_records waited for a reader on a FIFO")
    (appended,) = outcome
    assert appended.path.name.startswith("results.rescued-") and "not a regular file" in appended.notes[0]


def test_a_file_saved_with_crlf_line_ends_is_still_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    ids = _base(path, 2)
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))  # saved again by a spreadsheet
    check_appendable(path)
    appended = append_records(path, [replace(make_record(), run_id="new")])
    assert appended.path == path and appended.notes == ()
    assert [r["run_id"] for r in read_records(path)] == [*ids, "new"]


def test_an_empty_file_or_a_torn_header_is_no_rows_not_a_refusal(tmp_path: Path) -> None:
    empty, header_only = tmp_path / "empty.csv", tmp_path / "torn-header.csv"
    empty.write_text("")
    header_only.write_text("schema_version,run_id,su")
    rows = tmp_path / "rows.csv"
    ids = _base(rows, 2)
    frame = load_results([empty, header_only, rows])
    assert list(frame["run_id"]) == ids
    assert frame.attrs["notes"] == [f"{empty}: empty", f"{header_only}: only a torn header, no rows"]
    assert read_records(header_only) == []
