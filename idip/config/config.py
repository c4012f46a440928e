"""A detectron2-style config node: attribute access, YAML with ``_BASE_``, ``KEY VALUE`` overrides.

Every key is declared, with its default, in :mod:`idip.config.defaults`. The type of a key is the
type of its default; a key whose default is ``None`` accepts any value. Merging a YAML file or a
list of overrides checks each key and value against the declaration and raises
:class:`ConfigError` with one line naming the key, the value and what was expected.
"""

from __future__ import annotations

import ast
import copy
import difflib
import io
import os
from typing import Any, Iterable

import yaml

BASE_KEY = "_BASE_"


class ConfigError(ValueError):
    """A config file, key or value is wrong. The message is one line naming the culprit."""


def _type_name(value: Any) -> str:
    if isinstance(value, CfgNode):
        return "a section (mapping)"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", tuple: "tuple"}.get(
        type(value), type(value).__name__
    )


class CfgNode(dict):
    """A nested mapping whose keys are also attributes (``cfg.MODEL.WEIGHTS``).

    Nodes start mutable; :meth:`freeze` makes the whole tree read-only (``defrost`` undoes it).
    """

    _FROZEN = "__frozen__"
    _PATH = "__path__"

    def __init__(self, init: dict | None = None, path: str = ""):
        super().__init__()
        object.__setattr__(self, CfgNode._FROZEN, False)
        object.__setattr__(self, CfgNode._PATH, path)
        for key, value in (init or {}).items():
            if isinstance(value, dict) and not isinstance(value, CfgNode):
                value = CfgNode(value, path=self._child_path(key))
            self[key] = value

    # --- attribute access -------------------------------------------------------------------
    def _child_path(self, key: str) -> str:
        prefix = object.__getattribute__(self, CfgNode._PATH)
        return f"{prefix}.{key}" if prefix else key

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        raise AttributeError(
            f"config has no key '{self._child_path(name)}'" + _suggest(self._child_path(name), self)
        )

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if object.__getattribute__(self, CfgNode._FROZEN):
            raise ConfigError(
                f"cannot set '{self._child_path(key)}': the config is frozen "
                "(call cfg.defrost() first if this is intended)"
            )
        if isinstance(value, dict) and not isinstance(value, CfgNode):
            value = CfgNode(value, path=self._child_path(key))
        elif isinstance(value, CfgNode):
            value._rebase(self._child_path(key))
        super().__setitem__(key, value)

    def _rebase(self, path: str) -> None:
        object.__setattr__(self, CfgNode._PATH, path)
        for key, value in self.items():
            if isinstance(value, CfgNode):
                value._rebase(self._child_path(key))

    def __deepcopy__(self, memo):
        node = CfgNode(
            {k: copy.deepcopy(v, memo) for k, v in self.items()},
            path=object.__getattribute__(self, CfgNode._PATH),
        )
        return node

    # --- freezing ---------------------------------------------------------------------------
    def freeze(self) -> "CfgNode":
        self._set_frozen(True)
        return self

    def defrost(self) -> "CfgNode":
        self._set_frozen(False)
        return self

    def is_frozen(self) -> bool:
        return object.__getattribute__(self, CfgNode._FROZEN)

    def _set_frozen(self, frozen: bool) -> None:
        object.__setattr__(self, CfgNode._FROZEN, frozen)
        for value in self.values():
            if isinstance(value, CfgNode):
                value._set_frozen(frozen)

    def clone(self) -> "CfgNode":
        return copy.deepcopy(self)

    # --- merging ----------------------------------------------------------------------------
    def merge_from_file(self, path: str) -> "CfgNode":
        """Merges a YAML file, following its ``_BASE_`` chain (paths relative to the file)."""
        self.merge_from_dict(load_yaml_with_base(path), source=path)
        return self

    def merge_from_dict(self, data: dict, source: str = "<dict>") -> "CfgNode":
        """Merges a nested dict whose keys must all be declared in this config."""
        _merge_checked(self, data, source)
        return self

    def merge_from_list(self, opts: Iterable[str]) -> "CfgNode":
        """Merges ``["KEY", "VALUE", ...]`` overrides, e.g. ``["SOLVER.BASE_LR", "0.01"]``.

        VALUE strings are parsed as YAML/Python literals and converted to the key's type.
        """
        opts = list(opts)
        if len(opts) % 2:
            raise ConfigError(
                f"config overrides must come in KEY VALUE pairs; '{opts[-1]}' has no value"
            )
        for full_key, raw in zip(opts[0::2], opts[1::2]):
            node, leaf = self._resolve(full_key, "the command line")
            value = _parse_literal(raw) if isinstance(raw, str) else raw
            node[leaf] = _coerce(full_key, node[leaf], value, raw, "the command line")
        return self

    def _resolve(self, full_key: str, source: str) -> tuple["CfgNode", str]:
        node: CfgNode = self
        parts = full_key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, CfgNode) or part not in node:
                raise ConfigError(
                    f"unknown config key '{full_key}' (from {source})" + _suggest(full_key, self)
                )
            if depth < len(parts) - 1:
                node = node[part]
        if isinstance(node[parts[-1]], CfgNode):
            raise ConfigError(
                f"config key '{full_key}' (from {source}) is a section, not a value; "
                f"set one of its keys, e.g. '{full_key}.{next(iter(node[parts[-1]]), 'KEY')}'"
            )
        return node, parts[-1]

    # --- output -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, CfgNode) else _plain(v)) for k, v in self.items()}

    def dump(self, **kwargs) -> str:
        """Returns the config as YAML text (loadable again with ``merge_from_file``)."""
        stream = io.StringIO()
        yaml.safe_dump(self.to_dict(), stream, sort_keys=False, default_flow_style=None, **kwargs)
        return stream.getvalue()

    def __str__(self) -> str:
        return self.dump()

    def __repr__(self) -> str:
        return f"CfgNode({dict.__repr__(self)})"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _all_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}.{key}" if prefix else key
        keys.append(full)
        if isinstance(value, CfgNode):
            keys.extend(_all_keys(value, full))
    return keys


