"""Allowed values (detkit/config/constraints.py): choices, ranges and ``auto | int`` unions refused at
load with the key, where it was set and the allowed values, from files, overrides and dicts alike."""

import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

import detkit.config as config_pkg
from detkit.config import Config, load_config
from detkit.config.constraints import ANY_VALUE, CONSTRAINTS, Auto, choices
from detkit.config.schema import MISSING, _all_dotted_keys, components, lookup_default
from detkit.errors import ConfigError

DEFAULTS_FILE = Path(config_pkg.__file__).parent / "defaults.yaml"
REPO = Path(__file__).resolve().parents[2]

# (key, bad value as typed, what the error says is allowed)
BAD = [
    ("test.precision", "bf61", "auto | fp32 | bf16 | fp16, got 'bf61'; did you mean 'bf16'?"),
    ("test.merge", "vot", "nms | soft_nms | vote, got 'vot'; did you mean 'vote'?"),
    (
        "test.memory_format",
        "chanels_last",
        "auto | contiguous | channels_last, got 'chanels_last'; did you mean 'channels_last'?",
    ),
    ("test.evaluator_engine", "coco", "fast | pycocotools, got 'coco'"),
    ("input.resize_rounding", "ceil", "floor | round | scaled_round, got 'ceil'"),
    (
        "model.resize_interpolation",
        "bicubic",
        "tensor_bilinear | pil_bilinear | cv2_bilinear, got 'bicubic'",
    ),
    ("solver.optimizer", "adam", "SGD | AdamW, got 'adam'; did you mean 'AdamW'?"),
    ("solver.lr_schedule", "step", "multistep | cosine, got 'step'; did you mean 'multistep'?"),
    ("model.neck.norm", "LN", "\"\" | FrozenBN | BN | SyncBN | GN, got 'LN'"),
    ("model.backbone.depth", "51", "18 | 34 | 50 | 101 | 152, got 51"),
    ("model.rpn.nms_thresh", "1.5", "a number in [0, 1], got 1.5"),
    ("model.roi_heads.score_thresh_test", "-0.1", "a number in [0, 1], got -0.1"),
    ("model.num_classes", "0", "an int >= 1, got 0"),
    ("solver.base_lr", "0", "a number > 0, got 0.0"),
    ("model.backbone.freeze_at", "6", "an int in [0, 5], got 6"),
    ("model.rpn.anchor_offset", "1.0", "a number in [0, 1), got 1.0"),
    ("data.num_workers", "-1", "an int >= 0, got -1"),
    ("test.parallel_images", "0", "auto | an int >= 1, got 0"),
    ("test.parallel_images", "two", "auto | an int >= 1, got 'two'"),
    ("test.parallel_images", "true", "auto | an int >= 1, got True"),
    ("test.ims_per_batch", "1.5", "auto | an int >= 1, got 1.5"),
]


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def nested(key: str, value):
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


