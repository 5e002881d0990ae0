"""`qwenbench quality` end to end: real llama.cpp on a tiny synthetic F16 model and its llama-quantize'd copy."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qwenbench import quality
from qwenbench.catalog import config_dir
from qwenbench.machine import describe_machine
from qwenbench.modelfile import ModelFile, ensure_synthetic, open_model_file
from qwenbench.qualitycache import ReferenceCache, ReferenceKey
from qwenbench.qualityrun import QualityRequest, measure_quality, read_corpus, requantize
from qwenbench.recipe import tensor_table
from qwenbench.results import SCHEMA_VERSION, read_records
from qwenbench.runspec import RunSettings

from .conftest import TINY_DENSE, run_cli, tiny_spec

EN = config_dir() / "corpora" / "en.txt"


@pytest.fixture(scope="session")
def tiny_f16(model_dir: Path) -> ModelFile:
    path, _ = ensure_synthetic(tiny_spec("qwen3-0.6b", TINY_DENSE), "F16", model_dir / "tiny-f16.gguf")
    return open_model_file(path)


@pytest.fixture(scope="session")
def tiny_q2(tiny_f16: ModelFile, tmp_path_factory: pytest.TempPathFactory) -> ModelFile:
    """The F16's very weights at 2-3 bits, by llama.cpp's own quantizer."""
    return open_model_file(requantize(tiny_f16, "Q2_K", n_threads=2, log_dir=tmp_path_factory.mktemp("logs")))


def _measure(reference: ModelFile, models: list[ModelFile], corpus: Path, tmp_path: Path, n_ctx: int = 64,
             n_chunks: int = 2, top_k: int = 128):
    return measure_quality(reference, models, RunSettings(model_path="", n_threads=2),
                           QualityRequest(read_corpus(corpus, n_ctx), n_ctx, n_chunks, top_k),
                           describe_machine(), log_dir=tmp_path / "logs")


def test_a_file_against_itself_and_its_requantized_copy(tiny_f16: ModelFile, tiny_q2: ModelFile,
                                                        tmp_path: Path) -> None:
    assert tiny_q2.quant == "Q2_K" and tiny_q2.weights == "synthetic"
    csv_path = tmp_path / "q.csv"
    result = run_cli("quality", "--gguf", str(tiny_f16.path), "--gguf", str(tiny_q2.path), "--ref",
                     str(tiny_f16.path), "--corpus", "en", "--ctx", "64", "--chunks", "3", "-t", "2", "--json",
                     "--out", str(csv_path))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    same, lower = payload["rows"]
    for row in (same, lower):
        assert row["test"] == "quality" and row["status"] == "ok" and row["schema_version"] == SCHEMA_VERSION
        assert row["ref_sha256"] == tiny_f16.sha256 and row["ref_quant"] == "F16" and row["corpus"] == "en.txt"
        assert row["n_ctx"] == 64 and row["repetitions"] == 3 and len(row["samples_ns"]) == 3 and row["avg_ts"] > 0
        metrics = json.loads(row["quality_metrics"])
        assert metrics["n_tokens"] == 3 * quality.scored_per_chunk(64) and metrics["top_k"] == quality.DEFAULT_TOP_K
    assert abs(same["kld_mean"]) < 1e-9 and same["ppl_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert same["same_top"] == 1.0 and same["ppl"] == pytest.approx(same["ppl_ref"], rel=1e-9)
    assert lower["quant"] == "Q2_K" and lower["kld_mean"] > 1e3 * max(abs(same["kld_mean"]), 1e-12)
    assert lower["kld_p99"] >= lower["kld_mean"] and lower["ppl_ref"] == pytest.approx(same["ppl_ref"], rel=1e-6)
    assert lower["ppl_ratio"] != pytest.approx(1.0, abs=1e-6)
    assert [r["quant"] for r in read_records(csv_path)] == ["F16", "Q2_K"]
    assert payload["reference_chunks_computed"] == 3


def test_the_reference_is_cached_extended_and_invalidated(tiny_f16: ModelFile, tmp_path: Path) -> None:
    first = _measure(tiny_f16, [], EN, tmp_path, n_ctx=32, n_chunks=2)
    assert (first.reference_chunks_computed, first.reference_chunks_cached) == (2, 0)
    again = _measure(tiny_f16, [], EN, tmp_path, n_ctx=32, n_chunks=2)
    assert (again.reference_chunks_computed, again.reference_chunks_cached) == (0, 2)
    assert again.reference_dir == first.reference_dir
    more = _measure(tiny_f16, [], EN, tmp_path, n_ctx=32, n_chunks=3)  # the same folder, one chunk more
    assert (more.reference_chunks_computed, more.reference_chunks_cached) == (1, 2)
    assert ReferenceCache(more.reference_dir).chunks_done() == 3
    edited = tmp_path / "en-edited.txt"
    edited.write_text(EN.read_text() + "\nOne more line.\n")
    other = _measure(tiny_f16, [], edited, tmp_path, n_ctx=32, n_chunks=2)
    assert other.reference_dir != first.reference_dir and other.reference_chunks_computed == 2


def test_every_part_of_the_key_makes_another_reference() -> None:
    key = ReferenceKey("a" * 64, "b" * 64, 512, 128, "0.3.36")
    others = [replace(key, model_sha256="c" * 64), replace(key, corpus_sha256="d" * 64), replace(key, n_ctx=256),
              replace(key, top_k=64), replace(key, llama_cpp="0.3.37")]
    digests = {key.digest, *(k.digest for k in others)}
    assert len(digests) == 6 and key.digest == ReferenceKey("a" * 64, "b" * 64, 512, 128, "0.3.36").digest


def test_figures_match_a_direct_computation_over_llama_cpp_logits(tiny_f16: ModelFile, tiny_q2: ModelFile,
                                                                   tmp_path: Path) -> None:
    import llama_cpp

    n_ctx, n_chunks = 32, 2
    n_vocab = tiny_f16.header.n_vocab
    # the whole vocabulary kept: the top-k figure is then the exact KLD, to compare with a direct one
    report = _measure(tiny_f16, [tiny_q2], EN, tmp_path, n_ctx=n_ctx, n_chunks=n_chunks, top_k=n_vocab)
    row = report.records[0]
    tokens = ReferenceCache(report.reference_dir).tokens()

    def scored_logits(path: Path) -> np.ndarray:
        # flash attention on, as llama.cpp's "auto" (the quality pass's setting) resolves on a CPU
        llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=2,
                              flash_attn=True, verbose=False)
        add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))
        rows = []
        for index in range(n_chunks):
            llm.reset()
            llm._ctx.kv_cache_clear()
            llm.eval(quality.chunk_tokens(tokens, index, n_ctx, llm.token_bos() if add_bos else None))
            rows.append(np.array(llm.scores[quality.first_scored(n_ctx):n_ctx - 1], dtype=np.float64))
        llm.close()
        return np.concatenate(rows)

    p_logits, q_logits = scored_logits(tiny_f16.path), scored_logits(tiny_q2.path)
    targets = np.concatenate([quality.chunk_targets(tokens, i, n_ctx) for i in range(n_chunks)])

    def logprobs(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = logprobs(p_logits), logprobs(q_logits)
    kld = (np.exp(lp) * (lp - lq)).sum(axis=1)
    rows = np.arange(len(targets))
    assert row.kld_mean == pytest.approx(kld.mean(), rel=1e-4)
    assert row.kld_p99 == pytest.approx(np.percentile(kld, 99), rel=1e-4)
    assert row.ppl == pytest.approx(np.exp(-lq[rows, targets].mean()), rel=1e-6)
    assert row.ppl_ref == pytest.approx(np.exp(-lp[rows, targets].mean()), rel=1e-6)
    assert row.same_top == pytest.approx((p_logits.argmax(1) == q_logits.argmax(1)).mean())


@pytest.mark.parametrize(("content", "said"), [
    (b"", "is empty"),
    (b"  \n\t\n", "is empty"),
    (b"\x00\x01\x02GGUF" * 400, "is not UTF-8 text"),
    (b"\xff\xfe\xfd text" * 400, "is not UTF-8 text"),
    (b"A few words only.", "too short for one chunk of 512 tokens"),
])
def test_a_bad_corpus_is_one_line(tiny_f16: ModelFile, tmp_path: Path, content: bytes, said: str) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    result = run_cli("quality", "--gguf", str(tiny_f16.path), "--ref", str(tiny_f16.path), "--corpus", str(corpus),
                     "--out", str(tmp_path / "q.csv"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error:") and said in lines[0] and lines[1].startswith("hint:")
    assert not (tmp_path / "q.csv").exists()


def test_ctrl_c_keeps_the_finished_chunks(tiny_f16: ModelFile, tiny_q2: ModelFile, tmp_path: Path) -> None:
    """A real SIGINT to this process (what Ctrl-C sends) once a pass has finished a few chunks: the reference keeps
    them in its cache, a scored model keeps them as an interrupted row with their figures."""
    def interrupt_after(pass_name: str, index: int):
        sent: list[bool] = []

        def on_event(event: dict) -> None:
            if (event.get("event") == "quality_chunk" and event["pass"] == pass_name and event["index"] >= index
                    and not sent):
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)
        return on_event

    def measure(on_event):
        return measure_quality(tiny_f16, [tiny_q2], RunSettings(model_path="", n_threads=2),
                               QualityRequest(read_corpus(EN, 32), 32, 12, 128), describe_machine(),
                               log_dir=tmp_path / "logs", on_event=on_event)

    stopped = measure(interrupt_after("reference", 1))
    assert stopped.interrupted and not stopped.records and stopped.stop_signal == signal.SIGINT
    kept = ReferenceCache(stopped.reference_dir).chunks_done()
    assert 2 <= kept < 12
    scored = measure(interrupt_after(tiny_q2.path.name, 1))
    assert scored.reference_chunks_cached == kept and scored.reference_chunks_computed == 12 - kept
    row, = scored.records
    assert scored.interrupted and row.status == "interrupted" and "Ctrl-C" in row.error
    done = row.repetitions
    assert 2 <= done < 12 and f"after {done} of 12 chunks" in row.error
    assert row.kld_mean > 0 and json.loads(row.quality_metrics)["n_tokens"] == done * quality.scored_per_chunk(32)


def test_the_precision_ladder_from_an_f32_reference(tmp_path: Path) -> None:
    """An F32 reference and llama-quantize's copies of it down the ladder: the divergence rises as bits fall."""
    spec = tiny_spec("qwen2.5-3b-instruct", TINY_DENSE)
    path, _ = ensure_synthetic(spec, "F32", tmp_path / "tiny-f32.gguf")
    reference = open_model_file(path)
    copies = [open_model_file(requantize(reference, quant, n_threads=2, log_dir=tmp_path / "logs"))
              for quant in ("BF16", "Q8_0", "Q3_K_M")]
    assert [c.quant for c in copies] == ["BF16", "Q8_0", "Q3_K_M"]
    assert copies[0].header.table == tensor_table(spec, "BF16")  # llama-quantize's types are the recipe's
    report = _measure(reference, [reference, *copies], EN, tmp_path, n_ctx=64, n_chunks=2)
    kld = {r.quant: r.kld_mean for r in report.records}
    assert all(r.status == "ok" and r.ref_quant == "F32" for r in report.records)
    # random weights give near-uniform logits, so every KLD is small (here 3e-11, 8e-10, 5e-9, 3e-7): the order is
    # what holds, each step 7x or more above the last
    assert abs(kld["F32"]) < 1e-9
    assert kld["F32"] < kld["BF16"] < kld["Q8_0"] < kld["Q3_K_M"], kld