def _suggest(full_key: str, root: CfgNode) -> str:
    known = _all_keys(root)
    close = difflib.get_close_matches(full_key, known, n=3, cutoff=0.6)
    if not close:
        leaf = full_key.rsplit(".", 1)[-1]
        close = [k for k in known if k.rsplit(".", 1)[-1] == leaf][:3]
    if not close:
        close = difflib.get_close_matches(full_key, known, n=3, cutoff=0.3)
    return f"; did you mean: {', '.join(close)}?" if close else ""


def _parse_literal(raw: str) -> Any:
    """Parses a command-line VALUE: Python literal first, then YAML, else the string itself."""
    text = raw.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return raw


_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def _coerce(full_key: str, default: Any, value: Any, raw: Any, source: str) -> Any:
    """Converts ``value`` to the type of ``default`` or raises a one-line :class:`ConfigError`."""

    def fail() -> ConfigError:
        return ConfigError(
            f"config key '{full_key}' (from {source}) expects {_type_name(default)} "
            f"(default {default!r}), got {raw!r}"
        )

    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise fail()
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail()
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        # An override like OUTPUT_DIR 2024 parses as a number: keep the user's text.
        if isinstance(raw, str) and not isinstance(value, (list, tuple, dict)):
            return raw
        if value is None:
            return ""
        raise fail()
    if isinstance(default, (list, tuple)):
        if (
            isinstance(value, str)
            and isinstance(raw, str)
            and default
            and all(isinstance(v, str) for v in default)
        ):
            value = [value]  # a single name for a list of names
        if not isinstance(value, (list, tuple)):
            raise fail()
        if default:
            proto = default[0]
            if all(type(d) is type(proto) for d in default):
                try:
                    value = [_coerce(full_key, proto, v, v, source) for v in value]
                except ConfigError:
                    raise ConfigError(
                        f"config key '{full_key}' (from {source}) expects {_type_name(default)} "
                        f"of {_type_name(proto)} (default {default!r}), got {raw!r}"
                    ) from None
        return tuple(value) if isinstance(default, tuple) else list(value)
    if isinstance(default, CfgNode):
        raise fail()
    return value


def _merge_checked(node: CfgNode, data: dict, source: str, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or '<root>'}' in {source} must be a mapping")
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in node:
            raise ConfigError(
                f"unknown config key '{full}' (in {source})"
                + _suggest(full, _root_of(node, prefix))
            )
        if isinstance(node[key], CfgNode):
            if value is None:
                continue
            _merge_checked(node[key], value, source, full)
        else:
            node[key] = _coerce(full, node[key], value, value, source)


