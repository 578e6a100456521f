"""Pick the evaluator a dataset asks for (``dataset.evaluator_type``)."""

from __future__ import annotations

from typing import Any, Optional

from ..registry import EVALUATORS

_BY_TYPE = {"coco": "COCOEvaluator", "voc": "VOCEvaluator"}


def build_evaluator(
    dataset: Any, output_dir: Optional[str] = None, engine: str = "fast", **kwargs: Any
):
    """A ``COCOEvaluator`` or ``VOCEvaluator`` for ``dataset``.

    COCO-style datasets provide ``ann_file``, ``label_to_category_id`` and ``class_names``; VOC-style
    ones ``records`` and ``class_names``.  ``engine`` applies to COCO only; ``kwargs`` go to the
    evaluator (e.g. ``use_07_metric`` for VOC).
    """
    kind = getattr(dataset, "evaluator_type", None)
    if kind not in _BY_TYPE:
        raise ValueError(
            f"{type(dataset).__name__}.evaluator_type is {kind!r}; accepted: {sorted(_BY_TYPE)}"
        )
    cls = EVALUATORS.get(_BY_TYPE[kind])
    if kind == "coco":
        return cls(
            dataset.ann_file,
            dataset.label_to_category_id,
            dataset.class_names,
            engine=engine,
            output_dir=output_dir,
            **kwargs,
        )
    return cls(dataset.records, dataset.class_names, output_dir=output_dir, **kwargs)
