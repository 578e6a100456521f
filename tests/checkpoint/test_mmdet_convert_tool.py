"""tools/convert_weights.py --from mmdetection: a state dict saved from mmdetection's own model (built
from mmdet 3.3.0's config with random weights, nothing downloaded) becomes a detkit checkpoint that
loads into the config's model with strict=True; and mmdetection's ImageNet backbone files load as
model.backbone.weights. Skipped, visibly, without mmdet (the ImageNet test needs none)."""

from __future__ import annotations

import os

import pytest
import torch

from detkit.checkpoint import init_from_config, load_checkpoint, load_model_weights
from detkit.config import load_config
from detkit.errors import CheckpointError
from detkit.modeling import build_model
from tests.helpers import ROOT, error_lines, load_tool

CONFIGS = ROOT / "configs" / "mmdetection"


def _mmdet_file(tmp_path, name: str, classes=None):
    """``{"state_dict", "meta"}`` of mmdet's model ``name`` with seeded random weights, as mmdet
    saves a checkpoint (3.x: the class names in meta.dataset_meta)."""
    pytest.importorskip("mmcv.ops", reason="mmcv 2.1.0 with its ops not installed (.ci/run)")
    mmdet = pytest.importorskip("mmdet", reason="mmdet 3.3.0 not installed (.ci/run)")
    from mmdet.apis import init_detector
    from mmengine.config import Config

    folder = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "faster_rcnn")
    cfg = Config.fromfile(os.path.join(folder, name + ".py"))
    cfg.model.backbone.init_cfg = None  # no ImageNet download
    if classes is not None:
        cfg.model.roi_head.bbox_head.num_classes = len(classes)
    torch.manual_seed(0)
    model = init_detector(cfg, checkpoint=None, device="cpu")
    classes = list(classes or model.dataset_meta["classes"])
    path = tmp_path / f"{name}.pth"
    torch.save(
        {"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": classes}}}, path
    )
    return path, model.state_dict(), classes


@pytest.mark.parametrize(
    "name, classes",
    [
        ("faster-rcnn_r50_fpn_1x_coco", ("cat", "dog", "car")),  # names from the file's meta
        ("faster-rcnn_r50-caffe_c4-1x_coco", None),  # C4: res5 per region (shared_head)
    ],
)
def test_convert_tool_writes_a_checkpoint_that_loads_strictly(tmp_path, name, classes):
    src, mm_state, names = _mmdet_file(tmp_path, name, classes)
    dst = tmp_path / "out.pth"
    config = CONFIGS / f"{name}.yaml"
    tool = load_tool("convert_weights")
    assert tool.main(["--from", "mmdetection", "--config", str(config), str(src), str(dst)]) == 0
    ckpt = load_checkpoint(dst, require=("model", "config", "class_names"))
    assert ckpt["class_names"] == names
    assert ckpt["source"].startswith("mmdetection:")
    cfg = load_config(config, [f"model.num_classes={len(names)}"])
    model = build_model(cfg, class_names=names)
    load_model_weights(model, dst, strict=True, checkpoint=ckpt)
    # the tensors are mmdet's, unchanged (one per part of the network)
    own = model.state_dict()
    assert torch.equal(own["backbone.conv1.weight"], mm_state["backbone.conv1.weight"])
    assert torch.equal(own["rpn.head.objectness.weight"], mm_state["rpn_head.rpn_cls.weight"])
    assert torch.equal(
        own["roi_heads.predictor.bbox_pred.weight"], mm_state["roi_head.bbox_head.fc_reg.weight"]
    )


def test_convert_tool_refuses_another_file_in_one_line(tmp_path, capsys):
    """A detectron2-style or plain file given as --from mmdetection: one line naming the file."""
    src = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, src)
    tool = load_tool("convert_weights")
    config = CONFIGS / "faster-rcnn_r50_fpn_1x_coco.yaml"
    args = ["--from", "mmdetection", "--config", str(config), str(src), str(tmp_path / "o.pth")]
    assert tool.main(args) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{src} is not an mmdetection detector" in line
    assert not (tmp_path / "o.pth").exists()


def _resnext_state(groups: int, width: int, depth: int = 50):
    """A torchvision-named ResNeXt state dict, as mmdet's ResNeXt (and the open-mmlab:// ImageNet
    files) name it; built by detkit's own backbone so that no mmdet is needed."""
    cfg = load_config(
        None,
        [
            f"model.backbone.depth={depth}",
            f"model.backbone.num_groups={groups}",
            f"model.backbone.width_per_group={width}",
        ],
    )
    torch.manual_seed(1)
    model = build_model(cfg)
    for p in model.backbone.parameters():
        p.data.normal_()
    return {
        k[len("backbone.") :]: v for k, v in model.state_dict().items() if k.startswith("backbone.")
    }