def _root_of(node: CfgNode, prefix: str) -> CfgNode:
    """A stand-in root holding ``node`` under ``prefix`` so suggestions are full key paths."""
    root = CfgNode()
    cur = root
    parts = [p for p in prefix.split(".") if p]
    for part in parts[:-1]:
        dict.__setitem__(cur, part, CfgNode())
        cur = cur[part]
    if parts:
        dict.__setitem__(cur, parts[-1], node)
        return root
    return node


# The configs/ folder of this repository: where a misspelt config name is looked up.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs")


def _shown(path: str) -> str:
    """``path`` as the user would type it: relative to the working directory when under it."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path, os.getcwd())
    return path if relative.startswith("..") else relative


def _close_config_files(path: str, start: str | None = None) -> list[str]:
    """Existing .yaml files whose names are closest to ``path`` (at most 3, best first).

    Candidates: every .yaml under ``configs/`` (of the repository and of the working directory)
    and the .yaml files in ``path``'s own folder. They are returned as :func:`_shown` paths, or
    relative to the folder ``start`` when given (the form a ``_BASE_`` line takes; a file two
    or more levels up is shown absolute instead).
    """
    found = set()
    for folder in {os.path.abspath(CONFIGS_DIR), os.path.abspath("configs")}:
        for root, _, files in os.walk(folder):
            found.update(os.path.join(root, f) for f in files if f.endswith((".yaml", ".yml")))
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(parent):
        found.update(
            os.path.join(parent, f) for f in os.listdir(parent) if f.endswith((".yaml", ".yml"))
        )

    def form(p: str) -> str:
        if start is None:
            return _shown(p)
        relative = os.path.relpath(p, start)
        return p if relative.startswith(os.path.join("..", "..")) else relative

    def stem(p: str) -> str:
        return os.path.splitext(os.path.basename(p))[0]

    # Ranked by the file name without folder and extension: a shared folder or ".yaml" would make
    # every file look close. The whole path only breaks ties (the same name in another folder).
    target = form(os.path.abspath(path))
    scored = []
    for candidate in filter(os.path.isfile, found):  # a folder named x.yaml is no candidate
        shown = form(candidate)
        name_score = difflib.SequenceMatcher(None, stem(target), stem(shown)).ratio()
        path_score = difflib.SequenceMatcher(None, target, shown).ratio()
        if name_score >= 0.6:
            scored.append((name_score, path_score, shown))
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    # Only those about as close as the best: a list of near misses would bury the one meant.
    return [shown for score, _, shown in scored if score >= scored[0][0] - 0.05][:3]


def _did_you_mean(close: list[str]) -> str:
    return f"; did you mean {' or '.join(close)}?" if close else ""


def load_yaml_with_base(path: str, _seen: tuple[str, ...] = ()) -> dict:
    """Loads a YAML config file and merges its ``_BASE_`` file(s) under it (recursively).

    A missing file is a :class:`ConfigError` naming it (and, for a ``_BASE_``, the file that
    refers to it) with the closest existing config names as suggestions.
    """
    given = path
    path = os.path.abspath(os.path.expanduser(path))
    if path in _seen:
        chain = " -> ".join(_seen + (path,))
        raise ConfigError(f"config file {path} inherits from itself through _BASE_: {chain}")
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "not found"
        raise ConfigError(
            f"config file '{given}' {what}" + _did_you_mean(_close_config_files(path))
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"config file {path} is not valid YAML: {' '.join(str(err).split())}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping at the top, got {_type_name(data)}"
        )
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(
            f"config file '{_shown(path)}' has _BASE_ {bases!r}; expected a file name or a list "
            "of file names"
        )
    merged: dict = {}
    for base in bases:
        folder = os.path.dirname(path)
        base_path = os.path.abspath(os.path.join(folder, os.path.expanduser(base)))
        if not os.path.isfile(base_path):
            # Named here, not in the recursive call, which no longer knows who referred to it.
            close = [f"'{c}'" for c in _close_config_files(base_path, start=folder)]
            raise ConfigError(
                f"config file '{_shown(path)}' has _BASE_ '{base}', which does not exist "
                f"(resolved to {base_path})" + _did_you_mean(close)
            )
        _deep_update(merged, load_yaml_with_base(base_path, _seen + (path,)))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)
