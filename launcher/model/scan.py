"""Finding GGUF models in the usual places: ~/models, llama.cpp's cache, LM Studio, Ollama,
the Hugging Face cache.

Ollama keeps weights as content-addressed blobs; its manifests name them, so a blob is shown
under the model's name (``llama3.1:8b``) rather than ``sha256-…``. A model split in parts
(``NAME-00001-of-00004.gguf``) is one model: its first part, its parts' whole size.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

MAX_DEPTH = 4
OLLAMA_MODEL = "application/vnd.ollama.image.model"
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<parts>\d{5})\.gguf$")


@dataclass(frozen=True)
class FoundModel:
    name: str
    path: Path
    size_bytes: int
    source: str  # models, llama.cpp, lm-studio, ollama, huggingface
    parts: int = 1  # files of a split model (path is the first)


def usual_places(home: Path | None = None) -> list[tuple[str, Path]]:
    home = home or Path.home()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    return [
        ("models", home / "models"),
        ("llama.cpp", cache / "llama.cpp"),
        ("lm-studio", home / ".lmstudio" / "models"),
        ("lm-studio", home / ".cache" / "lm-studio" / "models"),
        ("ollama", home / ".ollama" / "models"),
        ("huggingface", _hf_hub(home, cache)),
    ]


def _hf_hub(home: Path, cache: Path) -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return cache / "huggingface" / "hub"


def _walk(root: Path) -> list[Path]:
    out = []
    base = len(root.parts)
    for folder, dirs, files in os.walk(root):
        if len(Path(folder).parts) - base >= MAX_DEPTH:
            dirs[:] = []
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(folder) / f for f in files if f.endswith(".gguf")]
    return out


def _ollama(root: Path) -> list[FoundModel]:
    out = []
    manifests = root / "manifests"
    for manifest in manifests.rglob("*") if manifests.is_dir() else []:
        if not manifest.is_file():
            continue
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        for layer in data.get("layers", []):
            if layer.get("mediaType") != OLLAMA_MODEL:
                continue
            blob = root / "blobs" / str(layer.get("digest", "")).replace(":", "-")
            if blob.is_file():
                rel = manifest.relative_to(manifests).parts
                name = f"{rel[-2]}:{rel[-1]}" if len(rel) >= 2 else manifest.name
                out.append(FoundModel(name, blob, blob.stat().st_size, "ollama"))
    return out


def scan(places: list[tuple[str, Path]] | None = None) -> list[FoundModel]:
    """Every GGUF found (first parts of split models only), sorted by source and name."""
    found: dict[Path, FoundModel] = {}
    for source, root in places or usual_places():
        if not root.is_dir():
            continue
        if source == "ollama":
            for m in _ollama(root):
                found.setdefault(m.path, m)
            continue
        for path in _walk(root):
            split = _SPLIT.match(path.name)
            if split and int(split["part"]) != 1:
                continue  # counted with its first part
            parts = [path]
            if split:
                n = int(split["parts"])
                width = len(split["parts"])
                parts = [
                    path.with_name(f"{split['stem']}-{i:0{width}d}-of-{split['parts']}.gguf")
                    for i in range(1, n + 1)
                ]
            try:
                size = sum(p.stat().st_size for p in parts)  # stat follows HF's symlinks
            except OSError:
                continue  # a part is missing: not a model that loads
            name = f"{split['stem']} ({len(parts)} parts)" if split else path.name
            found.setdefault(path, FoundModel(name, path, size, source, len(parts)))
    return sorted(found.values(), key=lambda m: (m.source, m.name))
