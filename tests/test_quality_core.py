"""The quality arithmetic (qwenbench.quality) against direct numpy computations over the whole vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from qwenbench import quality


def _logits(rng: np.random.Generator, n: int, n_vocab: int, sharpness: float) -> np.ndarray:
    """Logits shaped like a trained model's: a few likely tokens over a long tail."""
    return (rng.standard_normal((n, n_vocab)) * sharpness).astype(np.float32)


def _direct_kld(ref_logits: np.ndarray, test_logits: np.ndarray) -> np.ndarray:
    """KL(P || Q) summed over the whole vocabulary, in float64, from scratch."""
    def probs(x: np.ndarray) -> np.ndarray:
        e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    p, q = probs(ref_logits), probs(test_logits)
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def test_chunking_scores_the_second_half_like_llama_perplexity() -> None:
    tokens = list(range(100, 100 + 1100))
    assert quality.chunk_count(len(tokens), 512) == 2  # the tail of 76 tokens is left out
    assert quality.chunk_count(len(tokens), 512, n_chunks=1) == 1
    assert quality.chunk_count(300, 512) == 0
    assert quality.first_scored(512) == 256 and quality.scored_per_chunk(512) == 255
    chunk = quality.chunk_tokens(tokens, 1, 512, bos=7)
    assert chunk[0] == 7 and chunk[1:] == tokens[513:1024]
    assert quality.chunk_tokens(tokens, 0, 512, bos=None) == tokens[:512]
    targets = quality.chunk_targets(tokens, 1, 512)
    # logits at positions 256..510 of the chunk predict the tokens at 257..511
    assert len(targets) == 255 and targets[0] == tokens[512 + 257] and targets[-1] == tokens[1023]
    with pytest.raises(ValueError):
        quality.chunk_tokens(tokens, 2, 512, bos=None)


def test_log_softmax_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    logits = _logits(rng, 4, 1000, 3.0)
    direct = np.log(np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum(1, keepdims=True))
    np.testing.assert_allclose(quality.log_softmax(logits), direct, rtol=0, atol=1e-10)
    # shift invariance: large logits do not overflow
    np.testing.assert_allclose(quality.log_softmax(logits.astype(np.float64) + 1e4), direct, rtol=0, atol=1e-9)


def test_compact_keeps_the_top_k_in_order_and_the_tail_mass() -> None:
    rng = np.random.default_rng(1)
    logits = _logits(rng, 6, 500, 2.0)
    logits[0, [3, 9]] = 50.0  # a tie at the top: the lower id first, as llama-perplexity's strict `>` scan
    targets = rng.integers(0, 500, 6)
    ref = quality.compact(logits, targets, top_k=16)
    logp = quality.log_softmax(logits)
    assert ref.top_ids.shape == (6, 16) and ref.top_ids.dtype == np.int32
    assert list(ref.top_ids[0, :2]) == [3, 9]
    for row in range(6):
        expected = np.argsort(-logp[row], kind="stable")[:16]
        assert list(ref.top_ids[row]) == list(expected)
        np.testing.assert_allclose(ref.top_logprobs[row], logp[row, expected], rtol=1e-6)
        tail = np.exp(np.delete(logp[row], expected)).sum()
        assert ref.tail_mass[row] == pytest.approx(tail, rel=1e-9)
    np.testing.assert_allclose(ref.target_logprob, logp[np.arange(6), targets], rtol=0, atol=1e-12)


def test_a_distribution_against_itself_has_kld_0_and_ppl_ratio_1() -> None:
    rng = np.random.default_rng(2)
    logits = _logits(rng, 40, 2000, 4.0)
    targets = rng.integers(0, 2000, 40)
    ref = quality.compact(logits, targets, top_k=32)
    scores = quality.score(logits, targets, ref)
    assert np.abs(scores.kld).max() < 1e-6
    assert scores.same_top.all()
    summary = quality.summarize([scores])
    assert summary.ppl_ratio == pytest.approx(1.0, abs=1e-12)
    assert summary.same_top == 1.0 and summary.n_tokens == 40


def test_full_vocabulary_kld_equals_the_direct_one() -> None:
    rng = np.random.default_rng(3)
    ref_logits = _logits(rng, 20, 300, 3.0)
    test_logits = ref_logits + _logits(rng, 20, 300, 0.3)  # a quantization's noise
    targets = rng.integers(0, 300, 20)
    ref = quality.compact(ref_logits, targets, top_k=300)
    assert np.all(ref.tail_mass < 1e-12)
    scores = quality.score(test_logits, targets, ref)
    np.testing.assert_allclose(scores.kld, _direct_kld(ref_logits, test_logits), rtol=1e-5, atol=1e-9)


