"""One small registry: a name -> class/function table with a helpful error for unknown names."""

from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterator, Optional


class Registry:
    """Maps names to implementations, e.g. ``ROI_POOLERS.register()(ROIAlign)``.

    ``get`` on an unknown name raises ``KeyError`` listing everything registered and the closest match.
    Only where two or more implementations exist: a config's ``name:`` picks one of them, and the
    builder asks the class (its constructor, its attributes) rather than testing the name.
    """

    def __init__(self, name: str):
        self.name = name
        self._table: Dict[str, Callable] = {}

    def register(self, name: Optional[str] = None) -> Callable:
        def deco(obj: Callable) -> Callable:
            key = name or obj.__name__
            if key in self._table:
                raise KeyError(f"'{key}' is already registered in the {self.name} registry")
            self._table[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable:
        if name not in self._table:
            close = difflib.get_close_matches(str(name), list(self._table), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise KeyError(f"unknown {self.name} '{name}'; registered: {sorted(self._table)}{hint}")
        return self._table[name]

    def __contains__(self, name: str) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._table))

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {sorted(self._table)})"


ROI_BOX_HEADS = Registry("RoI box head")
ROI_POOLERS = Registry("RoI pooler")
DATASETS = Registry("dataset")
EVALUATORS = Registry("evaluator")
