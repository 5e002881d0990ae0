"""ModelScope as a second source: listing, resumable verified downloads into the package's cache layout, header
planning, and the fallback from an unreachable Hub, against a fake ModelScope on 127.0.0.1."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwenbench.catalog import get_model
from qwenbench.errors import UsageError
from qwenbench.hub import HubUnreachable, download, fetch_model, resolve
from qwenbench.hubheader import plan_tables, read_remote_header
from qwenbench.modelscope import (
    ModelScopeError,
    ModelScopeUnreachable,
    endpoint,
    model_folder,
    parse_files,
    partial_path,
    read_index,
)

from .conftest import run_cli
from .fakehub import FakeHub, FakeRepo
from .fakemodelscope import FakeModelScopeServer
from .test_hub import payload

SPEC = get_model("qwen3-0.6b")
OFFICIAL, LMSTUDIO = "Qwen/Qwen3-0.6B-GGUF", "lmstudio-community/Qwen3-0.6B-GGUF"
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens there: refused at once


@pytest.fixture
def ms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub(repos={
        OFFICIAL: FakeRepo({"README.md": b"# card", "Qwen3-0.6B-Q8_0.gguf": payload("ms-q8")},
                           commit="feedfacefeedfacefeedfacefeedfacefeedface"),
        LMSTUDIO: FakeRepo({"Qwen3-0.6B-Q4_K_M.gguf": payload("ms-q4km")}),
    })
    with FakeModelScopeServer(fake) as server:
        monkeypatch.setenv("MODELSCOPE_DOMAIN", server.url)
        monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
        monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
        yield fake


def file_gets(fake: FakeHub) -> list[str]:
    """The Range header of each file download (not listing) request."""
    return [rng for method, path, rng in fake.requests if method == "GET" and "/repo?" in path]


def test_listing_picks_quants_in_the_catalogs_modelscope_repos(ms: FakeHub) -> None:
    assert SPEC.modelscope == (OFFICIAL, LMSTUDIO)  # the catalog's Qwen and lmstudio-community repos
    official = resolve(SPEC, "q8_0", source="modelscope")
    assert (official.repo, official.source, official.ref) == (OFFICIAL, "modelscope", "master")
    assert official.revision == ms.repos[OFFICIAL].commit  # the commit ModelScope lists for the file
    assert official.files[0].sha256 == ms.sha256(OFFICIAL, "Qwen3-0.6B-Q8_0.gguf")
    assert official.origin == {"repo": f"modelscope:{OFFICIAL}", "revision": official.revision}
    assert resolve(SPEC, "Q4_K_M", source="modelscope").repo == LMSTUDIO
    with pytest.raises(UsageError, match="no Q2_K GGUF") as caught:
        resolve(SPEC, "Q2_K", source="modelscope")
    assert f"{OFFICIAL}: Q8_0" in (caught.value.hint or "")
    with pytest.raises(UsageError, match=r"repository nobody/nothing .*not found on http://127") as missing:
        resolve(SPEC, "Q8_0", repo="nobody/nothing", source="modelscope")
    assert "--repo" in (missing.value.hint or "")


def test_download_keeps_the_modelscope_layout_and_index(ms: FakeHub, tmp_path: Path) -> None:
    resolved = resolve(SPEC, "Q8_0", source="modelscope")
    (path,) = download(resolved)
    assert path == tmp_path / "ms" / "models" / "Qwen" / "Qwen3-0___6B-GGUF" / "Qwen3-0.6B-Q8_0.gguf"
    assert path.read_bytes() == ms.repos[OFFICIAL].files["Qwen3-0.6B-Q8_0.gguf"]
    # the package's own index, so `modelscope download` takes the file as current
    index = pickle.loads((path.parent / ".msc").read_bytes())
    assert index == [{"Path": "Qwen3-0.6B-Q8_0.gguf", "Revision": ms.repos[OFFICIAL].commit}]
    assert read_index(path.parent) == index
    gets = len(file_gets(ms))
    assert download(resolved) == [path] and len(file_gets(ms)) == gets  # in the cache: nothing fetched


def test_a_copy_the_modelscope_package_downloaded_is_used(ms: FakeHub) -> None:
    resolved = resolve(SPEC, "Q4_K_M", source="modelscope")
    theirs = model_folder(LMSTUDIO) / "Qwen3-0.6B-Q4_K_M.gguf"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(ms.repos[LMSTUDIO].files["Qwen3-0.6B-Q4_K_M.gguf"])
    assert download(resolved) == [theirs] and not file_gets(ms)


def test_an_interrupted_or_cut_download_continues_with_a_range_request(ms: FakeHub) -> None:
    resolved = resolve(SPEC, "Q4_K_M", source="modelscope")
    data = ms.repos[LMSTUDIO].files["Qwen3-0.6B-Q4_K_M.gguf"]
    partial = partial_path(LMSTUDIO, "Qwen3-0.6B-Q4_K_M.gguf")  # where the package, too, keeps a partial file
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:100_000])
    ms.cut_after["Qwen3-0.6B-Q4_K_M.gguf"] = 50_000  # and the first request is cut short as well
    (path,) = download(resolved)
    assert path.read_bytes() == data and not partial.exists()
    assert file_gets(ms) == ["bytes=100000-", "bytes=150000-"]  # only the missing bytes, twice
    assert ms.bytes_sent == len(data) - 100_000


def test_corrupt_bytes_are_fetched_again_then_refused(ms: FakeHub) -> None:
    resolved = resolve(SPEC, "Q8_0", source="modelscope")
    ms.corrupt.add("Qwen3-0.6B-Q8_0.gguf")
    ms.corrupt_times = 1
    (path,) = download(resolved)
    assert path.read_bytes() == ms.repos[OFFICIAL].files["Qwen3-0.6B-Q8_0.gguf"] and len(file_gets(ms)) == 2
    path.unlink()
    ms.corrupt_times = 2
    with pytest.raises(ModelScopeError, match="does not match its SHA-256") as caught:
        download(resolved)
    assert "MODELSCOPE_DOMAIN" in (caught.value.hint or "") and not path.exists()


def test_missing_files_server_errors_and_an_unreachable_modelscope(ms: FakeHub, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    resolved = resolve(SPEC, "Q8_0", source="modelscope")
    del ms.repos[OFFICIAL].files["Qwen3-0.6B-Q8_0.gguf"]  # gone since it was listed
    with pytest.raises(UsageError, match=r"Qwen3-0\.6B-Q8_0\.gguf not found in ModelScope's Qwen/Qwen3-0\.6B-GGUF"):
        download(resolved)
    ms.error_status = 503
    with pytest.raises(ModelScopeError, match="ModelScope answered 503") as outage:
        resolve(SPEC, "Q4_K_M", source="modelscope")
    assert "try again later" in (outage.value.hint or "")
    monkeypatch.setenv("MODELSCOPE_DOMAIN", UNREACHABLE)
    with pytest.raises(ModelScopeUnreachable, match=f"cannot reach ModelScope at {UNREACHABLE}"):
        resolve(SPEC, "Q4_K_M", source="modelscope")


def test_the_hub_out_of_reach_falls_back_to_modelscope(ms: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    fetched = fetch_model(SPEC, "Q8_0", on_status=said.append)
    assert fetched.resolved is not None and fetched.resolved.source == "modelscope"
    assert any(line.startswith(f"note: cannot reach {UNREACHABLE}") and "ModelScope" in line for line in said)
    with pytest.raises(HubUnreachable, match=f"cannot reach {UNREACHABLE}"):
        fetch_model(SPEC, "Q8_0", source="hf")  # asked for the Hub: no fallback
    monkeypatch.setenv("MODELSCOPE_DOMAIN", UNREACHABLE)
    with pytest.raises(HubUnreachable) as both:
        fetch_model(SPEC, "Q8_0")
    assert "--offline" in (both.value.hint or "") and "ModelScope, tried next: cannot reach" in (both.value.hint or "")
    # offline, the ModelScope cache serves as the HF cache does
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch_model(SPEC, "Q8_0").path == fetched.path


def test_headers_for_planning_come_from_modelscope_by_range_requests(ms: FakeHub, tiny_dense: Path,
                                                                     tmp_path: Path) -> None:
    ms.repos[OFFICIAL].files["Qwen3-0.6B-Q8_0.gguf"] = tiny_dense
    remote = read_remote_header(resolve(SPEC, "Q8_0", source="modelscope"))
    assert 0 < remote.fetched_bytes < tiny_dense.stat().st_size and remote.requests >= 1
    assert all(rng.startswith("bytes=") for rng in file_gets(ms))
    found = plan_tables(SPEC, ["Q8_0", "Q6_K"])  # the Hub is out of reach: ModelScope's headers, with a note
    assert found.source == "hub" and set(found.tables) == {"Q8_0"}
    assert found.remote["Q8_0"].resolved.source == "modelscope" and found.remote["Q8_0"].fetched_bytes == 0  # cached
    assert any("headers from ModelScope" in note for note in found.notes)
    assert plan_tables(SPEC, ["Q8_0"], source="hf").source == "recipe"
    twin = run_cli("synth", "--from-hub", "qwen3-0.6b", "--quant", "Q8_0", "--source", "modelscope",
                   "--out", str(tmp_path / "twin.gguf"), "--json")
    assert twin.returncode == 0, twin.stderr
    commit = ms.repos[OFFICIAL].commit
    assert json.loads(twin.stdout)["twin_of"] == f"modelscope:{OFFICIAL}/Qwen3-0.6B-Q8_0.gguf@{commit}"


def test_pull_and_run_from_modelscope(ms: FakeHub, tiny_dense: Path, tmp_path: Path) -> None:
    """The CLI end to end: a real (tiny) GGUF from the fake ModelScope, pulled, verified, measured; the rows say
    where it came from."""
    ms.repos[OFFICIAL].files["Qwen3-0.6B-Q4_K_M.gguf"] = tiny_dense.read_bytes()
    pulled = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "Q4_K_M", "--source", "modelscope", "--json")
    assert pulled.returncode == 0, pulled.stderr
    info = json.loads(pulled.stdout)
    assert (info["repo"], info["source"]) == (OFFICIAL, "modelscope")
    assert Path(info["local_path"]).read_bytes() == tiny_dense.read_bytes()
    assert "on ModelScope at http://127.0.0.1" in pulled.stderr
    result = run_cli("run", "--json", "--model", "qwen3-0.6b", "--quant", "Q4_K_M", "-p", "16", "-n", "4", "-r", "1",
                     "--no-ttft", "--offline", "--out", str(tmp_path / "r.csv"))  # from ModelScope's cache
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["rows"][0]
    assert row["model_repo"] == f"modelscope:{OFFICIAL}" and row["model_revision"] == ms.repos[OFFICIAL].commit
    assert row["model_sha256"] == ms.sha256(OFFICIAL, "Qwen3-0.6B-Q4_K_M.gguf")


def test_cli_fallback_note_and_one_line_when_neither_answers(ms: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    pulled = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "Q8_0")
    assert pulled.returncode == 0, pulled.stderr
    assert f"cannot reach {UNREACHABLE}" in pulled.stderr and "published on ModelScope" in pulled.stderr
    refused = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "Q8_0", "--source", "nowhere")
    assert refused.returncode == 2 and "not a model source" in refused.stderr
    monkeypatch.setenv("MODELSCOPE_DOMAIN", UNREACHABLE)
    failed = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "Q4_K_M", "--source", "modelscope")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert f"cannot reach ModelScope at {UNREACHABLE}" in failed.stderr and "MODELSCOPE_DOMAIN" in failed.stderr


def test_endpoint_listing_shapes_and_a_hostile_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "modelscope.ai")
    assert endpoint() == "https://modelscope.ai"  # a bare domain, as the package takes it
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "http://127.0.0.1:1/")
    assert endpoint() == "http://127.0.0.1:1"
    monkeypatch.delenv("MODELSCOPE_DOMAIN")
    assert endpoint() == "https://www.modelscope.cn"
    listed = parse_files({"Data": {"Files": [{"Path": "a", "Type": "tree"}, {"Path": "a/b.gguf", "Size": "x",
                                                                              "Sha256": "short", "Type": "blob"}]}})
    assert [(f.path, f.size, f.sha256, f.revision) for f in listed] == [("a/b.gguf", 0, None, None)]
    with pytest.raises(ModelScopeError, match=r"no Data\.Files"):
        parse_files({"Code": 200})
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / ".msc").write_bytes(pickle.dumps(os.getcwd))  # unpickling it would import and name code
    assert read_index(folder) is None
