"""Hugging Face datasets as prompt sets: a `save_to_disk` folder, an `.arrow`/`.parquet` shard, or a dataset in
the offline datasets cache by name and config. Nothing is ever downloaded: the loader sets HF_DATASETS_OFFLINE
and reads the cache through datasets' own cache reader, which has no network path.

The rows come out as a prompt file's rows do (jobs/prompts.py maps the columns and checks them), after the
split, the filter and the limit or seeded sample. A ClassLabel column gives its label names, not integers
(a -1, "no label", gives none).
"""
from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmsweep.jobs.errors import SpecError, did_you_mean
from lmsweep.jobs.spec import DatasetSource

# error(message, key) -> the SpecError at the spec line of `prompts[i].dataset.<key>`
ErrorAt = Callable[[str, str], SpecError]


@dataclass(frozen=True)
class DatasetRows:
    shown: str                          # where the rows came from, for row errors
    rows: list[dict[str, Any]]
    origins: list[int]                  # each row's index in its split, before filter and sample


def read_dataset(src: DatasetSource, spec_dir: Path, error: ErrorAt) -> DatasetRows:
    """The rows `src` selects, or a SpecError at the spec key that is wrong."""
    # datasets reads HF_DATASETS_OFFLINE once, when first imported; the readers used below have no network
    # path anyway (load_from_disk, Dataset.from_file, the cache builder). The caller's environment is restored.
    before = os.environ.get("HF_DATASETS_OFFLINE")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise error("reading a Hugging Face dataset needs the `datasets` package: "
                    "pip install 'lmsweep[datasets]'", "path" if src.path else "name") from None
    finally:
        if before is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = before
    if src.path is not None:
        table, features, shown = _from_path(src, spec_dir, error)
    else:
        table, features, shown = _from_cache(src, spec_dir, error)
    keep = _filtered(table, features, src, shown, error)
    if src.sample is not None:
        if src.sample > len(keep):
            raise error(f"sample: {src.sample} rows asked for, {shown} has {len(keep)}"
                        f"{' after the filter' if src.filter else ''}", "sample")
        keep = sorted(random.Random(src.seed).sample(keep, src.sample))
    elif src.limit is not None:
        keep = keep[:src.limit]
    rows = table.take(keep).to_pylist() if keep else []
    names = _class_label_names(features)
    for row in rows:
        for column, labels in names.items():
            value = row.get(column)
            if isinstance(value, int) and not isinstance(value, bool):
                row[column] = labels[value] if 0 <= value < len(labels) else None
    return DatasetRows(shown, rows, keep)


def _from_path(src: DatasetSource, spec_dir: Path, error: ErrorAt):
    import datasets
    import pyarrow.parquet as pq

    path = Path(src.path).expanduser()
    if not path.is_absolute():
        path = spec_dir / path
    shown = str(path)
    if not path.exists():
        raise error(f"dataset not found: {path} (a save_to_disk folder, an .arrow or a .parquet file)", "path")
    if path.is_dir():
        if not any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            raise error(f"{path} is not a save_to_disk folder (it has no dataset_dict.json or state.json)", "path")
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises several kinds for a damaged folder
            raise error(f"cannot read the dataset folder {path}: {_first_line(e)}", "path") from None
        if isinstance(loaded, datasets.DatasetDict):
            loaded, shown = _split_of(loaded, src.split, shown, error), f"{shown}[{_chosen(loaded, src.split)}]"
        elif src.split is not None and src.split != str(loaded.split or src.split):
            raise error(f"{path} holds one split ({loaded.split or 'unnamed'}), not {src.split!r}", "split")
        return loaded.with_format("arrow")[:], loaded.features, shown
    if src.split is not None:
        raise error(f"{path.name} is one shard, without splits; leave out `split`", "split")
    suffix = path.suffix.lower()
    try:
        if suffix == ".arrow":
            loaded = datasets.Dataset.from_file(str(path))
            return loaded.with_format("arrow")[:], loaded.features, shown
        if suffix == ".parquet":
            table = pq.read_table(path)
            return table, datasets.Features.from_arrow_schema(table.schema), shown
    except Exception as e:  # pyarrow raises several kinds for a corrupt file
        raise error(f"unreadable {suffix[1:]} shard {path}: {_first_line(e)}", "path") from None
    raise error(f"unsupported dataset file type {suffix!r}; expected a save_to_disk folder, .arrow or .parquet",
                "path")


