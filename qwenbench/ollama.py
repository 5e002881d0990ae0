"""Models Ollama has already pulled, used in place: its store keeps each model as a JSON manifest
(`manifests/<registry>/<namespace>/<name>/<tag>`) whose layer of media type `application/vnd.ollama.image.model`
names a blob (`blobs/sha256-<digest>`), and that blob is a plain GGUF. Read-only: nothing here writes to the store.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidModelFileError, UsageError
from .modelfile import remember_sha256

MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
GGUF_MAGIC = b"GGUF"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class OllamaModel:
    reference: str  # as Ollama lists it: qwen3:30b-a3b, or namespace/name:tag beyond the library
    manifest: Path
    blob: Path  # the GGUF
    sha256: str  # the blob's content address (Ollama checks it on pull)


def store_roots(environ: Mapping[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """Where Ollama keeps models: $OLLAMA_MODELS, else the user's ~/.ollama/models, and the Linux service's."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    if environ.get("OLLAMA_MODELS"):
        return [Path(environ["OLLAMA_MODELS"]).expanduser()]
    return [home / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def parse_reference(text: str) -> tuple[str, str, str, str]:
    """(registry, namespace, name, tag) of an Ollama model name: qwen3, qwen3:8b, user/model:tag,
    host/namespace/model:tag."""
    path, tag = text.strip(), DEFAULT_TAG
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
    parts = path.split("/")
    if not 1 <= len(parts) <= 3 or not all(_NAME.fullmatch(p) for p in (*parts, tag)):
        raise UsageError(f"--ollama {text!r} is not an Ollama model name",
                         hint="as `ollama list` shows them, e.g. --ollama qwen3:30b-a3b")
    registry, namespace = DEFAULT_REGISTRY, DEFAULT_NAMESPACE
    if len(parts) == 3:
        registry, namespace = parts[0], parts[1]
    elif len(parts) == 2:
        namespace = parts[0]
    return registry, namespace, parts[-1], tag


def _label(registry: str, namespace: str, name: str, tag: str) -> str:
    prefix = "" if (registry, namespace) == (DEFAULT_REGISTRY, DEFAULT_NAMESPACE) else (
        f"{namespace}/" if registry == DEFAULT_REGISTRY else f"{registry}/{namespace}/")
    return f"{prefix}{name}:{tag}"


def installed(roots: list[Path]) -> list[str]:
    """Every model the stores hold, named as `ollama list` names them."""
    found = []
    for root in roots:
        manifests = root / "manifests"
        if not manifests.is_dir():
            continue
        for path in sorted(p for p in manifests.glob("*/*/*/*") if p.is_file()):
            registry, namespace, name, tag = path.relative_to(manifests).parts
            found.append(_label(registry, namespace, name, tag))
    return found


def find_model(reference: str, roots: list[Path] | None = None) -> OllamaModel:
    """The GGUF behind an Ollama model name, checked: its manifest, its model layer, the blob, the GGUF magic.
    Each way it can fail is one line naming what is missing."""
    roots = store_roots() if roots is None else roots
    registry, namespace, name, tag = parse_reference(reference)
    label = _label(registry, namespace, name, tag)
    candidates = [root / "manifests" / registry / namespace / name / tag for root in roots]
    manifest = next((path for path in candidates if path.is_file()), None)
    if manifest is None:
        have = installed(roots)
        same_name = [m for m in have if m.rsplit(":", 1)[0] == label.rsplit(":", 1)[0]]
        where = ", ".join(str(r) for r in roots)
        hint = (f"its tags here: {', '.join(same_name)}" if same_name else
                f"pulled here: {', '.join(have[:12])}" if have else
                "set OLLAMA_MODELS if the store is elsewhere, or `ollama pull` it first")
        raise UsageError(f"Ollama has no {label} (looked in {where})", hint=hint)
    root = manifest.parents[4]
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise InvalidModelFileError(f"Ollama's manifest of {label} ({manifest}) cannot be read: {exc}",
                                    hint=f"`ollama pull {label}` rewrites it") from None
    # a digest is 64 hex digits: anything else in a manifest must not name a path
    model_layers = [layer for layer in layers if isinstance(layer, dict)
                    and layer.get("mediaType") == MODEL_MEDIA_TYPE
                    and _DIGEST.fullmatch(str(layer.get("digest", "")))]
    if not model_layers:
        raise InvalidModelFileError(f"Ollama's manifest of {label} has no model layer ({MODEL_MEDIA_TYPE})",
                                    hint="an adapter or a projector alone is not a model to run")
    digest = model_layers[0]["digest"].removeprefix("sha256:")
    blob = root / "blobs" / f"sha256-{digest}"
    if not blob.is_file():
        raise InvalidModelFileError(f"the model blob of Ollama's {label} is missing: {blob}",
                                    hint=f"`ollama pull {label}` fetches it again")
    with blob.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise InvalidModelFileError(f"the model blob of Ollama's {label} is not a GGUF ({blob} starts with "
                                    f"{magic!r})", hint="only GGUF models run on llama.cpp")
    remember_sha256(blob, digest)  # its name is its digest: a 20 GB blob is not read to hash it
    return OllamaModel(label, manifest, blob, digest)
