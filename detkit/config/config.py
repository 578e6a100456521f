"""Loading detkit configs: YAML files with ``_base_`` inheritance, dotted overrides, strict validation.

A config is built as a stack of *layers* on top of ``defaults.yaml``: each base file (recursively), the
file itself, then each command-line override. Every layer is validated on its own before merging, so
an error names the file (or "command line") that actually contains the bad key, not the leaf config.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import textwrap
from collections.abc import Mapping
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import yaml

from detkit.errors import ConfigError
from detkit.utils.io import atomic_write_text

from .constraints import Auto, check_relations, constraint_for
from .schema import (
    check_value,
    defaults,
    load_yaml,
    lookup_default,
    merge_layer,
    schema,
    suggest,
)

logger = logging.getLogger("detkit")

BASE_KEY = "_base_"
COMMAND_LINE = "command line"
DEFAULTS = "defaults.yaml"

PathLike = Union[str, "os.PathLike[str]"]
Overrides = Union[Iterable[str], Mapping]
Layer = Tuple[Dict[str, Any], str]  # (validated partial config, where it came from)


class FrozenList(list):
    """A list that refuses in-place changes, so ``cfg.solver.steps.append(...)`` cannot silently edit
    a config that other code already read. It still compares equal to, and works like, a plain list."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "config values are read-only; use cfg.with_overrides([...]) for a changed copy"
        )

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __reduce__(self):
        return (FrozenList, (list(self),))


