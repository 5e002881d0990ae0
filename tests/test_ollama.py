"""Models in Ollama's store, used in place: a store laid out as Ollama lays it out (manifests naming blobs by
digest, the model blob a GGUF) in a temp dir, read through the real code and run on real llama.cpp."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from qwenbench.errors import InvalidModelFileError, UsageError
from qwenbench.ollama import MODEL_MEDIA_TYPE, find_model, installed, parse_reference, store_roots
from qwenbench.results import read_records

from .conftest import run_cli
from .test_inputs import assert_refused

CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"


def _put_blob(root: Path, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(content)
    return digest


def _put_manifest(root: Path, name: str, tag: str, layers: list[dict], config: dict | None = None) -> None:
    path = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schemaVersion": 2, "config": config or {}, "layers": layers}))


@pytest.fixture
def store(tmp_path: Path, tiny_dense: Path) -> Path:
    """Ollama's store with qwen3:0.6b (a config blob, a template, the GGUF) and a few broken entries."""
    root = tmp_path / "ollama-models"
    model = _put_blob(root, tiny_dense.read_bytes())
    config = _put_blob(root, b'{"model_format":"gguf"}')
    template = _put_blob(root, b"{{ .Prompt }}")
    layers = [{"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{model}", "size": tiny_dense.stat().st_size},
              {"mediaType": "application/vnd.ollama.image.template", "digest": f"sha256:{template}", "size": 13}]
    config_layer = {"mediaType": CONFIG_MEDIA_TYPE, "digest": f"sha256:{config}"}
    _put_manifest(root, "qwen3", "0.6b", layers, config_layer)
    _put_manifest(root, "qwen3", "latest", layers, config_layer)
    _put_manifest(root, "gone", "1b", [{"mediaType": MODEL_MEDIA_TYPE, "digest": "sha256:" + "0" * 64}])
    _put_manifest(root, "adapter-only", "latest", [{"mediaType": "application/vnd.ollama.image.adapter",
                                                     "digest": f"sha256:{template}"}])
    _put_manifest(root, "escape", "latest", [{"mediaType": MODEL_MEDIA_TYPE, "digest": "sha256:../../../etc/passwd"}])
    onnx = _put_blob(root, b"\x08\x07not a gguf")
    _put_manifest(root, "onnx", "latest", [{"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{onnx}"}])
    return root


def test_names_parse_as_ollama_names_them() -> None:
    assert parse_reference("qwen3") == ("registry.ollama.ai", "library", "qwen3", "latest")
    assert parse_reference("qwen3:30b-a3b") == ("registry.ollama.ai", "library", "qwen3", "30b-a3b")
    assert parse_reference("someone/qwen3-tuned:q4_K_M") == ("registry.ollama.ai", "someone", "qwen3-tuned", "q4_K_M")
    assert parse_reference("hf.co/unsloth/Qwen3-8B-GGUF:Q4_K_M") == ("hf.co", "unsloth", "Qwen3-8B-GGUF", "Q4_K_M")
    for bad in ("", "a/b/c/d", "qwen3:", "qwen 3", "../etc:passwd"):
        with pytest.raises(UsageError, match="is not an Ollama model name"):
            parse_reference(bad)


def test_the_store_is_where_ollama_keeps_it(tmp_path: Path) -> None:
    assert store_roots({"OLLAMA_MODELS": str(tmp_path)}, home=Path("/home/u")) == [tmp_path]
    assert store_roots({}, home=Path("/home/u")) == [Path("/home/u/.ollama/models"),
                                                     Path("/usr/share/ollama/.ollama/models")]


