"""Dataset registry: names -> COCO-format json + image folder, classes read from the json.

Relative paths are resolved against the datasets root at look-up time: ``DATASETS.ROOT`` (set by
:func:`register_from_cfg`), else ``$IDIP_DATASETS``, else ``./datasets``. Built-ins:

- ``coco_2017_train`` / ``coco_2017_val``: ``coco/{train2017,val2017}`` and
  ``coco/annotations/instances_{train,val}2017.json``;
- ``shapes_train`` / ``shapes_val``: the synthetic dataset of :mod:`idip.data.shapes`, generated
  under ``<root>/shapes`` on first use.
"""

from __future__ import annotations

import difflib
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..config import ConfigError
from .coco import read_categories


class UnknownDatasetError(KeyError):
    """A dataset name that is not registered."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset with its class list (categories sorted by id -> 0..K-1)."""

    name: str
    json_file: str
    image_root: str
    thing_classes: list[str]
    contiguous_to_category_id: list[int]
    category_id_to_contiguous: dict[int, int] = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.thing_classes)


@dataclass(frozen=True)
class _Entry:
    json_file: str
    image_root: str
    prepare: Callable[[str], None] | None = None  # called with the root before the files are used
    builtin: bool = False


_REGISTRY: dict[str, _Entry] = {}
_ROOT_FROM_CFG: str | None = None
_LOCK = threading.Lock()
_CATEGORY_CACHE: dict[tuple[str, float], object] = {}


def datasets_root() -> str:
    """DATASETS.ROOT (once :func:`register_from_cfg` saw it), else $IDIP_DATASETS, else
    ./datasets."""
    return _ROOT_FROM_CFG or os.environ.get("IDIP_DATASETS") or "./datasets"


def set_datasets_root(root: str | None) -> None:
    """Overrides the root of every later look-up (None or "": $IDIP_DATASETS or ./datasets)."""
    global _ROOT_FROM_CFG
    _ROOT_FROM_CFG = root or None


def register_coco_dataset(
    name: str, json_file: str, image_root: str, overwrite: bool = False
) -> None:
    """Registers a COCO-format dataset. Relative paths are taken from the datasets root.

    Registering the same name again with the same paths is a no-op; with other paths, an error
    unless ``overwrite`` (built-in names can never be replaced).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"dataset name must be a non-empty string, got {name!r}")
    entry = _Entry(str(json_file), str(image_root))
    with _LOCK:
        old = _REGISTRY.get(name)
        changed = old is not None and (old.json_file, old.image_root) != (
            entry.json_file,
            entry.image_root,
        )
        if changed and overwrite and not old.builtin:
            old = None
        elif changed:
            kind = (
                "a built-in dataset"
                if old.builtin
                else f"registered with json '{old.json_file}', images '{old.image_root}'"
            )
            raise ConfigError(f"dataset '{name}' is already {kind}; choose another name")
        _REGISTRY[name] = old or entry


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def _resolve(path: str, root: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


def get_dataset(name: str) -> DatasetInfo:
    """Looks a dataset up, preparing it if needed (shapes), and reads its classes.

    Raises:
        UnknownDatasetError (a KeyError): unknown name (the message lists the known names and
            the closest match).
        FileNotFoundError: the annotation file or image folder is missing (message names it).
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        known = registered_names()
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UnknownDatasetError(
            f"unknown dataset '{name}'{hint} Known datasets: {', '.join(known)}"
        )
    root = datasets_root()
    if entry.prepare is not None:
        entry.prepare(root)
    json_file, image_root = _resolve(entry.json_file, root), _resolve(entry.image_root, root)
    where = (
        f" (dataset '{name}' under the datasets root '{root}'; set DATASETS.ROOT or $IDIP_DATASETS)"
        if not os.path.isabs(entry.json_file) or not os.path.isabs(entry.image_root)
        else f" (dataset '{name}')"
    )
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"annotation file not found: '{json_file}'{where}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image folder not found: '{image_root}'{where}")
    key = (os.path.abspath(json_file), os.path.getmtime(json_file))
    categories = _CATEGORY_CACHE.get(key)
    if categories is None:
        categories = _CATEGORY_CACHE[key] = read_categories(json_file)
    return DatasetInfo(
        name=name,
        json_file=json_file,
        image_root=image_root,
        thing_classes=list(categories.names),
        contiguous_to_category_id=list(categories.category_ids),
        category_id_to_contiguous=categories.id_to_contiguous,
    )


def register_from_cfg(cfg) -> None:
    """Applies DATASETS.ROOT and registers every DATASETS.CUSTOM entry ({NAME, JSON, IMAGES}).

    The config is the source of truth: an entry replaces an earlier registration of its name
    (except a built-in one, which is an error).
    """
    set_datasets_root(cfg.DATASETS.ROOT)
    for i, entry in enumerate(cfg.DATASETS.CUSTOM):
        if not isinstance(entry, dict):
            raise ConfigError(
                f"DATASETS.CUSTOM[{i}] must be a mapping {{NAME, JSON, IMAGES}}, got {entry!r}"
            )
        missing = [k for k in ("NAME", "JSON", "IMAGES") if k not in entry]
        unknown = sorted(set(entry) - {"NAME", "JSON", "IMAGES"})
        if missing or unknown:
            raise ConfigError(
                f"DATASETS.CUSTOM[{i}] = {dict(entry)!r}: "
                + (f"missing keys {missing}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"unknown keys {unknown}" if unknown else "")
                + " (expected NAME, JSON, IMAGES)"
            )
        register_coco_dataset(
            str(entry["NAME"]), str(entry["JSON"]), str(entry["IMAGES"]), overwrite=True
        )


def _prepare_shapes(root: str, split: str) -> None:
    from .shapes import ensure_shapes  # imported late so `python -m idip.data.shapes` runs cleanly

    ensure_shapes(root, split)


def _register_builtins() -> None:
    for split in ("train", "val"):
        _REGISTRY[f"coco_2017_{split}"] = _Entry(
            os.path.join("coco", "annotations", f"instances_{split}2017.json"),
            os.path.join("coco", f"{split}2017"),
            builtin=True,
        )
        _REGISTRY[f"shapes_{split}"] = _Entry(
            os.path.join("shapes", "annotations", f"instances_{split}.json"),
            os.path.join("shapes", split),
            prepare=lambda root, split=split: _prepare_shapes(root, split),
            builtin=True,
        )


_register_builtins()