def test_top_k_kld_is_a_lower_bound_within_its_stated_error() -> None:
    rng = np.random.default_rng(4)
    ref_logits = _logits(rng, 30, 3000, 3.5)
    test_logits = ref_logits + _logits(rng, 30, 3000, 0.4)
    targets = rng.integers(0, 3000, 30)
    direct = _direct_kld(ref_logits, test_logits)
    previous_gap = np.inf
    for k in (8, 64, 512):
        ref = quality.compact(ref_logits, targets, top_k=k)
        estimate = quality.score(test_logits, targets, ref).kld
        gap = direct - estimate
        assert np.all(gap >= -1e-9)  # never above the true KLD
        assert np.all(gap <= quality.tail_error_bound(test_logits, ref) + 1e-9)
        assert gap.mean() < previous_gap  # a larger k leaves less out
        previous_gap = gap.mean()


def test_perplexity_and_same_top_against_a_direct_computation() -> None:
    rng = np.random.default_rng(5)
    ref_logits = _logits(rng, 50, 400, 3.0)
    test_logits = ref_logits + _logits(rng, 50, 400, 1.0)
    targets = rng.integers(0, 400, 50)
    ref = quality.compact(ref_logits, targets, top_k=10)
    halves = [quality.score(test_logits[:25], targets[:25], _rows(ref, slice(0, 25))),
              quality.score(test_logits[25:], targets[25:], _rows(ref, slice(25, 50)))]
    summary = quality.summarize(halves)

    def nll(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return np.log(np.exp(x).sum(1)) - x[np.arange(50), targets]

    assert summary.ppl == pytest.approx(np.exp(nll(test_logits).mean()), rel=1e-9)
    assert summary.ppl_ref == pytest.approx(np.exp(nll(ref_logits).mean()), rel=1e-9)
    assert summary.ppl_ratio == pytest.approx(summary.ppl / summary.ppl_ref, rel=1e-9)
    same = (test_logits.argmax(1) == ref_logits.argmax(1)).mean()
    assert summary.same_top == pytest.approx(same) and 0 < same < 1
    kld = np.concatenate([h.kld for h in halves])
    # llama-perplexity's percentile: linear between the sorted values around fraction * (n - 1)
    ordered = np.sort(kld)
    at = 0.99 * (len(kld) - 1)
    low = int(at)
    expected = (1 - (at - low)) * ordered[low] + (at - low) * ordered[min(low + 1, len(kld) - 1)]
    assert summary.kld_p99 == pytest.approx(expected, rel=1e-9)
    assert summary.kld_mean == pytest.approx(kld.mean()) and summary.kld_max == kld.max()
    assert summary.kld_sd == pytest.approx(kld.std() / np.sqrt(len(kld) - 1), rel=1e-6)


def _rows(ref: quality.CompactReference, rows: slice) -> quality.CompactReference:
    return quality.CompactReference(ref.top_ids[rows], ref.top_logprobs[rows], ref.tail_mass[rows],
                                    ref.target_logprob[rows])


def test_summarize_refuses_nothing() -> None:
    with pytest.raises(ValueError):
        quality.summarize([])


def test_the_published_priors_name_known_quants_in_their_order() -> None:
    import tomllib

    from qwenbench.catalog import config_dir
    from qwenbench.quants import PRESETS

    priors = tomllib.loads((config_dir() / "quant_quality.toml").read_text())
    assert priors["source"]["reference"] == "F16" and priors["source"]["n_ctx"] == 512
    quants = priors["quants"]
    assert set(quants) <= {*PRESETS, "F32"}  # F32: the reference itself, a preset of its own on issue 13's branch
    assert all(entry["ppl_ratio"] >= 1 for entry in quants.values())
    # what a quant loses is positive; the full-precision types' figures are the reference's own (0) or F16's
    assert all(entry["kld"] > 0 for name, entry in quants.items() if name not in ("F32", "BF16"))
    assert quants["F32"]["kld"] == quants["BF16"]["kld"] == 0
    ladder = [quants[name]["kld"] for name in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")]
    assert ladder == sorted(ladder)  # fewer bits, more divergence


def test_one_default_top_k() -> None:
    from qwenbench.runspec import QualitySettings, RunSettings

    assert QualitySettings(RunSettings(model_path=""), "test", "").top_k == quality.DEFAULT_TOP_K
