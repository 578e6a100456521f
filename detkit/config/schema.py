"""The config schema is ``defaults.yaml`` itself: every key it lists is valid, and its value fixes the type;
``constraints.py`` adds each key's allowed values (choices, ranges, ``auto | int``).

Keeping the schema as plain YAML (rather than a second, hand-written spec) means a new option is added
in exactly one place, with its default and a comment, and the validator cannot drift from it.
Component sections (a ``name:`` picking a class) take their keys from ``components.yaml``: per class,
its constructor arguments with their defaults (a test keeps it equal to the signatures). The config
package reads that table instead of importing the model code, so loading a config stays light and
the config layer never depends on the layers that consume it.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import functools
import numbers
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any, Dict, List

import yaml

from detkit.errors import ConfigError

from .constraints import Auto, constraint_for

# Keys whose value is a list of free-form dicts ``{name: <registered class>, ...kwargs}``. Only ``name``
# is checked here; the other keys are checked against the constructor by the builder, which knows it.
FREEFORM_ENTRY_LISTS = ("data.*.datasets",)

MISSING = object()  # "no such key in the schema", distinct from a default of None


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float. PyYAML follows YAML 1.1, where an
    exponent needs a dot (``1.0e-4``), so ``weight_decay: 1e-4`` would be the string "1e-4"."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(stream: Any) -> Any:
    """Parse YAML text or a file object the way every detkit config is parsed (safe, see _Loader)."""
    return yaml.load(stream, Loader=_Loader)


def _read_packaged(name: str) -> Any:
    return load_yaml(resources.files("detkit.config").joinpath(name).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _parsed_defaults() -> Dict[str, Any]:
    return _read_packaged("defaults.yaml")


@functools.lru_cache(maxsize=1)
def components() -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{section key: {class name: {key: default}}}`` from components.yaml: the keys each class of
    a component section takes (its constructor arguments). Shared and cached: never mutate it."""
    return _read_packaged("components.yaml")


def _component_union(section: str) -> Dict[str, Any]:
    """Every key some class of ``section`` takes, with the first default seen (for its type)."""
    union: Dict[str, Any] = {}
    for keys in components()[section].values():
        for k, v in keys.items():
            union.setdefault(k, v)
    return union


def schema() -> Dict[str, Any]:
    """The parsed defaults, shared and cached: read it, never mutate it (use :func:`defaults`)."""
    return _parsed_defaults()


def defaults() -> Dict[str, Any]:
    """A private deep copy of ``defaults.yaml``, the starting point every config is merged onto."""
    return copy.deepcopy(_parsed_defaults())


def lookup_default(parts: List[str]) -> Any:
    """The default at a dotted path split into ``parts``, or ``MISSING`` when there is no such key.
    A key only a non-default class of a component section takes has that class's default."""
    node: Any = schema()
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping) or part not in node:
            section = ".".join(parts[:i])
            if section in components() and i == len(parts) - 1:
                return _component_union(section).get(part, MISSING)
            return MISSING
        node = node[part]
    return node


def _join(parent: str, key: Any) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _dotted_keys(node: Mapping, prefix: str = "") -> List[str]:
    keys = []
    for k, v in node.items():
        keys.append(_join(prefix, k))
        if isinstance(v, Mapping):
            keys.extend(_dotted_keys(v, _join(prefix, k)))
    return keys


def _all_dotted_keys() -> List[str]:
    """Every key of the schema, the keys of non-default component classes included."""
    keys = _dotted_keys(schema())
    for section in components():
        keys += [
            _join(section, k) for k in _component_union(section) if _join(section, k) not in keys
        ]
    return keys


