"""modeling/build.py: config sections become constructor arguments; the classes, not their names,
decide how they are built; registries exist only where there is a choice."""

import pytest
import torch

import detkit.registry as registry
from detkit.config import load_config
from detkit.errors import ConfigError
from detkit.modeling import build_model
from detkit.modeling.backbones.norm import FrozenBatchNorm2d
from detkit.modeling.backbones.resnet import BasicBlock

TINY = ["model.num_classes=3", "model.backbone.depth=18", "model.backbone.freeze_at=0"]
C4 = TINY + [
    "model.backbone.out_features=[res4]",
    "model.neck.name=none",
    "model.rpn.in_features=[res4]",
    "model.rpn.anchor_sizes=[[16,32,64]]",
    "model.roi_heads.in_features=[res4]",
    "model.roi_heads.pooler={name: ROIPool, output_size: 14}",
    "model.roi_heads.box_head.name=Res5Head",
]


def build(overrides):
    torch.manual_seed(0)
    return build_model(load_config(None, overrides))


def test_registries_only_where_there_is_a_choice():
    import detkit.data  # noqa: F401  (register the datasets and evaluators)
    import detkit.evaluation  # noqa: F401

    registries = [v for v in vars(registry).values() if isinstance(v, registry.Registry)]
    assert {r.name for r in registries} == {"RoI pooler", "RoI box head", "dataset", "evaluator"}
    for reg in registries:
        assert len(list(reg)) >= 2, reg


def test_component_sections_become_constructor_arguments():
    model = build(
        TINY
        + [
            "model.neck.out_channels=32",
            "model.roi_heads.pooler={sampling_ratio: 0, aligned: true, canonical_level: 3}",
            "model.roi_heads.box_head.fc_dim=48",
            "model.rpn.pre_nms_topk_train=111",
            "model.rpn.post_nms_topk_test=22",
            "model.roi_heads.refine_iterations=2",
            "model.roi_heads.context=true",
        ]
    )
    pooler = model.roi_heads.pooler
    assert (pooler.sampling_ratio, pooler.aligned, pooler.canonical_level) == (0, True, 3)
    assert model.neck.out_channels == {f"p{i}": 32 for i in range(2, 7)}
    assert model.roi_heads.box_head.out_channels == 48
    assert (model.rpn.pre_nms_topk_train, model.rpn.post_nms_topk_test) == (111, 22)
    assert (model.roi_heads.refine_iterations, model.roi_heads.context) == (2, True)
    assert model.roi_heads.matcher.fg_iou_thresh == 0.5
    assert model.roi_heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)


def test_c4_backbone_stops_at_res4_and_the_res5_head_continues_it():
    model = build(C4 + ["model.backbone.norm=FrozenBN"])
    assert model.neck is None
    assert not hasattr(model.backbone, "layer4")  # res5 lives in the head: no unused parameters
    res5 = model.roi_heads.box_head.res5
    assert isinstance(res5[0], BasicBlock)  # the backbone's depth (18), not Res5Head's default
    assert isinstance(res5[0].bn1, FrozenBatchNorm2d)  # and the backbone's norm


def test_a_stage_nothing_reads_is_an_error():
    with pytest.raises(ConfigError) as err:
        build(C4 + ["model.backbone.out_features=[res4, res5]"])
    assert str(err.value).startswith(
        "config key 'model.backbone.out_features' (command line): the backbone builds up to res5"
    )


def test_missing_features_name_the_key_and_its_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("model: {roi_heads: {in_features: [p2, p9]}}\n")
    with pytest.raises(ConfigError) as err:
        build_model(load_config(path, TINY))
    assert str(err.value).startswith(
        f"config key 'model.roi_heads.in_features' ({path}): features ['p9'] are not produced"
    )
    with pytest.raises(ConfigError, match=r"'model.rpn.anchor_sizes' \(command line\): 2 levels"):
        build(TINY + ["model.rpn.anchor_sizes=[[16],[32]]"])