class Config(Mapping):
    """A validated, read-only config: ``cfg.model.rpn.nms_thresh`` or ``cfg["model"]["rpn"]``.

    Read-only because builders read the same config object one after another; a builder that edited
    it would change what the next one sees. Use :meth:`with_overrides` to derive a changed copy.
    ``Config(d)`` and ``Config.from_dict(d)`` validate ``d`` on top of the defaults.
    """

    __slots__ = ("_data", "_prefix", "_source_file", "_origins")

    def __init__(
        self,
        data: Optional[Mapping] = None,
        *,
        source_file: Optional[str] = None,
        origin: str = "<dict>",
    ):
        layers = [] if data is None else [(check_value(data, schema(), "", origin), origin)]
        merged, origins = _merge_layers(layers)
        self._set(merged, "", source_file, origins)

    def _set(
        self, data: Dict[str, Any], prefix: str, source_file: Optional[str], origins: Dict[str, str]
    ) -> None:
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_source_file", source_file)
        object.__setattr__(self, "_origins", origins)

    @classmethod
    def _wrap(
        cls,
        data: Dict[str, Any],
        prefix: str = "",
        source_file: Optional[str] = None,
        origins: Optional[Dict[str, str]] = None,
    ) -> "Config":
        """Build without validation: only for data that is already validated."""
        cfg = cls.__new__(cls)
        cfg._set(data, prefix, source_file, origins if origins is not None else {})
        return cfg

    @classmethod
    def from_dict(
        cls, d: Mapping, *, origin: str = "<dict>", source_file: Optional[str] = None
    ) -> "Config":
        """Validate a plain dict (e.g. the config stored in a checkpoint) on top of the defaults.
        ``origin`` names it in errors, e.g. ``"checkpoint model_final.pth"``."""
        return cls(d, source_file=source_file, origin=origin)

    # -- mapping and attribute access --------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in self._data:
            raise KeyError(self._missing_message(key))
        return _freeze(self._data[key], _join(self._prefix, key), self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # keeps copy/pickle probes and half-built objects out of the data
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(e.args[0]) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __dir__(self) -> List[str]:
        return sorted(set(super().__dir__()) | set(self._data))

    def _read_only(self, *args: Any) -> None:
        raise TypeError("Config is read-only; use cfg.with_overrides([...]) for a changed copy")

    __setattr__ = __delattr__ = __setitem__ = __delitem__ = _read_only

    def __eq__(self, other: Any) -> bool:
        """Equal contents, wherever they were loaded from."""
        if isinstance(other, Config):
            return self._data == other._data
        return Mapping.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        return (
            Config._wrap,
            (self.to_dict(), self._prefix, self._source_file, dict(self._origins)),
        )

    def __repr__(self) -> str:
        head = "Config" + (f"[{self._prefix}]" if self._prefix else "")
        head += f" from {self._source_file}" if self._source_file else ""
        return f"{head}:\n" + textwrap.indent(_to_yaml(self._data).rstrip(), "  ")

    def _missing_message(self, key: str) -> str:
        full = _join(self._prefix, key)
        if self._prefix.endswith("]"):  # inside a free-form entry: no schema to suggest from
            return f"config has no key '{full}'; keys here: {', '.join(self._data)}"
        return f"config has no key '{full}'; {suggest(key, self._data, self._prefix)}"

    # -- public helpers ----------------------------------------------------------------------
    @property
    def source_file(self) -> Optional[str]:
        """Absolute path of the file this config was loaded from, or None (defaults, a dict)."""
        return self._source_file

    def origin(self, key: str) -> str:
        """Where the value of a dotted ``key`` (relative to this node) was last set: a file path,
        "command line", or "defaults.yaml". Builders use it so their errors can name the file, e.g.
        for an unknown argument inside ``data.train.datasets[0]``."""
        full = _join(self._prefix, key)
        while full:
            if full in self._origins:
                return self._origins[full]
            if full.endswith("]"):  # data.train.datasets[0] -> data.train.datasets
                full = full[: full.rindex("[")]
            else:
                full = full.rsplit(".", 1)[0] if "." in full else ""
        return DEFAULTS

    def to_dict(self) -> Dict[str, Any]:
        """A deep copy as plain dicts and lists (safe to mutate, YAML- and torch.save-friendly)."""
        return copy.deepcopy(self._data)

    def copy(self) -> "Config":
        return Config._wrap(self.to_dict(), self._prefix, self._source_file, dict(self._origins))

    def dump(self, path: PathLike) -> None:
        """Write the resolved config as YAML, atomically (a crash never leaves a half-written file
        next to the checkpoints), creating the parent folder if needed."""
        header = "# detkit config, fully resolved"
        header += f" from {self._source_file}\n" if self._source_file else "\n"
        atomic_write_text(header + _to_yaml(self._data), path)

    def with_overrides(self, overrides: Overrides) -> "Config":
        """A new validated Config with ``["key=value", ...]`` (values parsed as YAML) or a
        ``{"dotted.key": value}`` mapping (values used as they are) applied on top."""
        if self._prefix:
            raise TypeError(
                f"with_overrides works on the whole config, not on the '{self._prefix}' section"
            )
        data, origins = _merge_layers(
            _override_layers(overrides), dict(self._origins), start=self.to_dict()
        )
        return Config._wrap(data, "", self._source_file, origins)


def _join(parent: str, key: Any) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _freeze(value: Any, key: str, owner: Config) -> Any:
    """Read-only views of nested values; scalars are immutable already."""
    if isinstance(value, dict):
        return Config._wrap(value, key, owner._source_file, owner._origins)
    if isinstance(value, list):
        return FrozenList(_freeze(v, f"{key}[{i}]", owner) for i, v in enumerate(value))
    return value


def _to_yaml(data: Any) -> str:
    # flow style for lists of scalars keeps `pixel_mean: [123.675, ...]` on one line
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


def _record_origins(layer: Mapping, label: str, prefix: str, origins: Dict[str, str]) -> None:
    for k, v in layer.items():
        key = _join(prefix, k)
        if isinstance(v, Mapping) and isinstance(lookup_default(key.split(".")), Mapping):
            _record_origins(v, label, key, origins)
        else:
            origins[key] = label


def _merge_layers(
    layers: List[Layer],
    origins: Optional[Dict[str, str]] = None,
    start: Optional[Dict[str, Any]] = None,
) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Merge validated layers onto ``start`` (default: the defaults), left to right, and note who
    set each key. A layer that picks another class for a component section resets that section."""
    origins = {} if origins is None else origins
    data = defaults() if start is None else start
    for layer, label in layers:
        merge_layer(data, layer, label, origins)
        _record_origins(layer, label, "", origins)
    check_relations(
        lambda key: functools.reduce(lambda node, part: node[part], key.split("."), data),
        lambda key: origins.get(key, DEFAULTS),
    )
    return data, origins


# -- files and _base_ ---------------------------------------------------------------------------
def _read_yaml(path: str, label: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = load_yaml(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {label}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {label}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{label} is not valid YAML: {e}") from None
    if data is None:  # an empty file is an empty config
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{label} must hold a mapping of config keys at the top level, "
            f"got {type(data).__name__}"
        )
    return data


def _base_paths(bases: Any, label: str) -> List[str]:
    if isinstance(bases, str):
        return [bases]
    if isinstance(bases, list) and all(isinstance(b, str) for b in bases):
        return bases
    raise ConfigError(
        f"'{BASE_KEY}' in {label} must be a path or a list of paths relative to "
        f"that file, e.g. _base_: [../_base_/models/faster_rcnn_r50_fpn.yaml]; "
        f"got {bases!r}"
    )


def _dict_layers(data: Mapping, label: str, base_dir: str, stack: Tuple[str, ...]) -> List[Layer]:
    """The layers of one config: each base in order (recursively), then its own keys on top."""
    own = dict(data)
    layers: List[Layer] = []
    for base in _base_paths(own.pop(BASE_KEY, []), label):
        path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(base)))
        if not os.path.isfile(path):
            raise ConfigError(
                f"base config '{base}' listed in {label} not found "
                f"(looked for {os.path.abspath(path)})"
            )
        layers += _file_layers(path, path, stack + (label,))
    layers.append((check_value(own, schema(), "", label), label))
    return layers


def _file_layers(path: str, label: str, stack: Tuple[str, ...]) -> List[Layer]:
    real = os.path.realpath(path)
    seen = [os.path.realpath(p) for p in stack]
    if real in seen:
        chain = " -> ".join(stack[seen.index(real) :] + (label,))
        raise ConfigError(f"{BASE_KEY} cycle: {chain}")
    data = _read_yaml(path, label)
    logger.debug("config: reading %s", label)
    return _dict_layers(data, label, os.path.dirname(path), stack)


# -- command-line overrides ---------------------------------------------------------------------
_OVERRIDE_EXAMPLE = (
    "e.g. solver.base_lr=0.01 test.scales=[600,800] model.backbone.weights=/x/r50.pth"
)


def _parse_override(text: Any) -> Tuple[str, Any]:
    """Split ``key=value`` and parse the value as YAML, as a file's value is parsed. String-typed keys
    take the text verbatim (unless it is quoted): YAML would turn ``2024-01-01`` into a date, ``null``
    into None and cut a path at `` #``, none of which a user typing a path or a name on the command
    line means. An ``auto | int`` key is parsed as YAML: ``2`` is the int 2 there, as in a file."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"malformed override {text!r}: expected key=value, {_OVERRIDE_EXAMPLE}")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key or not all(key.split(".")):
        raise ConfigError(
            f"malformed override {text!r}: the key must be a dotted config key, {_OVERRIDE_EXAMPLE}"
        )
    verbatim = isinstance(lookup_default(key.split(".")), str) and not isinstance(
        constraint_for(key), Auto
    )
    if verbatim and raw[:1] not in ("'", '"'):
        return key, raw
    try:
        return key, load_yaml(raw)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0]
        raise ConfigError(
            f"cannot parse the value of override {text!r} as YAML ({problem}); "
            f"quote strings that contain YAML syntax"
        ) from None


