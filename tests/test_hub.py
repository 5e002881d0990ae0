"""Hub resolution and downloads through the real huggingface_hub client against a fake Hub on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwenbench.catalog import get_model
from qwenbench.errors import UsageError
from qwenbench.hub import (
    HubError,
    Resolved,
    check_disk,
    download,
    find_local_copy,
    local_model_dirs,
    resolve,
    resolve_local,
    resolve_offline,
)

from .conftest import QWENBENCH, default_signals, run_cli
from .fakehub import FakeHub, FakeHubServer, FakeRepo


def payload(tag: str, size: int = 300_000) -> bytes:
    seed = tag.encode() * (size // len(tag) + 1)
    return b"GGUF" + seed[: size - 4]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub(repos={
        "Qwen/Qwen3-0.6B-GGUF": FakeRepo({"README.md": b"# card", "Qwen3-0.6B-Q8_0.gguf": payload("q8")}),
        "lmstudio-community/Qwen3-0.6B-GGUF": FakeRepo({"Qwen3-0.6B-Q4_K_M.gguf": payload("q4km"),
                                                        "Qwen3-0.6B-Q8_0.gguf": payload("lm-q8")}),
        # unsloth's repo is absent: a 404 moves on to the next candidate
        "bartowski/Qwen_Qwen3-0.6B-GGUF": FakeRepo({"Qwen_Qwen3-0.6B-Q3_K_L.gguf": payload("q3kl"),
                                                    "Qwen_Qwen3-0.6B-IQ4_XS.gguf": payload("iq4")}),
        "Qwen/Qwen3-235B-A22B-GGUF": FakeRepo({
            "Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00001-of-00002.gguf": payload("part1"),
            "Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00002-of-00002.gguf": payload("part2")}),
        "gated/Qwen3-0.6B-GGUF": FakeRepo({"Qwen3-0.6B-Q8_0.gguf": payload("g")}, gated=True),
        # the precision ladder's files as published: Qwen's own `-fp16`, no F32 there; bartowski's `-f32`
        "Qwen/Qwen2.5-3B-Instruct-GGUF": FakeRepo({"qwen2.5-3b-instruct-fp16.gguf": payload("fp16"),
                                                   "qwen2.5-3b-instruct-q8_0.gguf": payload("3b-q8")}),
        "bartowski/Qwen2.5-3B-Instruct-GGUF": FakeRepo({"Qwen2.5-3B-Instruct-f32.gguf": payload("f32"),
                                                        "Qwen2.5-3B-Instruct-f16.gguf": payload("b-f16")}),
    })
    with FakeHubServer(fake) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no LM Studio folders but the test's own
        monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))  # nor an Ollama store
        yield fake


def test_candidates_in_order_of_preference(hub: FakeHub) -> None:
    spec = get_model("qwen3-0.6b")
    official = resolve(spec, "q8_0")
    assert official.repo == "Qwen/Qwen3-0.6B-GGUF" and official.revision == hub.repos[official.repo].commit
    assert [f.path for f in official.files] == ["Qwen3-0.6B-Q8_0.gguf"]
    assert official.files[0].sha256 == hub.sha256(official.repo, "Qwen3-0.6B-Q8_0.gguf")
    assert resolve(spec, "Q4_K_M").repo == "lmstudio-community/Qwen3-0.6B-GGUF"
    prefixed = resolve(spec, "Q3_K_L")
    assert prefixed.repo == "bartowski/Qwen_Qwen3-0.6B-GGUF" and prefixed.files[0].path.startswith("Qwen_")
    assert resolve(spec, "Q8_0", repo="lmstudio-community/Qwen3-0.6B-GGUF").files[0].size == 300_000


def test_split_files_in_a_quant_folder(hub: FakeHub) -> None:
    resolved = resolve(get_model("qwen3-235b-a22b"), "Q4_K_M")
    assert [f.path for f in resolved.files] == ["Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00001-of-00002.gguf",
                                               "Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00002-of-00002.gguf"]
    paths = download(resolved)
    assert [p.name for p in paths] == ["Qwen3-235B-A22B-Q4_K_M-00001-of-00002.gguf",
                                       "Qwen3-235B-A22B-Q4_K_M-00002-of-00002.gguf"]
    assert paths[0].parent == paths[1].parent  # llama.cpp finds the other parts beside the first


def test_full_precision_files_by_every_name_they_go_by(hub: FakeHub) -> None:
    spec = get_model("qwen2.5-3b-instruct")
    f32 = resolve(spec, "F32")  # not in Qwen's repo (nor lmstudio's, absent here): bartowski's
    assert f32.repo == "bartowski/Qwen2.5-3B-Instruct-GGUF"
    assert [f.path for f in f32.files] == ["Qwen2.5-3B-Instruct-f32.gguf"]
    f16 = resolve(spec, "f16")  # Qwen's `-fp16` is the F16 preset, and the official repo comes first
    assert f16.repo == "Qwen/Qwen2.5-3B-Instruct-GGUF" and f16.files[0].path == "qwen2.5-3b-instruct-fp16.gguf"
    with pytest.raises(UsageError) as caught:
        resolve(spec, "BF16")
    assert "Qwen/Qwen2.5-3B-Instruct-GGUF: F16, Q8_0" in (caught.value.hint or "")
    assert "bartowski/Qwen2.5-3B-Instruct-GGUF: F16, F32" in (caught.value.hint or "")


def test_f32_file_names_and_splits() -> None:
    from qwenbench.hubfiles import available_quants, files_for_quant, quant_of

    for name in ("Qwen2.5-3B-Instruct-f32.gguf", "Qwen2.5-3B-Instruct-F32.gguf", "qwen2.5-3b-instruct-fp32.gguf",
                 "Qwen_Qwen3-4B-F32.gguf", "F32/Qwen3-32B-F32-00001-of-00003.gguf", "F32/model.gguf"):
        assert quant_of(name) == "F32", name
    assert quant_of("qwen2.5-7b-instruct-fp16-00002-of-00004.gguf") == "F16"
    assert quant_of("Qwen3-4B-BF16.gguf") == "BF16" and quant_of("Qwen3-4B-UD-Q4_K_XL.gguf") == "UD-Q4_K_XL"
    split = [f"F32/Qwen3-32B-F32-0000{i}-of-00003.gguf" for i in (2, 3, 1)]
    listing = [*split, "Qwen3-32B-F16.gguf", "Qwen3-32B-BF16.gguf"]
    assert files_for_quant(listing, "f32") == sorted(split)  # in order: llama.cpp loads the first part
    assert files_for_quant(listing[1:], "F32") is None  # a part missing: incomplete, not a match
    # a single file beats a split copy of the same quant
    assert files_for_quant([*split, "Qwen3-32B-F32.gguf"], "F32") == ["Qwen3-32B-F32.gguf"]
    assert available_quants(listing) == ["BF16", "F16", "F32"]


def test_missing_quant_lists_what_exists(hub: FakeHub) -> None:
    with pytest.raises(UsageError, match=r"no Q2_K GGUF of Qwen3-0\.6B") as caught:
        resolve(get_model("qwen3-0.6b"), "Q2_K")
    assert "Qwen/Qwen3-0.6B-GGUF: Q8_0" in (caught.value.hint or "")
    assert "bartowski/Qwen_Qwen3-0.6B-GGUF: IQ4_XS, Q3_K_L" in (caught.value.hint or "")


def test_unknown_and_gated_repos(hub: FakeHub) -> None:
    with pytest.raises(UsageError, match="repository nobody/nothing not found"):
        resolve(get_model("qwen3-0.6b"), "Q8_0", repo="nobody/nothing")
    with pytest.raises(HubError, match="gated") as caught:
        resolve(get_model("qwen3-0.6b"), "Q8_0", repo="gated/Qwen3-0.6B-GGUF")
    assert "HF_TOKEN" in (caught.value.hint or "")


def test_download_is_cached_and_verified(hub: FakeHub, tmp_path: Path) -> None:
    resolved = resolve(get_model("qwen3-0.6b"), "Q8_0")
    (path,) = download(resolved)
    assert path.read_bytes() == hub.repos[resolved.repo].files["Qwen3-0.6B-Q8_0.gguf"]
    assert str(path).startswith(str(tmp_path / "hf" / "models--Qwen--Qwen3-0.6B-GGUF"))
    gets = sum(1 for method, p, _ in hub.requests if method == "GET" and "/resolve/" in p)
    assert download(resolved) == [path]
    assert sum(1 for method, p, _ in hub.requests if method == "GET" and "/resolve/" in p) == gets  # no refetch


def test_a_cut_transfer_still_completes(hub: FakeHub) -> None:
    resolved = resolve(get_model("qwen3-0.6b"), "Q4_K_M")
    hub.cut_after["Qwen3-0.6B-Q4_K_M.gguf"] = 100_000
    (path,) = download(resolved)
    assert path.read_bytes() == hub.repos[resolved.repo].files["Qwen3-0.6B-Q4_K_M.gguf"]


def test_an_interrupted_pull_continues_where_it_stopped(hub: FakeHub, tmp_path: Path) -> None:
    """What a killed pull leaves in the HF cache (a partial .incomplete blob) is continued, not restarted."""
    resolved = resolve(get_model("qwen3-0.6b"), "Q4_K_M")
    data = hub.repos[resolved.repo].files["Qwen3-0.6B-Q4_K_M.gguf"]
    blobs = tmp_path / "hf" / "models--lmstudio-community--Qwen3-0.6B-GGUF" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{hub.sha256(resolved.repo, 'Qwen3-0.6B-Q4_K_M.gguf')}.incomplete").write_bytes(data[:100_000])
    (path,) = download(resolved)
    assert path.read_bytes() == data
    ranges = [r for method, p, r in hub.requests if method == "GET" and p.endswith("Q4_K_M.gguf")]
    assert ranges == ["bytes=100000-"]  # one request, for the missing bytes only
    assert hub.bytes_sent == len(data) - 100_000


def test_corrupted_bytes_are_fetched_again_then_refused(hub: FakeHub) -> None:
    resolved = resolve(get_model("qwen3-0.6b"), "Q8_0")
    hub.corrupt.add("Qwen3-0.6B-Q8_0.gguf")
    hub.corrupt_times = 1
    (path,) = download(resolved)
    assert path.read_bytes() == hub.repos[resolved.repo].files["Qwen3-0.6B-Q8_0.gguf"]
    hub.corrupt.add("Qwen3-0.6B-Q4_K_M.gguf")
    hub.corrupt_times = 2
    with pytest.raises(HubError, match="does not match the Hub's SHA-256"):
        download(resolve(get_model("qwen3-0.6b"), "Q4_K_M"))


def test_offline_uses_the_cache_or_says_so(hub: FakeHub) -> None:
    spec = get_model("qwen3-0.6b")
    with pytest.raises(HubError, match="offline"):
        resolve_offline(spec, "Q8_0")
    online = resolve(spec, "Q8_0")
    (path,) = download(online)
    cached = resolve_offline(spec, "Q8_0")
    assert cached.repo == online.repo and cached.files[0].sha256 == online.files[0].sha256
    assert download(cached, offline=True) == [path]


def test_server_errors_and_disk_space(hub: FakeHub, tmp_path: Path) -> None:
    hub.error_status = 503
    with pytest.raises(HubError, match="503"):
        resolve(get_model("qwen3-0.6b"), "Q8_0", repo="Qwen/Qwen3-0.6B-GGUF")
    huge = Resolved("Qwen/Qwen3-0.6B-GGUF", "abc", "Q8_0", ())
    check_disk(huge, tmp_path)  # nothing to fetch fits anywhere
    from qwenbench.hub import RemoteFile

    too_big = Resolved("Qwen/Qwen3-0.6B-GGUF", "abc", "Q8_0", (RemoteFile("x.gguf", 10**16, None),))
    with pytest.raises(HubError, match=r"needs 10000000\.0 GB"):
        check_disk(too_big, tmp_path)


def test_pull_and_run_a_model_from_the_hub(hub: FakeHub, tiny_dense: Path, tmp_path: Path) -> None:
    """The CLI end to end: a real (tiny) GGUF served by the fake Hub, pulled, verified and measured."""
    hub.repos["Qwen/Qwen3-0.6B-GGUF"].files["Qwen3-0.6B-Q4_K_M.gguf"] = tiny_dense.read_bytes()
    pulled = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "Q4_K_M", "--json")
    assert pulled.returncode == 0, pulled.stderr
    info = json.loads(pulled.stdout)
    assert info["repo"] == "Qwen/Qwen3-0.6B-GGUF" and Path(info["local_path"]).read_bytes() == tiny_dense.read_bytes()
    result = run_cli("run", "--json", "--model", "qwen3-0.6b", "--quant", "Q4_K_M", "-p", "16", "-n", "4", "-r", "1",
                     "--no-ttft", "--out", str(tmp_path / "r.csv"))
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["rows"][0]
    assert row["model_repo"] == "Qwen/Qwen3-0.6B-GGUF" and row["model_revision"] == hub.repos[row["model_repo"]].commit
    assert row["model_sha256"] == hub.sha256(row["model_repo"], "Qwen3-0.6B-Q4_K_M.gguf")
    offline = run_cli("run", "--json", "--model", "qwen3-0.6b", "--quant", "Q4_K_M", "-p", "16", "-n", "4", "-r", "1",
                      "--no-ttft", "--offline", "--out", str(tmp_path / "r.csv"))
    assert offline.returncode == 0, offline.stderr


def test_unreachable_hub_is_one_line_with_the_offline_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    result = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "Q8_0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot reach http://127.0.0.1:9" in result.stderr and "--offline" in result.stderr
    offline = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "Q8_0", "--offline")
    assert offline.returncode == 1 and "no Q8_0 GGUF of Qwen3-0.6B is in the cache" in offline.stderr


def test_copies_already_on_disk_are_reused(hub: FakeHub, tmp_path: Path) -> None:
    """An LM Studio download (<publisher>/<repo>/<file>) is found by name and size and proven by SHA-256."""
    spec = get_model("qwen3-0.6b")
    resolved = resolve(spec, "Q4_K_M")
    lmstudio = tmp_path / "home" / ".lmstudio" / "models" / "lmstudio-community" / "Qwen3-0.6B-GGUF"
    lmstudio.mkdir(parents=True)
    data = hub.repos[resolved.repo].files["Qwen3-0.6B-Q4_K_M.gguf"]
    (lmstudio / "Qwen3-0.6B-Q4_K_M.gguf").write_bytes(data)
    dirs = local_model_dirs()
    assert dirs == [tmp_path / "home" / ".lmstudio" / "models"]
    assert find_local_copy(resolved, dirs) == [lmstudio / "Qwen3-0.6B-Q4_K_M.gguf"]
    assert resolve_local(spec, "Q4_K_M", dirs) == [lmstudio / "Qwen3-0.6B-Q4_K_M.gguf"]
    (lmstudio / "Qwen3-0.6B-Q4_K_M.gguf").write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, other bytes
    assert find_local_copy(resolved, dirs) is None


def test_pull_uses_a_models_dir_copy_without_downloading(hub: FakeHub, tmp_path: Path) -> None:
    data = hub.repos["Qwen/Qwen3-0.6B-GGUF"].files["Qwen3-0.6B-Q8_0.gguf"]
    folder = tmp_path / "my-models"
    folder.mkdir()
    (folder / "Qwen3-0.6B-Q8_0.gguf").write_bytes(data)
    result = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "Q8_0", "--models-dir", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["local_path"] == str(folder / "Qwen3-0.6B-Q8_0.gguf")
    assert "nothing to download" in result.stderr
    assert not [p for method, p, _ in hub.requests if method == "GET" and "/resolve/" in p]


def test_pull_finds_the_very_file_in_ollamas_store_by_its_digest(hub: FakeHub, tmp_path: Path) -> None:
    repo, name = "Qwen/Qwen3-0.6B-GGUF", "Qwen3-0.6B-Q8_0.gguf"
    blobs = tmp_path / "ollama" / "blobs"
    blobs.mkdir(parents=True)
    blob = blobs / f"sha256-{hub.sha256(repo, name)}"  # Ollama names a blob by its SHA-256
    blob.write_bytes(hub.repos[repo].files[name])
    result = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "Q8_0", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["local_path"] == str(blob)
    assert "already in Ollama's store" in result.stderr
    assert f"on the Hub at {os.environ['HF_ENDPOINT']}" in result.stderr  # the endpoint (a mirror) is named
    assert not [p for method, p, _ in hub.requests if method == "GET" and "/resolve/" in p]


def test_ctrl_c_during_a_pull_keeps_the_bytes_and_the_next_pull_continues(hub: FakeHub, tmp_path: Path) -> None:
    repo, name = "lmstudio-community/Qwen3-0.6B-GGUF", "Qwen3-0.6B-Q4_K_M.gguf"
    hub.rate_bytes_per_s = 100_000  # 3 s for the 300 kB file: time to interrupt it
    env = {**os.environ, "NO_COLOR": "1"}
    pull = subprocess.Popen([QWENBENCH, "pull", "--model", "qwen3-0.6b", "--quant", "Q4_K_M"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    partial = tmp_path / "hf" / "models--lmstudio-community--Qwen3-0.6B-GGUF" / "blobs" / \
        f"{hub.sha256(repo, name)}.incomplete"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 50_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    pull.send_signal(signal.SIGINT)
    _, stderr = pull.communicate(timeout=60)
    assert pull.returncode == 130, stderr
    assert "interrupted" in stderr and "continues where it stopped" in stderr and "Traceback" not in stderr
    kept = partial.stat().st_size
    assert 50_000 <= kept < len(hub.repos[repo].files[name])

    hub.rate_bytes_per_s = None
    again = run_cli("pull", "--model", "qwen3-0.6b", "--quant", "Q4_K_M", "--json")
    assert again.returncode == 0, again.stderr
    assert Path(json.loads(again.stdout)["local_path"]).read_bytes() == hub.repos[repo].files[name]
    resumed = [r for method, p, r in hub.requests if method == "GET" and p.endswith(name)][-1]
    assert resumed == f"bytes={kept}-"
