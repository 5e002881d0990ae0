"""What a quant costs in quality: perplexity and the KL divergence of its next-token distributions from a reference's.

Pure arithmetic over logits (numpy, no I/O), with llama-perplexity's definitions (tools/perplexity/perplexity.cpp,
llama.cpp commit 0c1e570), so its figures and ours compare on the same files, corpus and context:

- The corpus is tokenized once, as a whole (the vocabulary's BOS added if it adds one), and cut into chunks of
  n_ctx tokens; a tail shorter than a chunk is left out. Each chunk is decoded on its own, from an empty cache, its
  first token replaced by BOS when the vocabulary adds one.
- Only the second half of a chunk is scored, so every scored token has at least n_ctx/2 tokens of context: the
  logits at positions n_ctx/2 .. n_ctx-2 predict the tokens at n_ctx/2+1 .. n_ctx-1 (n_ctx - 1 - n_ctx/2 tokens a
  chunk: 255 at 512).
- Perplexity is exp(mean negative log-likelihood) over every scored token; the ratio to the reference's is
  exp(mean(nll) - mean(nll_ref)), which is PPL(Q) / PPL(ref).
- KLD at a position is KL(P_ref || Q) = sum_i p_i (log p_i - log q_i); the mean is over positions, the 99th
  percentile is the linear interpolation at 0.99 (n - 1) of the sorted values (numpy's default, and
  llama-perplexity's `percentile`).
- Same top token: the argmax of the two distributions agree (the first index on a tie).

Where we differ, and why: llama-perplexity keeps the reference's log-probabilities of the whole vocabulary as
uint16 (a step of up to 16/65535 in log space, everything below max - 16 clamped), gigabytes for a real corpus; we
keep the reference's top-k log-probabilities exactly (float32) and its tail mass, and score the tail as one
bucket (see `score`). llama-perplexity also drops the KLD terms of tokens whose reference log-probability is at
or below -16; we keep every term of the top k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_TOP_K = 512  # within 1 % of llama-perplexity on Gemma 3 270M, whose top 128 leave 4 % of the mass out


def first_scored(n_ctx: int) -> int:
    """The first position of a chunk whose logits are scored (llama-perplexity's `first = n_ctx/2`)."""
    return n_ctx // 2


def scored_per_chunk(n_ctx: int) -> int:
    """Tokens scored per chunk: positions n_ctx/2 .. n_ctx-2 each predict the next token."""
    return n_ctx - 1 - first_scored(n_ctx)


def chunk_count(n_tokens: int, n_ctx: int, n_chunks: int = 0) -> int:
    """Whole chunks of n_ctx tokens the corpus holds, at most n_chunks of them (0: all)."""
    whole = n_tokens // n_ctx
    return min(whole, n_chunks) if n_chunks > 0 else whole


def chunk_tokens(tokens: Sequence[int], index: int, n_ctx: int, bos: int | None) -> list[int]:
    """The tokens chunk `index` decodes: its first replaced by BOS where the vocabulary adds one, as
    llama-perplexity does for every chunk (the cut falls mid-text: BOS is the start the model knows)."""
    chunk = [int(t) for t in tokens[index * n_ctx:(index + 1) * n_ctx]]
    if len(chunk) != n_ctx:
        raise ValueError(f"chunk {index} has {len(chunk)} tokens, not {n_ctx}")
    if bos is not None:
        chunk[0] = bos
    return chunk


def chunk_targets(tokens: Sequence[int], index: int, n_ctx: int) -> np.ndarray:
    """The tokens the scored positions of chunk `index` predict (the corpus's own: never the BOS put in front)."""
    start = index * n_ctx + first_scored(n_ctx) + 1
    return np.asarray(tokens[start:(index + 1) * n_ctx], dtype=np.int64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Per-row log-probabilities, in float64 (a 151,936-way sum in float32 loses the small terms)."""
    shifted = np.array(logits, dtype=np.float64)  # a copy, then worked on in place: one array of the size, not four
    shifted -= shifted.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


@dataclass(frozen=True)
class CompactReference:
    """The reference's next-token distributions at n positions, compactly: its top k tokens (highest first, the
    lower id first on a tie) with their log-probabilities, the probability mass of all the others, and the
    log-probability it gave each position's actual next token (its perplexity, whether that token is in the top k
    or not)."""

    top_ids: np.ndarray  # (n, k) int32
    top_logprobs: np.ndarray  # (n, k) float32
    tail_mass: np.ndarray  # (n,) float64: 1 - the top k's probability, from the full distribution
    target_logprob: np.ndarray  # (n,) float64

    @property
    def n_positions(self) -> int:
        return int(self.top_ids.shape[0])


def compact(logits: np.ndarray, targets: np.ndarray, top_k: int = DEFAULT_TOP_K) -> CompactReference:
    """The compact reference of n positions' logits (n, n_vocab) and their next tokens (n,)."""
    raw = np.asarray(logits)
    logprobs = log_softmax(raw)
    n, n_vocab = logprobs.shape
    k = max(1, min(top_k, n_vocab))
    # the top k found on the logits as they came (float32: half the time of float64, the same order)
    top = (np.argpartition(raw, n_vocab - k, axis=1)[:, n_vocab - k:] if k < n_vocab
           else np.tile(np.arange(n_vocab), (n, 1)))
    top = np.sort(top, axis=1)  # ids ascending, so the stable sort below puts the lower id first on a tie
    values = np.take_along_axis(logprobs, top, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    # in float64, 1 - head loses nothing that matters: a tail of 1e-12 weighs 1e-12 in the KLD
    tail = np.clip(1.0 - np.exp(values).sum(axis=1), 0.0, 1.0)
    rows = np.arange(n)
    return CompactReference(top.astype(np.int32), values.astype(np.float32), tail,
                            logprobs[rows, np.asarray(targets, dtype=np.int64)])


@dataclass(frozen=True)
class PositionScores:
    """What one stretch of scored positions gave: per position KLD, the test's and the reference's negative
    log-likelihood of the actual next token, and whether their top tokens agree."""

    kld: np.ndarray  # (n,) float64
    nll: np.ndarray  # (n,) float64
    nll_ref: np.ndarray  # (n,) float64
    same_top: np.ndarray  # (n,) bool


def score(logits: np.ndarray, targets: np.ndarray, reference: CompactReference) -> PositionScores:
    """Score a test model's logits (n, n_vocab) at the positions of `reference`.

    KLD is split over the reference's top k (K) and the rest (the tail, mass T for the reference, Q_T for the test):
        KL = sum_{i in K} p_i (log p_i - log q_i)  +  sum_{i not in K} p_i (log p_i - log q_i).
    The reference's tail is not kept token by token, so the second sum is taken as one bucket, T log(T / Q_T):
    the KL divergence of the two distributions with the tail merged into one outcome. The error is exactly
        T * KL(P_tail / T || Q_tail / Q_T)  >= 0,
    T times the divergence of the two tails' shapes, so the figure is a lower bound of the true KLD, exact when
    the test's tail is the reference's scaled; it is small when T is (the top few hundred of a trained model hold
    most of the mass). Since every tail token has p_i <= p_k (the k-th largest), the error is at most
        T * (log(p_k / min_{i not in K} q_i) - log(T / Q_T)),
    which `tail_error_bound` gives from what is at hand here.
    """
    logq = log_softmax(logits)
    rows = np.arange(logq.shape[0])
    p_logs = reference.top_logprobs.astype(np.float64)
    q_top = np.take_along_axis(logq, reference.top_ids.astype(np.int64), axis=1)
    head = (np.exp(p_logs) * (p_logs - q_top)).sum(axis=1)
    tail_p = reference.tail_mass
    tail_q = np.clip(1.0 - np.exp(q_top).sum(axis=1), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(tail_p > 0, tail_p * (np.log(tail_p) - np.log(np.maximum(tail_q, 1e-300))), 0.0)
    # argmax takes the first index on a tie, as llama-perplexity's strict `>` scan does
    same_top = np.asarray(logits).argmax(axis=1) == reference.top_ids[:, 0]
    return PositionScores(head + tail, -logq[rows, np.asarray(targets, dtype=np.int64)], -reference.target_logprob,
                          same_top)


def tail_error_bound(logits: np.ndarray, reference: CompactReference) -> np.ndarray:
    """Per position, an upper bound of what the tail bucket of `score` leaves out of the true KLD (see there)."""
    logq = log_softmax(logits)
    ids = reference.top_ids.astype(np.int64)
    in_top = np.zeros(logq.shape, dtype=bool)
    np.put_along_axis(in_top, ids, True, axis=1)
    min_tail_q = np.where(in_top, np.inf, logq).min(axis=1)
    q_top = np.take_along_axis(logq, ids, axis=1)
    tail_p = reference.tail_mass
    tail_q = np.clip(np.exp(logq).sum(axis=1) - np.exp(q_top).sum(axis=1), 1e-300, 1.0)
    log_p_k = reference.top_logprobs[:, -1].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = tail_p * (log_p_k - min_tail_q - np.log(tail_p) + np.log(tail_q))
    return np.where((tail_p > 0) & np.isfinite(min_tail_q), np.maximum(bound, 0.0), 0.0)


@dataclass(frozen=True)
class QualitySummary:
    """A quant's quality over every scored position, as llama-perplexity reports it."""

    n_tokens: int
    kld_mean: float
    kld_sd: float  # the uncertainty of the mean, as llama-perplexity's `±`
    kld_median: float
    kld_p99: float
    kld_max: float
    same_top: float  # share of positions whose top token is the reference's
    ppl: float
    ppl_ref: float
    ppl_ratio: float  # PPL / PPL_ref


def _mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """llama-perplexity's mean_and_uncertainty: the mean and the standard error of it (0 for 10 values or fewer)."""
    count = len(values)
    mean = float(values.mean())
    variance = float((values * values).mean()) - mean * mean
    return mean, (variance / (count - 1)) ** 0.5 if variance > 0 and count > 10 else 0.0


def summarize(scores: Sequence[PositionScores]) -> QualitySummary:
    """The summary of every scored position of every chunk."""
    if not scores or not sum(len(s.kld) for s in scores):
        raise ValueError("no scored positions")
    kld = np.concatenate([s.kld for s in scores])
    nll = np.concatenate([s.nll for s in scores])
    nll_ref = np.concatenate([s.nll_ref for s in scores])
    same = np.concatenate([s.same_top for s in scores])
    mean_kld, sd_kld = _mean_and_uncertainty(kld)
    mean_nll, mean_nll_ref = float(nll.mean()), float(nll_ref.mean())
    return QualitySummary(
        n_tokens=len(kld), kld_mean=mean_kld, kld_sd=sd_kld, kld_median=float(np.median(kld)),
        kld_p99=float(np.percentile(kld, 99)), kld_max=float(kld.max()), same_top=float(same.mean()),
        ppl=float(np.exp(mean_nll)), ppl_ref=float(np.exp(mean_nll_ref)),
        ppl_ratio=float(np.exp(mean_nll - mean_nll_ref)))