def _override_layers(overrides: Overrides) -> List[Layer]:
    """One layer per override, applied in order, so `a.b=1 a={c: 2}` behaves like two YAML files."""
    if overrides is None:
        return []
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(
            f"overrides must be a list of key=value strings, not one string "
            f"({overrides!r}); {_OVERRIDE_EXAMPLE}"
        )
    if isinstance(overrides, Mapping):
        items, label = [(str(k), v) for k, v in overrides.items()], "overrides"
    else:
        items, label = [_parse_override(o) for o in overrides], COMMAND_LINE
    layers = []
    for key, value in items:
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        layers.append((check_value(nested, schema(), "", label), label))
    return layers


# -- entry point --------------------------------------------------------------------------------
def load_config(
    path_or_dict: Union[None, PathLike, Mapping] = None, overrides: Overrides = ()
) -> Config:
    """Load a config: ``None`` = defaults only, a YAML path (with ``_base_``), a dict (its ``_base_``
    paths relative to the working directory) or a Config; then ``overrides`` on top."""
    if isinstance(path_or_dict, Config):
        return path_or_dict.with_overrides(overrides)
    source_file = None
    if path_or_dict is None:
        layers: List[Layer] = []
    elif isinstance(path_or_dict, Mapping):
        layers = _dict_layers(path_or_dict, "<dict>", "", ())
    elif isinstance(path_or_dict, (str, os.PathLike)):
        path = os.fspath(path_or_dict)
        source_file = os.path.abspath(path)
        layers = _file_layers(path, path, ())
    else:
        raise TypeError(f"load_config expects a path, a dict or None, got {type(path_or_dict)}")
    data, origins = _merge_layers(layers + _override_layers(overrides))
    if source_file:  # the tools log the run's config once (engine.launch); matching scans many
        logger.debug("config: loaded %s", source_file)
    return Config._wrap(data, "", source_file, origins)
