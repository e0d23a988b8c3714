"""The example specs shipped inside the package (`lmsweep.configs`), and copying one out to start from.

After `pip install lmsweep` there is no checkout to read configs/ from: `lmsweep examples` lists the
examples and `lmsweep examples NAME` copies one, with the prompt files it reads, into a directory.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from lmsweep.configs import ROOT, examples
from lmsweep.jobs.errors import SpecError


@dataclass(frozen=True)
class Example:
    name: str
    path: Path
    description: str
    files: tuple[Path, ...]        # prompt files the spec reads, relative to it


def shipped() -> list[Example]:
    return [_example(p) for p in examples()]


def _example(path: Path) -> Example:
    data = yaml.safe_load(path.read_text()) or {}
    prompts = data.get("prompts")
    sets = prompts if isinstance(prompts, list) else [prompts]
    files = tuple(Path(s["file"]) for s in sets if isinstance(s, dict) and s.get("file"))
    datasets = [Path(s["dataset"]["path"]) for s in sets
                if isinstance(s, dict) and isinstance(s.get("dataset"), dict) and s["dataset"].get("path")]
    files += tuple(f.relative_to(ROOT) for d in datasets
                   for f in (sorted(p for p in (ROOT / d).rglob("*") if p.is_file()) if (ROOT / d).is_dir()
                             else [ROOT / d]))
    return Example(path.stem, path, str(data.get("description", "")).strip(), files)


def find(name: str) -> Example:
    by_name = {e.name: e for e in shipped()}
    stem = name.removesuffix(".yaml").removesuffix(".yml")
    if stem not in by_name:
        raise SpecError(f"no example named {name!r}; the examples are {', '.join(sorted(by_name))}",
                        field="examples")
    return by_name[stem]


def copy_out(example: Example, to: Path, force: bool = False) -> list[Path]:
    """Copy the spec and its prompt files under `to`, keeping their relative layout; refuse to overwrite
    (nothing is copied) unless `force`."""
    pairs = [(example.path, to / example.path.name)] + [(ROOT / f, to / f) for f in example.files]
    existing = [dst for _, dst in pairs if dst.exists()]
    if existing and not force:
        raise SpecError(f"{existing[0]} exists; pass --force to overwrite, or --to another directory",
                        field="examples")
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return [dst for _, dst in pairs]