def _from_cache(src: DatasetSource, spec_dir: Path, error: ErrorAt):
    import datasets
    from datasets.packaged_modules.cache.cache import Cache

    cache_dir = str(spec_dir / Path(src.cache_dir).expanduser() if src.cache_dir
                    else Path(os.environ.get("HF_DATASETS_CACHE") or datasets.config.HF_DATASETS_CACHE).expanduser())
    try:
        builder = Cache(cache_dir=cache_dir, dataset_name=src.name.split("/")[-1], repo_id=src.name,
                        config_name=src.config, version="auto", hash="auto")
    except ValueError as e:
        found = str(e).split("Available configs in the cache:")
        configs = f"; the cache has its configs {found[1].strip().rstrip('.')}" if len(found) > 1 else ""
        what = f"{src.name!r}" + (f" (config {src.config!r})" if src.config else "")
        raise error(f"dataset {what} is not in the datasets cache {cache_dir}{configs}; lmsweep never downloads: "
                    "save it there (or save_to_disk) on a machine with network", "config" if configs else "name") \
            from None
    splits = sorted(builder.info.splits or {})
    split = _pick(splits, src.split, builder.cache_dir, error)
    loaded = builder.as_dataset(split=split)
    return loaded.with_format("arrow")[:], loaded.features, f"{builder.cache_dir}[{split}]"


def _chosen(loaded, split: str | None) -> str:
    return split if split is not None else next(iter(loaded))


def _split_of(loaded, split: str | None, shown: str, error: ErrorAt):
    return loaded[_pick(sorted(loaded), split, shown, error)]


def _pick(splits: list[str], split: str | None, shown: str, error: ErrorAt) -> str:
    if split is None:
        if len(splits) == 1:
            return splits[0]
        raise error(f"{shown} has the splits {', '.join(splits)}; choose one with `split:`", "split")
    if split not in splits:
        raise error(f"no split {split!r}{did_you_mean(split, splits)}; {shown} has {', '.join(splits)}", "split")
    return split


def _class_label_names(features) -> dict[str, list[str]]:
    import datasets

    return {name: list(f.names) for name, f in (features or {}).items() if isinstance(f, datasets.ClassLabel)}


def _filtered(table, features, src: DatasetSource, shown: str, error: ErrorAt) -> list[int]:
    """Indices of the rows whose columns equal the filter's values (a list: any of them). A ClassLabel
    column matches its label names as well as their integers."""
    keep = list(range(table.num_rows))
    names = _class_label_names(features)
    for column, wanted in (src.filter or {}).items():
        if column not in table.column_names:
            close = did_you_mean(column, table.column_names)
            raise error(f"filter on {column!r}, a column {shown} does not have{close}; "
                        f"its columns: {', '.join(table.column_names)}", "filter")
        allowed = set(wanted if isinstance(wanted, list) else [wanted])
        labels = names.get(column, [])
        allowed |= {labels.index(v) for v in allowed if isinstance(v, str) and v in labels}
        values = table.column(column).to_pylist()
        kept = [i for i in keep if _member(values[i], allowed)]
        if not kept:
            present = sorted({str(labels[v]) if labels and isinstance(v, int) and 0 <= v < len(labels) else str(v)
                              for v in values})
            more = f" … ({len(present)} in all)" if len(present) > 10 else ""
            raise error(f"filter {column} = {wanted!r} keeps no row of {shown}; its {column} values: "
                        f"{', '.join(present[:10])}{more}", "filter")
        keep = kept
    return keep


def _member(value, allowed: set) -> bool:
    try:
        return value in allowed
    except TypeError:           # a list or dict cell equals no filter value
        return False


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
