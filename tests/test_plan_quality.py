"""The planner weighs quality: the published prior per quant type (configs/quant_quality.toml), replaced by this
model's measured mean KLD from `qwenbench quality` rows; `plan` shows the column and takes --max-kld as a floor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qwenbench.catalog import config_dir
from qwenbench.errors import ConfigError
from qwenbench.machine import safe_hostname
from qwenbench.modelfile import cached_sha256, file_sha256
from qwenbench.planner import QUALITY_ORDER, Placement, choose, quality_rank
from qwenbench.qualityprior import (
    PRIORS_FILE,
    ModelMatch,
    QualityFigure,
    load_priors,
    measured_figures,
    parse_priors,
    quality_figures,
)
from qwenbench.quants import PRESETS
from qwenbench.results import append_records, read_records

from .conftest import run_cli
from .test_inputs import assert_refused
from .test_results_and_metrics import make_record

PRIORS = load_priors(config_dir() / PRIORS_FILE)


# ------------------------------------------------------------------------------------------ the priors


def test_every_preset_and_every_ranked_quant_has_a_published_figure() -> None:
    # MXFP4_MOE: none published (the toml says so); unknown until measured
    for name in {*PRESETS, *QUALITY_ORDER, "F32", "F16", "BF16"} - {"MXFP4_MOE"}:
        figure = PRIORS.figure(name)
        assert figure.source == "prior" and figure.kld is not None and figure.kld >= 0, name
    assert PRIORS.figure("MXFP4_MOE").source == "unknown"
    assert PRIORS.figure("F32").kld == 0 and PRIORS.figure("BF16").kld == 0  # the reference itself
    assert 0 < PRIORS.figure("F16").kld < PRIORS.figure("Q8_0").kld  # near-lossless, not lossless
    # the issue's figures (llama.cpp's perplexity README, LLaMA-3-8B against FP16)
    q4 = PRIORS.figure("q4_k_m")
    assert q4.kld == pytest.approx(0.031, abs=5e-4) and q4.ppl_ratio == pytest.approx(1.02816)
    assert q4.label == "prior (LLaMA-3-8B)"
    assert PRIORS.figure("Q8_0").kld == pytest.approx(0.0014, abs=1e-4)
    assert PRIORS.figure("Q2_K").kld == pytest.approx(0.445, abs=1e-3)
    assert PRIORS.source.startswith("llama.cpp tools/perplexity/README.md") and PRIORS.n_ctx == 512


def test_the_priors_fall_as_bits_rise_in_the_order_the_planner_ranks() -> None:
    ladder = ["F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K"]
    klds = [PRIORS.figure(q).kld for q in ladder]
    assert klds == sorted(klds)
    assert QUALITY_ORDER[0] == "F32" and quality_rank("F32") < quality_rank("BF16") < quality_rank("F16")


def test_a_dynamic_mix_takes_its_base_presets_prior_and_an_unknown_type_has_none() -> None:
    mix = PRIORS.figure("UD-Q4_K_XL")
    assert mix.kld == PRIORS.figure("Q4_K_M").kld and mix.source == "prior" and "Q4_K_M" in mix.detail
    assert quality_rank("UD-Q4_K_XL") < quality_rank("Q4_K_M")  # and ranks just above it
    unknown = PRIORS.figure("MXFP4")
    assert unknown.kld is None and unknown.source == "unknown" and unknown.label == "unknown"


@pytest.mark.parametrize(("entry", "needle"), [
    ({"ppl_ratio": 1.0}, "quants.Q4_K_M needs kld"),
    ({"kld": -0.1}, "quants.Q4_K_M.kld: -0.1 is not a finite number >= 0"),
    ({"kld": math.nan}, "quants.Q4_K_M.kld: nan"),
    ({"kld": "low"}, "'low' is not a finite number"),
    ({"kld": 0.03, "ppl_ratio": math.inf}, "quants.Q4_K_M.ppl_ratio"),
])
def test_a_bad_priors_file_names_the_field(entry: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_priors({"source": {"name": "x"}, "quants": {"Q4_K_M": entry}}, "q.toml")
    assert needle in str(caught.value)
    with pytest.raises(ConfigError, match="needs a \\[source\\] table"):
        parse_priors({"quants": {}})


def test_load_priors_refuses_a_file_that_is_not_toml(tmp_path: Path) -> None:
    bad = tmp_path / "q.toml"
    bad.write_text("[quants\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_priors(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_priors(tmp_path / "missing.toml")


# ---------------------------------------------------------------------------------- measured figures


def quality_row(quant: str, kld: float, **changes: object):
    """A `quality` row as `qwenbench quality` writes it: a model scored against a Q8_0 reference."""
    base = {"test": "quality", "n_prompt": 512, "n_gen": 0, "n_ctx": 512, "quant": quant, "weights": "real",
            "model_key": "qwen3-0.6b", "model_filename": f"Qwen3-0.6B-{quant}.gguf",
            "model_sha256": (quant.lower() * 64)[:64], "ref_quant": "Q8_0", "ref_sha256": "cd" * 32,
            "corpus": "en.txt", "corpus_sha256": "ef" * 32, "kld_mean": kld, "kld_p99": kld * 10, "same_top": 0.9,
            "ppl": 10.5, "ppl_ref": 10.0, "ppl_ratio": 1.05}
    return make_record(**{**base, **changes})


def test_measured_rows_are_matched_to_the_model_and_the_latest_wins(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    append_records(path, [
        quality_row("Q4_K_M", 0.08, test_time="2026-01-01T00:00:00+00:00"),
        quality_row("Q4_K_M", 0.05, test_time="2026-02-01T00:00:00+00:00", corpus="zh.txt"),
        quality_row("Q6_K", 0.9, weights="synthetic"),  # random weights: not this model's loss
        quality_row("Q3_K_M", 0.2, status="interrupted"),
        quality_row("Q5_K_M", 0.1, model_key="qwen3-8b"),
        quality_row("Q8_0", 0.0, model_sha256="cd" * 32),  # the reference scored against itself
        make_record(test="tg128", quant="Q2_K", weights="real"),  # a speed row
    ])
    rows = read_records(path)
    figures = measured_figures(rows, ModelMatch(model_key="qwen3-0.6b"))
    assert set(figures) == {"Q4_K_M"}
    assert figures["Q4_K_M"] == QualityFigure("Q4_K_M", 0.05, 1.05, "measured", "zh.txt, ctx 512, against Q8_0")
    assert figures["Q4_K_M"].label == "measured (zh.txt, ctx 512, against Q8_0)"

    combined = quality_figures(["Q8_0", "Q4_K_M", "MXFP4"], PRIORS, figures)
    assert combined["Q4_K_M"].source == "measured" and combined["Q8_0"] == PRIORS.figure("Q8_0")
    assert combined["MXFP4"].source == "unknown"


def test_a_local_file_is_matched_by_its_digest_else_by_name_and_size(tmp_path: Path) -> None:
    rows = [r.to_json() for r in (quality_row("Q4_K_M", 0.04, model_sha256="11" * 32, model_size=100),
                                  quality_row("Q6_K", 0.01, model_sha256="", model_filename="mine.gguf",
                                              model_size=200, weights="synthetic"))]
    assert set(measured_figures(rows, ModelMatch(sha256="11" * 32, filename="other.gguf", size=1))) == {"Q4_K_M"}
    by_name = measured_figures(rows, ModelMatch(filename="mine.gguf", size=200))
    assert set(by_name) == {"Q6_K"}  # a file's own rows count, synthetic or not
    assert not measured_figures(rows, ModelMatch(filename="mine.gguf", size=201))


# ------------------------------------------------------------------------------------------- ranking


def placement(quant: str, tg: float, kld: float | None, source: str = "prior", fits: bool = True) -> Placement:
    figure = QualityFigure(quant, kld, None, source if kld is not None else "unknown",
                           "LLaMA-3-8B" if source == "prior" else "en.txt, ctx 512, against Q8_0")
    return Placement(quant, 0, 0, "f16", "f16", True, 4096, fits, 1 << 30, 0, tg, quality=figure)


def test_the_choice_ranks_by_kld_and_breaks_ties_by_the_quality_order() -> None:
    # the priors put IQ4_XS (imatrix) above Q4_K_S, which QUALITY_ORDER ranks first
    plan = choose("m", [placement("Q4_K_S", 10, 0.043), placement("IQ4_XS", 10, 0.036)], 5.0)
    assert plan.choice is not None and plan.choice.quant == "IQ4_XS"
    assert "mean KLD 0.036, prior (LLaMA-3-8B)" in plan.reasons[0]
    tie = choose("m", [placement("BF16", 10, 0.0), placement("F32", 10, 0.0), placement("Q8_0", 10, 0.001)], 5.0)
    assert [p.quant for p in tie.evaluated] == ["F32", "BF16", "Q8_0"]
    # no figures at all: QUALITY_ORDER alone, as before
    bare = [Placement(q, 0, 0, "f16", "f16", True, 4096, True, 1, 0, 10) for q in ("Q4_K_M", "Q8_0", "Q6_K")]
    assert [p.quant for p in choose("m", bare, 5.0).evaluated] == ["Q8_0", "Q6_K", "Q4_K_M"]


def test_a_measured_kld_changes_the_choice_and_the_plan_says_its_sources_differ() -> None:
    prior = choose("m", [placement("Q8_0", 10, 0.0014), placement("Q6_K", 10, 0.0055)], 5.0)
    assert prior.choice is not None and prior.choice.quant == "Q8_0"
    measured = choose("m", [placement("Q8_0", 10, 0.02, "measured"), placement("Q6_K", 10, 0.0055)], 5.0)
    assert measured.choice is not None and measured.choice.quant == "Q6_K"
    assert any("measured for this model at Q8_0" in r and "LLaMA-3-8B" in r for r in measured.reasons)


def test_the_q4_class_floor_holds_without_max_kld_and_max_kld_replaces_it() -> None:
    quants = [placement("Q4_K_M", 3, 0.031), placement("Q3_K_M", 6, 0.10), placement("Q2_K", 8, 0.45)]
    kept = choose("m", quants, 5.0)
    assert kept.choice is not None and kept.choice.quant == "Q4_K_M"
    assert any(r.startswith("kept at Q4_K_M: below Q4-class") for r in kept.reasons)
    # the user's floor: Q3_K_M is within it and reaches the speed, so it is taken
    loose = choose("m", quants, 5.0, max_kld=0.2)
    assert loose.choice is not None and loose.choice.quant == "Q3_K_M"
    assert "Q2_K skipped: KLD 0.45 over --max-kld 0.2 (prior, LLaMA-3-8B)" in loose.reasons
    strict = choose("m", quants, 5.0, max_kld=0.05)
    assert strict.choice is not None and strict.choice.quant == "Q4_K_M"
    assert "nothing reaches 5 t/s; Q4_K_M is the fastest quant that fits within --max-kld 0.05" in strict.reasons[0]
    assert "Q3_K_M skipped: KLD 0.1 over --max-kld 0.05 (prior, LLaMA-3-8B)" in strict.reasons
    # a measurement that ranks a Q3 above every Q4 that fits has the last word over the name
    measured = [placement("Q4_K_M", 3, 0.031), placement("Q3_K_L", 6, 0.02, "measured")]
    chosen = choose("m", measured, 5.0)
    assert chosen.choice is not None and chosen.choice.quant == "Q3_K_L"


def test_max_kld_leaves_out_quants_without_a_figure_and_says_when_nothing_is_within_it() -> None:
    plan = choose("m", [placement("MXFP4", 20, None), placement("Q4_K_M", 10, 0.031)], 5.0, max_kld=0.05)
    assert plan.choice is not None and plan.choice.quant == "Q4_K_M"
    assert any(r.startswith("MXFP4 skipped: no KLD known for it to hold to --max-kld 0.05") for r in plan.reasons)
    none = choose("m", [placement("Q4_K_M", 10, 0.031), placement("Q2_K", 20, 0.45)], 5.0, max_kld=0.01)
    assert none.choice is None
    assert none.reasons[0] == ("nothing within --max-kld 0.01 fits: the best quant that fits is Q4_K_M "
                               "(mean KLD 0.031, prior (LLaMA-3-8B))")


# ------------------------------------------------------------------------------------ through the CLI


def plan_json(*args: str, cwd: Path) -> dict:
    result = run_cli("plan", "--no-calibrate", "--ctx", "512", "--json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_plan_of_a_file_shows_its_measured_kld_over_the_prior_and_max_kld_follows_it(tiny_dense: Path,
                                                                                      tmp_path: Path) -> None:
    prior = plan_json("--gguf", str(tiny_dense), cwd=tmp_path)
    assert prior["quant"] == "Q4_K_M" and prior["quality_from"] == []
    assert prior["quality"] == {"kld": PRIORS.figure("Q4_K_M").kld, "ppl_ratio": PRIORS.figure("Q4_K_M").ppl_ratio,
                                "source": "prior", "detail": "LLaMA-3-8B"}
    over = plan_json("--gguf", str(tiny_dense), "--max-kld", "0.02", cwd=tmp_path)
    assert over["fits"] is False and over["max_kld"] == 0.02
    assert "Q4_K_M skipped: KLD 0.0313 over --max-kld 0.02 (prior, LLaMA-3-8B)" in over["reasons"]
    said = run_cli("plan", "--no-calibrate", "--ctx", "512", "--gguf", str(tiny_dense), "--max-kld", "0.02",
                   cwd=tmp_path)
    assert said.returncode == 0 and "nothing within --max-kld 0.02 fits this machine" in said.stdout
    assert_refused(run_cli("plan", "--no-calibrate", "--gguf", str(tiny_dense), "--max-kld", "0.02", "--export",
                           "ollama", cwd=tmp_path), "nothing within --max-kld 0.02 fits", "no plan to export")

    # `qwenbench quality --gguf` hashed the file (cached) and wrote its row to the default results file
    digest = file_sha256(tiny_dense)
    assert cached_sha256(tiny_dense) == digest
    default = tmp_path / "results" / f"{safe_hostname()}.csv"
    append_records(default, [quality_row("Q4_K_M", 0.0125, model_sha256=digest, model_filename=tiny_dense.name,
                                         weights="synthetic", corpus="zh.txt")])
    measured = plan_json("--gguf", str(tiny_dense), "--max-kld", "0.02", cwd=tmp_path)
    assert measured["fits"] is True and measured["quant"] == "Q4_K_M"
    assert measured["quality"]["source"] == "measured" and measured["quality"]["kld"] == 0.0125
    assert measured["quality"]["detail"] == "zh.txt, ctx 512, against Q8_0"
    assert measured["quality_from"] == [str(Path("results") / f"{safe_hostname()}.csv")]
    assert measured["evaluated"][0]["quality"]["kld"] == 0.0125

    table = run_cli("plan", "--no-calibrate", "--ctx", "512", "--gguf", str(tiny_dense), cwd=tmp_path).stdout
    assert "mean KLD" in table and "KLD from" in table and "0.0125" in table
    assert "measured (zh.txt, ctx 512, against Q8_0)" in table


def test_plan_of_a_catalog_model_takes_its_measurements_from_quality_from(tmp_path: Path) -> None:
    rows = tmp_path / "measured.csv"
    append_records(rows, [quality_row("Q8_0", 0.02), quality_row("Q6_K", 0.004),
                          quality_row("Q5_K_M", 0.0001, weights="synthetic")])
    base = ("--model", "qwen3-0.6b", "--offline", "--min-tg", "0")
    prior = plan_json(*base, cwd=tmp_path)
    assert prior["quant"] == "Q8_0" and prior["quality"]["source"] == "prior"
    measured = plan_json(*base, "--quality-from", str(rows), cwd=tmp_path)
    assert measured["quant"] == "Q6_K" and measured["quality"] == {
        "kld": 0.004, "ppl_ratio": 1.05, "source": "measured", "detail": "en.txt, ctx 512, against Q8_0"}
    sources = {p["quant"]: p["quality"]["source"] for p in measured["evaluated"]}
    assert sources["Q8_0"] == "measured" and sources["Q5_K_M"] == "prior"  # the synthetic row is not this model's
    # a measured 0.02 for Q8_0 ranks it under Q5_K_M's published 0.011: the mixed order the reason warns of
    assert [p["quant"] for p in measured["evaluated"]][:3] == ["Q6_K", "Q5_K_M", "Q8_0"]
    assert any("quality measured for this model at" in r for r in measured["reasons"])


@pytest.mark.parametrize("value", ["-0.01", "nan", "inf"])
def test_a_bad_max_kld_is_refused_with_a_hint(value: str, tmp_path: Path) -> None:
    assert_refused(run_cli("plan", "--model", "qwen3-0.6b", "--offline", "--max-kld", value, cwd=tmp_path),
                   "'--max-kld'", "finite number >= 0", "e.g. --max-kld 0.05")


def test_quality_from_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert_refused(run_cli("plan", "--model", "qwen3-0.6b", "--offline", "--quality-from",
                           str(tmp_path / "none.csv"), cwd=tmp_path), "'--quality-from'", "does not exist")