@pytest.mark.parametrize("prefix", ["", "module.", "backbone."])
def test_mmdet_imagenet_resnext_file_is_a_backbone_init(tmp_path, prefix):
    """open-mmlab://resnext101_32x4d-style files: {"state_dict": ...} with torchvision's names,
    maybe behind module. (DataParallel) or backbone., plus the ImageNet classifier."""
    state = _resnext_state(32, 4)
    saved = {prefix + k: v for k, v in state.items()}
    saved[prefix + "fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "resnext50_32x4d.pth"
    torch.save({"state_dict": saved, "meta": {}}, path)
    cfg = load_config(
        None,
        [
            "model.backbone.num_groups=32",
            "model.backbone.width_per_group=4",
            f"model.backbone.weights={path}",
        ],
    )
    model = init_from_config(build_model(cfg), cfg)
    own = model.state_dict()
    for k, v in state.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(own["backbone." + k], v), k


def test_mmdet_imagenet_file_of_another_width_names_the_shapes(tmp_path):
    path = tmp_path / "resnext50_32x4d.pth"
    torch.save({"state_dict": _resnext_state(32, 4)}, path)
    cfg = load_config(None, [f"model.backbone.weights={path}"])  # a plain ResNet-50
    with pytest.raises(CheckpointError, match="shapes differ"):
        init_from_config(build_model(cfg), cfg)


def test_mmdet_imagenet_resnext_from_mmdets_own_module(tmp_path):
    """The names of mmdet's ResNeXt itself (what its ImageNet files fit) load into detkit's."""
    pytest.importorskip("mmdet", reason="mmdet 3.3.0 not installed (.ci/run)")
    from mmdet.models.backbones import ResNeXt

    torch.manual_seed(2)
    mm = ResNeXt(depth=50, groups=32, base_width=4, init_cfg=None)
    path = tmp_path / "x50.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in mm.state_dict().items()}}, path)
    cfg = load_config(
        None,
        [
            "model.backbone.num_groups=32",
            "model.backbone.width_per_group=4",
            f"model.backbone.weights={path}",
        ],
    )
    own = init_from_config(build_model(cfg), cfg).state_dict()
    for k, v in mm.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(own["backbone." + k], v), k


def _caffe2_blobs(state):
    """torchvision ResNet names -> MSRA's Caffe2 blob names (affine norms: scale and shift only)."""
    letters = {"1": "a", "2": "b", "3": "c"}
    blobs = {}
    for k, v in state.items():
        if "running" in k or k.endswith("num_batches_tracked"):
            continue
        v = v.numpy().copy()
        if k == "conv1.weight":
            blobs["conv1_w"] = v
            continue
        if k.startswith("bn1."):
            blobs["res_conv1_bn_" + ("s" if k.endswith("weight") else "b")] = v
            continue
        layer, block, rest = k.split(".", 2)
        unit = f"res{int(layer[-1]) + 1}_{block}_"
        part, param = rest.rsplit(".", 1)
        if part == "downsample.0":
            blobs[unit + "branch1_w"] = v
        elif part == "downsample.1":
            blobs[unit + "branch1_bn_" + ("s" if param == "weight" else "b")] = v
        elif part.startswith("conv"):
            blobs[unit + "branch2" + letters[part[-1]] + "_w"] = v
        else:  # bn1..3
            blobs[
                unit + "branch2" + letters[part[-1]] + "_bn_" + ("s" if param == "weight" else "b")
            ] = v
    return blobs


def test_mmdet_msra_pth_and_r50_pkl_give_the_same_backbone(tmp_path):
    """open-mmlab://detectron2/resnet50_caffe (resnet50_msra-5891d200.pth) is MSRA's R-50.pkl
    converted by mmdet's tools/model_converters/detectron2pytorch.py: run that converter on a
    Caffe2 file and load both into the caffe-style config: the same backbone."""
    mmdet = pytest.importorskip("mmdet", reason="mmdet 3.3.0 not installed (.ci/run)")
    import importlib.util
    import pickle

    converter = os.path.join(
        os.path.dirname(mmdet.__file__), ".mim", "tools", "model_converters", "detectron2pytorch.py"
    )
    spec = importlib.util.spec_from_file_location("mmdet_detectron2pytorch", converter)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    state = _resnext_state(1, 64)  # a ResNet-50 with random weights
    pkl = tmp_path / "R-50.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"blobs": _caffe2_blobs(state)}, f, protocol=2)
    pth = tmp_path / "resnet50_msra.pth"
    module.convert(str(pkl), str(pth), 50)
    config = CONFIGS / "faster-rcnn_r50-caffe_fpn_1x_coco.yaml"
    backbones = []
    for path in (pkl, pth):
        cfg = load_config(config, [f"model.backbone.weights={path}"])
        torch.manual_seed(0)
        model = init_from_config(build_model(cfg), cfg)
        backbones.append({k: v for k, v in model.state_dict().items() if k.startswith("backbone.")})
    assert backbones[0].keys() == backbones[1].keys()
    for k, v in backbones[0].items():
        assert torch.equal(v, backbones[1][k]), k
    assert torch.equal(backbones[1]["backbone.conv1.weight"], state["conv1.weight"])