@pytest.mark.parametrize("key, value, allowed", BAD)
def test_a_bad_value_on_the_command_line_is_refused_at_load(key, value, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={value}"])
    assert str(err.value) == f"config key '{key}' (command line): expected {allowed}"


@pytest.mark.parametrize("key, value, allowed", BAD)
def test_a_bad_value_in_a_file_names_the_file(tmp_path, key, value, allowed):
    text = "\n".join(f"{'  ' * i}{part}:" for i, part in enumerate(key.split(".")))
    base = write(tmp_path, "_base_/bad.yaml", f"{text} {value}\n")
    leaf = write(tmp_path, "leaf.yaml", "_base_: [_base_/bad.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_config(leaf)
    assert str(err.value) == f"config key '{key}' ({base}): expected {allowed}"


def test_a_bad_value_in_a_stored_config_names_it():
    with pytest.raises(ConfigError, match=r"^config key 'test.merge' \(checkpoint m.pth\)"):
        Config.from_dict(nested("test.merge", "vot"), origin="checkpoint m.pth")
    with pytest.raises(ConfigError, match=r"^config key 'test.merge' \(overrides\)"):
        load_config(None).with_overrides({"test.merge": "vot"})


def test_list_elements_are_checked_one_by_one():
    for override, key, allowed in [
        ("test.scales=[800,0]", "test.scales[1]", "an int >= 1, got 0"),
        ("model.rpn.anchor_sizes=[[32],[0]]", "model.rpn.anchor_sizes[1][0]", "an int >= 1"),
        ("model.pixel_std=[1,0,1]", "model.pixel_std[1]", "a number > 0, got 0.0"),
        ("model.backbone.out_features=[res4,res6]", "model.backbone.out_features[1]", "res5"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(None, [override])
        assert f"config key '{key}' (command line): expected " in str(err.value)
        assert allowed in str(err.value)


@pytest.mark.parametrize("key", ["test.parallel_images", "test.ims_per_batch"])
def test_auto_or_int_loads_alike_from_a_file_and_the_command_line(tmp_path, key):
    section, name = key.split(".")
    for text, expected in (("2", 2), ("auto", "auto")):
        path = write(tmp_path, f"{text}.yaml", f"{section}:\n  {name}: {text}\n")
        from_file = load_config(path)
        from_override = load_config(None, [f"{key}={text}"])
        from_dict = Config(nested(key, expected))
        for cfg in (from_file, from_override, from_dict):
            value = cfg[section][name]
            assert value == expected and type(value) is type(expected)
    # quoted, it is the text "2" from either source: neither auto nor an int
    quoted = write(tmp_path, "quoted.yaml", f"{section}:\n  {name}: '2'\n")
    for load in (lambda: load_config(quoted), lambda: load_config(None, [f"{key}='2'"])):
        with pytest.raises(ConfigError, match="expected auto \\| an int >= 1, got '2'"):
            load()


def test_ims_per_batch_defaults_to_auto():
    assert load_config(None).test.ims_per_batch == "auto"


def test_every_constraint_names_a_key_and_allows_its_default():
    keys = set(_all_dotted_keys())
    for key, constraint in CONSTRAINTS.items():
        assert key in keys, key
        default = lookup_default(key.split("."))
        for value in _leaves(default):
            constraint.check(value, key, "defaults.yaml")


def _leaves(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def test_every_key_is_constrained_or_free_by_design():
    """A new key must be classified: a constraint, or a value that can be anything of its type."""
    free = set()
    for key in _all_dotted_keys():
        default = lookup_default(key.split("."))
        if isinstance(default, (bool, Mapping)) or default is MISSING or key in CONSTRAINTS:
            continue
        free.add(key)
    paths = {"model.weights", "model.backbone.weights", "data.root", "output_dir"}
    names = {f"{s}.name" for s in ("model.backbone", "model.neck", "model.roi_heads.pooler")}
    names |= {"model.roi_heads.box_head.name"}
    datasets = {f"data.{split}.datasets" for split in ("train", "val", "test")}
    features = {"model.rpn.in_features", "model.roi_heads.in_features"}
    assert free == paths | names | datasets | features | set(ANY_VALUE)


def _documented_choices():
    """``{dotted key: [a, b, ...]}`` for each defaults.yaml line whose comment starts ``a | b``."""
    stack, found = [], {}
    for line in DEFAULTS_FILE.read_text().splitlines():
        m = re.match(r"^( *)(\w+):(.*)$", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        stack[depth:] = [m.group(2)]
        comment = m.group(3).split("#", 1)[1].strip() if "#" in m.group(3) else ""
        doc = re.match(r'^((?:[\w"]+ \| )+[\w"]+)\b', comment)
        if doc:
            found[".".join(stack)] = [c.strip() for c in doc.group(1).split("|")]
    return found


def test_choices_documented_in_defaults_yaml_are_the_checked_ones():
    documented = _documented_choices()
    assert "test.precision" in documented and "model.backbone.norm" in documented
    for key, values in documented.items():
        section, _, last = key.rpartition(".")
        if last == "name":  # a component section's classes
            assert values == list(components()[section]), key
            continue
        constraint = CONSTRAINTS[key]
        if isinstance(constraint, Auto):
            assert values == ["auto", "N"], key
        else:
            shown = ['""' if v == "" else str(v) for v in constraint.values]
            assert values == shown, key


def test_the_code_that_consumes_a_choice_accepts_the_same_values():
    from detkit.evaluation.coco import ENGINES
    from detkit.modeling.anchor_generator import ORDERS
    from detkit.modeling.backbones.norm import NORMS
    from detkit.modeling.backbones.resnet import BLOCKS_PER_DEPTH, RES5_DILATIONS, STAGE_NAMES
    from detkit.modeling.detector import INPUT_FORMATS, RESIZE_INTERPOLATIONS
    from detkit.modeling.precision import PRECISIONS
    from detkit.modeling.rpn import NMS_SCORES
    from detkit.modeling.tta import MERGES
    from detkit.structures.resize import ROUNDINGS

    for key, accepted in [
        ("test.evaluator_engine", ENGINES),
        ("model.rpn.anchor_order", ORDERS),
        ("model.backbone.norm", NORMS),
        ("model.neck.norm", ("", *NORMS)),
        ("model.roi_heads.box_head.norm", ("", *NORMS)),
        ("model.backbone.depth", tuple(BLOCKS_PER_DEPTH)),
        ("model.backbone.res5_dilation", RES5_DILATIONS),
        ("model.backbone.out_features", STAGE_NAMES),
        ("model.input_format", INPUT_FORMATS),
        ("model.resize_interpolation", RESIZE_INTERPOLATIONS),
        ("test.precision", ("auto", *PRECISIONS)),
        ("model.rpn.nms_score", NMS_SCORES),
        ("test.merge", MERGES),
        ("input.resize_rounding", ROUNDINGS),
    ]:
        assert set(choices(key)) == set(accepted), key


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files
    for path in files:
        load_config(path)


def test_matcher_thresholds_keep_their_order(tmp_path):
    """bg_iou_thresh above fg_iou_thresh leaves no consistent label: refused at load, naming both
    keys, their values and where each was set; fine when both move together."""
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.rpn.bg_iou_thresh=0.8"])
    assert str(info.value) == (
        "config key 'model.rpn.bg_iou_thresh' (command line) = 0.8 must not exceed "
        "'model.rpn.fg_iou_thresh' (defaults.yaml) = 0.7"
    )
    file = tmp_path / "heads.yaml"
    file.write_text("model: {roi_heads: {fg_iou_thresh: 0.4}}\n")
    with pytest.raises(ConfigError, match=rf"'model.roi_heads.fg_iou_thresh' \({file}\) = 0.4"):
        load_config(str(file))
    with pytest.raises(ConfigError, match="must not exceed"):
        load_config(None).with_overrides(["model.rpn.fg_iou_thresh=0.2"])
    cfg = load_config(None, ["model.rpn.bg_iou_thresh=0.8", "model.rpn.fg_iou_thresh=0.9"])
    assert (cfg.model.rpn.bg_iou_thresh, cfg.model.rpn.fg_iou_thresh) == (0.8, 0.9)