def type_name(value: Any) -> str:
    """YAML-flavoured type names, since that is what the user wrote."""
    if value is None:
        return "null"
    for name, kind in (
        ("bool", bool),
        ("int", numbers.Integral),
        ("float", numbers.Real),
        ("str", str),
        ("list", (list, tuple)),
        ("dict", Mapping),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _what(key: str) -> str:
    return f"config key '{key}'" if key else "config"


def type_error(key: str, label: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(
        f"{_what(key)} ({label}): expected {expected}, got {type_name(value)} {_show(value)}"
    )


def suggest(name: Any, valid: Mapping, parent: str) -> str:
    """A hint for a key ``name`` not found among ``valid`` (the keys under ``parent``): the closest key
    at the same level, else the same name at another level (a key under the wrong parent is the other
    common mistake), else the list of valid keys."""
    close = difflib.get_close_matches(str(name), [str(k) for k in valid], n=1)
    if close:
        return f"did you mean '{_join(parent, close[0])}'?"
    elsewhere = [k for k in _all_dotted_keys() if k.rsplit(".", 1)[-1] == str(name)]
    if elsewhere:
        return "did you mean " + " or ".join(f"'{k}'" for k in elsewhere[:3]) + "?"
    where = f"under '{parent}'" if parent else "at the top level"
    return f"valid keys {where}: " + ", ".join(str(k) for k in valid)


def unknown_key_error(key: str, name: Any, valid: Mapping, parent: str, label: str) -> ConfigError:
    return ConfigError(f"unknown config key '{key}' ({label}); {suggest(name, valid, parent)}")


def not_applicable_error(
    key: str, label: str, section: str, name: str, name_from: str
) -> ConfigError:
    """A key some class of a component section takes, set while another class is chosen."""
    takes = list(components()[section][name])
    takes_text = "takes: " + ", ".join(takes) if takes else "takes no keys besides name"
    return ConfigError(
        f"config key '{key}' ({label}) does not apply to {name} ('{section}.name' from "
        f"{name_from}); {name} {takes_text}"
    )


def check_value(value: Any, default: Any, key: str, label: str) -> Any:
    """Return a validated deep copy of ``value`` for the key whose default is ``default``.

    ``key`` is the full dotted key (``""`` for the whole config) and ``label`` where the value came
    from (a file, "command line"); both go into every error. Ints become floats where a float is
    expected, so ``base_lr: 1`` works; everything else must already have the default's type, and
    be a value the key's constraint allows (``constraints.py``; an ``auto | int`` key has no other
    type check).
    """
    if key in components():
        return _check_component(value, key, label)
    if isinstance(default, Mapping):
        return _check_mapping(value, default, key, label)
    if any(fnmatch.fnmatchcase(key, pattern) for pattern in FREEFORM_ENTRY_LISTS):
        return _check_entries(value, key, label)
    if isinstance(default, (list, tuple)):
        return _check_list(value, default, key, label)
    constraint = constraint_for(key)
    if isinstance(constraint, Auto):  # its own type: "auto" or an int
        return constraint.check(value, key, label)
    value = _check_scalar(value, default, key, label)
    return value if constraint is None else constraint.check(value, key, label)


def _check_mapping(value: Any, default: Mapping, key: str, label: str) -> Dict[str, Any]:
    if not isinstance(value, Mapping):
        keys = ", ".join(list(default)[:3]) + (", ..." if len(default) > 3 else "")
        raise type_error(key, label, f"a mapping of keys ({keys})", value)
    out = {}
    for k, v in value.items():
        sub = _join(key, k)
        if not isinstance(k, str) or k not in default:
            raise unknown_key_error(sub, k, default, key, label)
        out[k] = check_value(v, default[k], sub, label)
    return out


def _check_component(value: Any, key: str, label: str) -> Dict[str, Any]:
    """A component section on its own: ``name`` must be one of its classes; the other keys must be
    taken by that class, or (when this layer does not set ``name``) by some class of the section;
    which class is chosen in the end is checked when the layers merge (:func:`merge_layer`)."""
    choices = components()[key]
    if not isinstance(value, Mapping):
        raise type_error(key, label, f"a mapping of keys (name: {' | '.join(choices)}, ...)", value)
    out: Dict[str, Any] = {}
    valid = _component_union(key)
    if "name" in value:
        name = out["name"] = check_value(value["name"], "", _join(key, "name"), label)
        if name not in choices:
            close = difflib.get_close_matches(name, list(choices), n=1)
            raise ConfigError(
                f"config key '{key}.name' ({label}): unknown class '{name}'; valid: "
                + ", ".join(choices)
                + (f"; did you mean '{close[0]}'?" if close else "")
            )
        valid = choices[name]
    for k, v in value.items():
        sub = _join(key, k)
        if k == "name":
            continue
        if not isinstance(k, str) or k not in valid:
            if "name" in value and k in _component_union(key):
                raise not_applicable_error(sub, label, key, value["name"], label)
            raise unknown_key_error(sub, k, {"name": "", **_component_union(key)}, key, label)
        out[k] = check_value(v, valid[k], sub, label)
    return out


def _get_path(node: Any, parts: List[str]) -> Any:
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def merge_layer(base: Dict[str, Any], layer: Mapping, label: str, origins: Dict[str, str]) -> None:
    """Merge one validated ``layer`` into ``base`` in place (see :func:`deep_merge`), with the rule
    of component sections: a layer that sets a different ``name`` first resets the section to that
    class's defaults, and every other key the layer sets there must be one the chosen class takes.
    ``origins`` (dotted key -> where it was set) names the file that chose the class in errors;
    the origins of a reset section's earlier keys are dropped."""
    for section, choices in components().items():
        parts = section.split(".")
        keys = _get_path(layer, parts)
        if not isinstance(keys, Mapping):
            continue
        name = keys.get("name", _get_path(base, parts)["name"])
        if name != _get_path(base, parts)["name"]:
            _get_path(base, parts[:-1])[parts[-1]] = {"name": name, **copy.deepcopy(choices[name])}
            for key in [k for k in origins if k.startswith(section + ".")]:
                del origins[key]
        name_from = (
            label if "name" in keys else origins.get(_join(section, "name"), "defaults.yaml")
        )
        for k in keys:
            if k != "name" and k not in choices[name]:
                raise not_applicable_error(_join(section, k), label, section, name, name_from)
    deep_merge(base, layer)


def _check_list(value: Any, default: Any, key: str, label: str) -> List[Any]:
    if not isinstance(value, (list, tuple)):
        expected = f"a list of {type_name(default[0])}" if default else "a list"
        raise type_error(key, label, expected, value)
    if not default:  # an empty default list says nothing about its elements; its constraint may
        constraint = constraint_for(key)
        if constraint is None:
            return copy.deepcopy(list(value))
        return [constraint.check(v, f"{key}[{i}]", label) for i, v in enumerate(value)]
    template = default[0]
    return [check_value(v, template, f"{key}[{i}]", label) for i, v in enumerate(value)]


def _check_entries(value: Any, key: str, label: str) -> List[Dict[str, Any]]:
    if not isinstance(value, (list, tuple)):
        raise type_error(key, label, "a list of {name: ..., ...} dicts", value)
    for i, entry in enumerate(value):
        if (
            not isinstance(entry, Mapping)
            or not isinstance(entry.get("name"), str)
            or not entry["name"]
        ):
            raise ConfigError(
                f"config key '{key}[{i}]' ({label}): each entry must be a dict with a 'name' string "
                f"naming a registered class, e.g. {{name: COCODataset, ann_file: ...}}; "
                f"got {_show(entry)}"
            )
    return [copy.deepcopy(dict(entry)) for entry in value]


def _check_scalar(value: Any, default: Any, key: str, label: str) -> Any:
    if default is None:
        return copy.deepcopy(value)
    # bool is an int subclass in Python, but `depth: true` is always a mistake, so refuse it
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        expected = "bool"
    elif isinstance(default, numbers.Integral):
        if is_number and isinstance(value, numbers.Integral):
            return int(value)
        expected = "int"
    elif isinstance(default, numbers.Real):
        if is_number:
            return float(value)
        expected = "float (or int)"
    elif isinstance(value, type(default)):
        return value
    else:
        expected = type_name(default)
    raise type_error(key, label, expected, value)


def deep_merge(base: Dict[str, Any], top: Mapping) -> Dict[str, Any]:
    """Merge ``top`` into ``base`` in place: dicts merge key by key, anything else (lists included)
    replaces, so a derived config's list is the whole list, never appended to its base's."""
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), Mapping):
            deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base
