"""Bad inputs give one clear line, a hint, a non-zero exit and no traceback; help is light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_cli


def assert_one_clear_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error:"), result.stderr
    for needle in needles:
        assert needle in result.stderr


@pytest.mark.parametrize(("args", "needles"), [
    (["run", "--model", "qwen3-9b", "--synthetic"], ["unknown model 'qwen3-9b'", "hint:"]),
    (["run", "--model", "qwen3-4b", "--quant", "Q7_K", "--synthetic"], ["unknown quant 'Q7_K'", "Q4_K_M"]),
    (["run", "--gguf", "/nonexistent/model.gguf"], ["no such file"]),
    (["run", "-p", "abc", "--gguf", "x.gguf"], ["-p/--n-prompt: 'abc' is not a whole number"]),
    (["run", "-r", "0", "--gguf", "x.gguf"], ["-r/--repetitions must be >= 1"]),
    (["run", "-t", "-3", "--gguf", "x.gguf"], ["-t/--threads must be from 1 to 512"]),
    (["run", "-t", "100000", "--gguf", "x.gguf"], ["-t/--threads must be from 1 to 512"]),
    (["run", "-fa", "maybe", "--gguf", "x.gguf"], ["-fa/--flash-attn must be one of"]),
    (["run", "-ctv", "q8_0", "-fa", "off", "--gguf", "x.gguf"], ["needs flash attention"]),
    (["run", "-p", "0", "-n", "0", "--no-ttft", "--gguf", "x.gguf"], ["nothing to measure"]),
    (["run", "-c", "100", "--gguf", "x.gguf"], ["pp512 needs a context of 512 tokens"]),
    (["run"], ["no model given"]),
    (["run", "--gguf", "x.gguf", "--quant", "Q4_K_M"], ["go with --model"]),
    (["run", "--gguf", "x.gguf", "--repo", "a/b"], ["go with --model"]),
    (["synth", "--model", "qwen3-4b", "--quant", "Q4_K_M", "--out", "x.gguf", "--layers", "0"], [">= 1"]),
])
def test_bad_inputs(args: list[str], needles: list[str], tmp_path: Path) -> None:
    assert_one_clear_error(run_cli(*args, cwd=tmp_path), *needles)


def test_bad_files_are_rejected_before_llama_cpp(tiny_dense: Path, tmp_path: Path) -> None:
    html = tmp_path / "page.gguf"
    html.write_text("<html>404</html>")
    assert_one_clear_error(run_cli("run", "--gguf", str(html), "--out", str(tmp_path / "r.csv")), "not a GGUF")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_dense.read_bytes()[:-100000])
    assert_one_clear_error(run_cli("run", "--gguf", str(cut), "--out", str(tmp_path / "r.csv")), "truncated")
    assert not (tmp_path / "r.csv").exists()


def test_synth_writes_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "t.gguf"
    result = run_cli("synth", "--model", "qwen3-30b-a3b", "--quant", "Q3_K_L", "--out", str(out), "--layers", "1",
                     "--hidden", "64", "--ff", "128", "--heads", "2", "--kv-heads", "1", "--head-dim", "32",
                     "--experts", "4", "--experts-used", "2", "--expert-ff", "64", "--json")
    assert result.returncode == 0, result.stderr
    assert out.exists() and '"quant": "Q3_K_L"' in result.stdout


def test_synth_keeps_the_mtp_block_on_request(tmp_path: Path) -> None:
    from qwenbench.gguf_info import read_header

    out = tmp_path / "h.gguf"
    result = run_cli("synth", "--model", "qwen3.5-0.8b", "--out", str(out), "--layers", "4", "--hidden", "64",
                     "--ff", "128", "--heads", "2", "--kv-heads", "1", "--head-dim", "64", "--mtp", "--json")
    assert result.returncode == 0, result.stderr
    header = read_header(out)
    assert header.arch_value("block_count") == 5 and header.arch_value("nextn_predict_layers") == 1
    assert "blk.4.nextn.eh_proj.weight" in header.table.by_name() and header.n_vocab == 248320
    assert_one_clear_error(run_cli("synth", "--model", "qwen3-0.6b", "--out", str(tmp_path / "d.gguf"), "--mtp"),
                           "has no MTP block")


def test_models_lists_the_catalog() -> None:
    result = run_cli("models", "--json")
    assert result.returncode == 0
    assert '"qwen3-30b-a3b"' in result.stdout and '"Q3_K_L"' in result.stdout
    listed = json.loads(result.stdout)
    models = {m["key"]: m for m in listed["models"]}
    assert models["qwen3.6-35b-a3b"]["arch"] == "qwen35moe"
    assert models["qwen3.6-35b-a3b"]["attention"] == "30 linear + 10 full"
    assert 3.3e9 < models["qwen3.6-35b-a3b"]["params_active"] < 3.6e9
    assert models["qwen3-8b"]["attention"] == "full"
    assert [u["key"] for u in listed["unsupported"]] == ["qwen3.8-flash-next"]
    table = run_cli("models")
    assert "30 linear + 10 full" in table.stdout and "not supported: qwen3.8-flash-next (qwen4exp)" in table.stdout
    refused = run_cli("plan", "--model", "qwen3.8-flash-next", "--offline")
    assert refused.returncode != 0 and "not supported" in refused.stderr


def test_help_does_not_import_heavy_modules() -> None:
    code = ("import sys, qwenbench.cli; "
            "heavy = [m for m in ('llama_cpp', 'pandas', 'numpy', 'gguf', 'matplotlib') if m in sys.modules]; "
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    help_text = run_cli("run", "--help").stdout
    assert "-ngl" in help_text and "--n-gpu-layers" in help_text and "--flash-attn" in help_text
