"""What a quant costs in quality, for the planner: the published figure per quant type (the prior, in
configs/quant_quality.toml), replaced by this model's own mean KLD where `qwenbench quality` measured it.

Pure: the toml's parsed contents and the results file's parsed rows come in, figures go out (the CLI reads
the files). A figure says where it comes from, since a prior is another model's measurement (LLaMA-3-8B) and
models differ by 2-4x at the same quant type.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PRIORS_FILE = "quant_quality.toml"


@dataclass(frozen=True)
class QualityFigure:
    """One quant's mean KL divergence from a full-precision reference (nats per token) and where it comes from."""

    quant: str
    kld: float | None  # None: no figure known
    ppl_ratio: float | None
    source: str  # measured | prior | unknown
    detail: str  # in words: the prior's model, or the measurement's corpus, context and reference

    @property
    def label(self) -> str:
        """What the plan's quality column says of the figure's origin."""
        return f"{self.source} ({self.detail})" if self.detail else self.source

    def to_json(self) -> dict[str, Any]:
        return {"kld": self.kld, "ppl_ratio": self.ppl_ratio, "source": self.source, "detail": self.detail}


@dataclass(frozen=True)
class Prior:
    kld: float
    ppl_ratio: float | None
    imatrix: str = ""
    note: str = ""


@dataclass(frozen=True)
class QualityPriors:
    """The published figures per quant type, with the measurement they come from."""

    source: str  # the publication
    model: str  # the model it measured
    corpus: str
    n_ctx: int
    reference: str
    quants: Mapping[str, Prior]

    @property
    def short_model(self) -> str:
        """The model as the quality column names it: Meta-Llama-3-8B is LLaMA-3-8B."""
        return self.model.removeprefix("Meta-").replace("Llama", "LLaMA")

    def figure(self, quant: str) -> QualityFigure:
        """The prior of a quant: its own, or for a dynamic mix (unsloth's UD-Q4_K_XL) its base preset's, which
        it is no worse than (it keeps more tensors at high precision); else unknown."""
        name = quant.upper()
        prior = self.quants.get(name)
        detail = self.short_model
        if prior is None and (base := dynamic_base(name)) in self.quants:
            prior, detail = self.quants[base], f"{self.short_model}, {base}'s: a dynamic mix is no worse"
        if prior is None:
            return QualityFigure(name, None, None, "unknown", "")
        return QualityFigure(name, prior.kld, prior.ppl_ratio, "prior", detail)


def dynamic_base(quant: str) -> str:
    """The preset a dynamic quant mix builds on: UD-Q4_K_XL on Q4_K_M, UD-IQ2_XXS on IQ2_S."""
    return quant.upper().removeprefix("UD-").replace("_XL", "_M").replace("_XXS", "_S")


def _number(value: Any, where: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: {value!r} is not a finite number >= 0")
    return float(value)


def parse_priors(data: Mapping[str, Any], origin: str = PRIORS_FILE) -> QualityPriors:
    """The priors from the toml's parsed contents: a [source] table and one entry per quant under [quants]."""
    source, quants = data.get("source"), data.get("quants")
    if not isinstance(source, Mapping) or not isinstance(quants, Mapping) or not quants:
        raise ConfigError(f"{origin}: needs a [source] table and a [quants] table of figures")
    priors = {}
    for name, entry in quants.items():
        if not isinstance(entry, Mapping) or "kld" not in entry:
            raise ConfigError(f"{origin}: quants.{name} needs kld = <mean KLD>")
        kld = _number(entry["kld"], f"{origin}: quants.{name}.kld")
        assert kld is not None
        priors[name.upper()] = Prior(kld, _number(entry.get("ppl_ratio"), f"{origin}: quants.{name}.ppl_ratio",
                                                  optional=True),
                                     str(entry.get("imatrix", "")), str(entry.get("note", "")))
    return QualityPriors(str(source.get("name", "")), str(source.get("model", "")), str(source.get("corpus", "")),
                         int(source.get("n_ctx", 0)), str(source.get("reference", "")), priors)


def load_priors(path: Path) -> QualityPriors:
    """The priors file read and parsed (configs/quant_quality.toml unless told)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the quality priors {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_priors(data, str(path))


# ------------------------------------------------------------------------------------ measured figures


@dataclass(frozen=True)
class ModelMatch:
    """Which quality rows speak for the model a plan is for. A catalog model (model_key): the rows of its real
    weights, whatever file or repo they came from (a synthetic model's KLD is random weights'). A local file: the
    rows of that very file, by its SHA-256 where known, else by its name and tensor bytes."""

    model_key: str = ""
    sha256: str = ""
    filename: str = ""
    size: int = 0

    def matches(self, row: Mapping[str, Any]) -> bool:
        if self.sha256 or self.filename:
            if self.sha256 and row.get("model_sha256"):
                return row.get("model_sha256") == self.sha256
            return bool(self.filename) and row.get("model_filename") == self.filename \
                and row.get("model_size") == self.size
        return bool(self.model_key) and row.get("model_key") == self.model_key and row.get("weights") == "real"


def _usable(row: Mapping[str, Any]) -> bool:
    kld = row.get("kld_mean")
    # a file scored against itself (the reference among the quants) says nothing of what its quant loses
    itself = bool(row.get("ref_sha256")) and row.get("ref_sha256") == row.get("model_sha256")
    return (row.get("test") == "quality" and row.get("status") == "ok" and isinstance(kld, float)
            and math.isfinite(kld) and kld >= 0 and not itself and bool(row.get("quant")))


def measured_figures(rows: Iterable[Mapping[str, Any]], match: ModelMatch) -> dict[str, QualityFigure]:
    """Quant -> this model's measured mean KLD, from the `quality` rows (results.parse_row's) that match it: the
    latest complete row of each quant, with its corpus, context and reference in words."""
    latest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if not _usable(row) or not match.matches(row):
            continue
        quant = str(row["quant"]).upper()
        if quant not in latest or str(row.get("test_time", "")) >= str(latest[quant].get("test_time", "")):
            latest[quant] = row
    figures = {}
    for quant, row in latest.items():
        reference = row.get("ref_quant") or "its reference"
        detail = f"{row.get('corpus') or 'corpus'}, ctx {row.get('n_ctx')}, against {reference}"
        figures[quant] = QualityFigure(quant, float(row["kld_mean"]), row.get("ppl_ratio"), "measured", detail)
    return figures


def quality_figures(quants: Iterable[str], priors: QualityPriors | None,
                    measured: Mapping[str, QualityFigure] | None = None) -> dict[str, QualityFigure]:
    """Each quant's figure: measured for this model where it was, else the prior, else unknown."""
    measured = measured or {}
    figures = {}
    for quant in quants:
        name = quant.upper()
        if name in measured:
            figures[quant] = measured[name]
        elif priors is not None:
            figures[quant] = priors.figure(name)
        else:
            figures[quant] = QualityFigure(name, None, None, "unknown", "")
    return figures