def test_a_model_resolves_to_its_gguf_blob_and_every_fault_is_one_line(store: Path, tiny_dense: Path) -> None:
    found = find_model("qwen3:0.6b", [store])
    assert found.blob.read_bytes() == tiny_dense.read_bytes() and found.reference == "qwen3:0.6b"
    assert found.sha256 == hashlib.sha256(tiny_dense.read_bytes()).hexdigest()
    assert find_model("qwen3", [store]).blob == found.blob  # the latest tag
    assert "qwen3:0.6b" in installed([store])
    with pytest.raises(UsageError, match="Ollama has no qwen3:8b") as caught:
        find_model("qwen3:8b", [store])
    assert "qwen3:0.6b" in caught.value.hint and "qwen3:latest" in caught.value.hint  # the tags it does have
    with pytest.raises(InvalidModelFileError, match="model blob of Ollama's gone:1b is missing"):
        find_model("gone:1b", [store])
    with pytest.raises(InvalidModelFileError, match="has no model layer"):
        find_model("adapter-only", [store])
    with pytest.raises(InvalidModelFileError, match="is not a GGUF"):
        find_model("onnx", [store])
    with pytest.raises(InvalidModelFileError, match="has no model layer"):  # a digest that is not one names no path
        find_model("escape", [store])
    with pytest.raises(UsageError, match="Ollama has no qwen3:latest") as caught:
        find_model("qwen3", [store.parent / "empty"])
    assert "set OLLAMA_MODELS" in caught.value.hint


def test_run_and_plan_use_an_ollama_model_in_place(store: Path, tmp_path: Path) -> None:
    env = {"OLLAMA_MODELS": str(store)}
    before = {p.name: p.stat().st_mtime_ns for p in (store / "blobs").iterdir()}
    out = tmp_path / "rows.csv"
    result = run_cli("run", "--ollama", "qwen3:0.6b", "-p", "8", "-n", "4", "-r", "1", "--no-ttft", "-t", "1",
                     "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    rows = read_records(out)
    found = find_model("qwen3:0.6b", [store])
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["model_filename"] for r in rows} == {"ollama:qwen3:0.6b"}
    assert {r["model_sha256"] for r in rows} == {found.sha256}  # its content address, not a re-hash
    assert {r["model_key"] for r in rows} == {"qwen3-0.6b"}
    assert {p.name: p.stat().st_mtime_ns for p in (store / "blobs").iterdir()} == before  # read-only
    planned = run_cli("plan", "--ollama", "qwen3:0.6b", "--ctx", "512", "--json", "--no-calibrate", env=env)
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["model"] == "ollama:qwen3:0.6b"
    # a Modelfile for it builds on the Ollama model by name; llama-server reads its blob
    modelfile = run_cli("plan", "--ollama", "qwen3:0.6b", "--no-calibrate", "--export", "ollama", env=env).stdout
    assert "FROM qwen3:0.6b\n" in modelfile
    server = run_cli("plan", "--ollama", "qwen3:0.6b", "--no-calibrate", "--export", "llama-server", env=env).stdout
    assert f"-m {found.blob}" in server
    assert_refused(run_cli("run", "--ollama", "qwen3:8b", env=env), "Ollama has no qwen3:8b", "qwen3:0.6b")
    assert_refused(run_cli("run", "--ollama", "onnx", env=env), "is not a GGUF")
    assert_refused(run_cli("run", "--ollama", "qwen3", "--gguf", str(shutil.which("true")), env=env),
                   "give one of --gguf, --model or --ollama")
    assert_refused(run_cli("plan", "--ollama", "qwen3", "--quant", "Q8_0", env=env), "a local file is planned")


def test_a_suite_measures_an_ollama_model_and_names_a_missing_one(store: Path, tmp_path: Path) -> None:
    env = {"OLLAMA_MODELS": str(store)}
    suite = tmp_path / "suite.toml"
    suite.write_text('[suite]\nmodes = ["cpu"]\nn_prompt = [8]\nn_gen = [4]\nrepetitions = 1\nttft = false\n'
                     'threads = 1\n[[model]]\nollama = "qwen3:0.6b"\n')
    out = tmp_path / "rows.csv"
    result = run_cli("bench", "--config", str(suite), "--out", str(out), "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    rows = read_records(out)
    assert {(r["status"], r["model_filename"], r["mode"]) for r in rows} == {("ok", "ollama:qwen3:0.6b", "cpu")}
    suite.write_text('[[model]]\nollama = "qwen3:8b"\n')
    assert_refused(run_cli("bench", "--config", str(suite), "--dry-run", env=env),
                   "model[0].ollama: Ollama has no qwen3:8b")
