"""Tests for detkit.config: _base_ inheritance, overrides, strict validation, round trips.

Every fixture is written into tmp_path so these tests do not depend on the shipped configs/.
"""

import copy
import os
import pickle
import textwrap
from pathlib import Path

import pytest
import yaml

import detkit.config as config_pkg
from detkit.config import Config, load_config
from detkit.errors import ConfigError

DEFAULTS_FILE = Path(config_pkg.__file__).parent / "defaults.yaml"


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def dotted_keys(node, prefix=""):
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else k
        yield key
        if isinstance(v, dict):
            yield from dotted_keys(v, key)


def get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


# -- defaults -------------------------------------------------------------------------------------
def test_defaults_load_equal_defaults_yaml():
    cfg = load_config()
    assert cfg.to_dict() == yaml.safe_load(DEFAULTS_FILE.read_text())
    assert cfg.source_file is None
    assert cfg.model.rpn.nms_thresh == 0.7
    assert cfg["model"]["backbone"]["depth"] == 50
    assert Config() == cfg


def test_every_default_key_reachable_by_attribute():
    """No key may be shadowed by a Config method (test.merge, *.name, *.weights, ...)."""
    cfg = load_config()
    for key in dotted_keys(cfg.to_dict()):
        item = cfg
        for part in key.split("."):
            item = item[part]
        assert get(cfg, key) == item, key


# -- _base_ ---------------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path):
    """configs/_base_/{models,schedules}/*.yaml and a leaf in configs/det/ that uses both."""
    write(
        tmp_path,
        "configs/_base_/models/frcnn.yaml",
        """
        model:
          num_classes: 20
          rpn:
            nms_thresh: 0.6
            fg_iou_thresh: 0.8
          backbone:
            weights: weights/r50.pth
        solver:
          steps: [1, 2, 3]
    """,
    )
    write(
        tmp_path,
        "configs/_base_/schedules/1x.yaml",
        """
        solver:
          base_lr: 0.01
          max_iter: 1000
    """,
    )
    leaf = write(
        tmp_path,
        "configs/det/leaf.yaml",
        """
        _base_: [../_base_/models/frcnn.yaml, ../_base_/schedules/1x.yaml]
        model:
          rpn:
            nms_thresh: 0.5
        solver:
          steps: [500]
    """,
    )
    return leaf


def test_base_relative_paths_across_directories(tree, tmp_path, monkeypatch):
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # bases resolve against the including file, not the cwd
    cfg = load_config(tree)
    assert cfg.model.num_classes == 20
    assert cfg.solver.base_lr == 0.01
    assert cfg.source_file == str(tree.resolve())


def test_base_deep_merges_dicts_and_replaces_lists(tree):
    cfg = load_config(tree)
    assert cfg.model.rpn.nms_thresh == 0.5  # leaf wins
    assert cfg.model.rpn.fg_iou_thresh == 0.8  # sibling key from the base survives
    assert cfg.model.rpn.bg_iou_thresh == 0.3  # untouched default survives
    assert cfg.model.backbone.depth == 50
    assert cfg.solver.steps == [500]  # replaced, not [1, 2, 3, 500]


def test_relative_paths_in_values_stay_as_written(tree):
    assert load_config(tree).model.backbone.weights == "weights/r50.pth"


def test_bases_merge_left_to_right_then_file_on_top(tmp_path):
    write(tmp_path, "a.yaml", "solver: {base_lr: 0.1, max_iter: 10}\n")
    write(tmp_path, "b.yaml", "solver: {base_lr: 0.2}\n")
    leaf = write(tmp_path, "leaf.yaml", "_base_: [a.yaml, b.yaml]\nsolver: {gamma: 0.5}\n")
    cfg = load_config(leaf)
    assert (cfg.solver.base_lr, cfg.solver.max_iter, cfg.solver.gamma) == (0.2, 10, 0.5)
    top = write(tmp_path, "top.yaml", "_base_: [a.yaml, b.yaml]\nsolver: {base_lr: 0.3}\n")
    assert load_config(top).solver.base_lr == 0.3


def test_multi_level_bases_and_single_string_base(tmp_path):
    write(tmp_path, "root.yaml", "model: {num_classes: 3, backbone: {depth: 18}}\n")
    write(tmp_path, "mid/mid.yaml", "_base_: ../root.yaml\nmodel: {backbone: {depth: 34}}\n")
    leaf = write(tmp_path, "mid/leaf/leaf.yaml", "_base_: ../mid.yaml\nmodel: {num_classes: 5}\n")
    cfg = load_config(leaf)
    assert (cfg.model.num_classes, cfg.model.backbone.depth) == (5, 34)


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "_base_: [b.yaml]\n")
    write(tmp_path, "b.yaml", "_base_: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml" in str(err.value) and "b.yaml" in str(err.value)
    write(tmp_path, "self.yaml", "_base_: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")


def test_diamond_bases_are_not_a_cycle(tmp_path):
    write(tmp_path, "d.yaml", "solver: {gamma: 0.2}\n")
    write(tmp_path, "b.yaml", "_base_: d.yaml\n")
    write(tmp_path, "c.yaml", "_base_: d.yaml\n")
    leaf = write(tmp_path, "a.yaml", "_base_: [b.yaml, c.yaml]\n")
    assert load_config(leaf).solver.gamma == 0.2


def test_missing_base_and_missing_file(tmp_path):
    leaf = write(tmp_path, "leaf.yaml", "_base_: [nope.yaml]\n")
    with pytest.raises(
        ConfigError, match=r"base config 'nope.yaml' listed in .*leaf.yaml not found"
    ):
        load_config(leaf)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = write(tmp_path, "bad.yaml", "_base_: 3\n")
    with pytest.raises(ConfigError, match="_base_"):
        load_config(bad)


def test_empty_file_bad_yaml_and_non_mapping(tmp_path):
    assert load_config(write(tmp_path, "empty.yaml", "")) == load_config()
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "broken.yaml", "model: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "list.yaml", "- 1\n- 2\n"))


# -- overrides ------------------------------------------------------------------------------------
def test_overrides_of_each_type(tree):
    cfg = load_config(
        tree,
        [
            "solver.base_lr=0.05",
            "model.backbone.depth=101",
            "test.flip=true",
            "test.scales=[600,800]",
            "model.backbone.weights=/x/y.pth",
            "model.rpn.anchor_sizes=[[16],[32]]",
            "model.backbone.out_features=[res4]",
            "solver.momentum=1",
        ],
    )
    assert cfg.solver.base_lr == 0.05
    assert cfg.model.backbone.depth == 101
    assert cfg.test.flip is True
    assert cfg.test.scales == [600, 800]
    assert cfg.model.backbone.weights == "/x/y.pth"
    assert cfg.model.rpn.anchor_sizes == [[16], [32]]
    assert cfg.model.backbone.out_features == ["res4"]
    assert cfg.solver.momentum == 1.0 and isinstance(cfg.solver.momentum, float)
    assert cfg.model.num_classes == 20  # the file's values are kept underneath


def test_string_overrides_are_taken_verbatim(tmp_path):
    cfg = load_config(
        None,
        [
            "output_dir=2024-01-01",
            "model.backbone.weights=null",
            "model.weights=/a/b #1.pth",
            "model.neck.name=none",
            "data.root=",
            "test.merge='vote'",
        ],
    )
    assert cfg.output_dir == "2024-01-01"
    assert cfg.model.backbone.weights == "null"
    assert cfg.model.weights == "/a/b #1.pth"
    assert cfg.model.neck.name == "none"
    assert cfg.data.root == ""
    assert cfg.test.merge == "vote"


def test_overrides_apply_in_order_and_dict_values_merge():
    cfg = load_config(
        None,
        [
            "model.rpn.nms_thresh=0.1",
            "model.rpn={fg_iou_thresh: 0.9}",
            "solver.gamma=0.2",
            "solver.gamma=0.3",
        ],
    )
    assert (cfg.model.rpn.nms_thresh, cfg.model.rpn.fg_iou_thresh) == (0.1, 0.9)
    assert cfg.solver.gamma == 0.3


def test_malformed_overrides():
    with pytest.raises(ConfigError, match=r"malformed override 'solver.base_lr'.*e\.g\. solver"):
        load_config(None, ["solver.base_lr"])
    with pytest.raises(ConfigError, match="malformed"):
        load_config(None, ["solver..base_lr=1"])
    with pytest.raises(ConfigError, match="malformed"):
        load_config(None, ["=1"])
    with pytest.raises(ConfigError, match="list of key=value strings"):
        load_config(None, "solver.base_lr=0.1")
    with pytest.raises(ConfigError, match="as YAML"):
        load_config(None, ["test.scales=[600, 800"])


def test_override_errors_name_the_command_line():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.rpn.nms_tresh=0.5"])
    assert str(err.value) == (
        "unknown config key 'model.rpn.nms_tresh' (command line); "
        "did you mean 'model.rpn.nms_thresh'?"
    )
    with pytest.raises(ConfigError, match=r"'solver.max_iter' \(command line\): expected int"):
        load_config(None, ["solver.max_iter=abc"])


# -- validation -----------------------------------------------------------------------------------
def test_unknown_key_error_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "configs/x.yaml", "model:\n  rpn:\n    nms_tresh: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config("configs/x.yaml")
    assert str(err.value) == (
        "unknown config key 'model.rpn.nms_tresh' (configs/x.yaml); "
        "did you mean 'model.rpn.nms_thresh'?"
    )


def test_unknown_key_under_the_wrong_parent_and_without_match(tmp_path):
    with pytest.raises(
        ConfigError, match=r"'model.fc_dim'.*did you mean 'model.roi_heads.box_head.fc_dim'"
    ):
        load_config({"model": {"fc_dim": 512}})
    with pytest.raises(
        ConfigError, match=r"unknown config key 'zzz'.*valid keys at the top level: model"
    ):
        load_config({"zzz": 1})


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    write(tmp_path, "configs/_base_/bad.yaml", "solver:\n  base_lrr: 0.1\n")
    leaf = write(tmp_path, "configs/leaf.yaml", "_base_: [_base_/bad.yaml]\nsolver: {gamma: 0.5}\n")
    with pytest.raises(ConfigError) as err:
        load_config(leaf)
    message = str(err.value)
    assert "'solver.base_lrr'" in message and "did you mean 'solver.base_lr'?" in message
    assert os.path.join("configs", "_base_", "bad.yaml") in message
    assert "leaf.yaml" not in message


@pytest.mark.parametrize(
    "text, key, expected, given",
    [
        ("solver: {base_lr: fast}", "solver.base_lr", "expected float", "str 'fast'"),
        ("solver: {max_iter: true}", "solver.max_iter", "expected int", "bool True"),
        ("solver: {base_lr: false}", "solver.base_lr", "expected float", "bool False"),
        ("solver: {max_iter: 1.5}", "solver.max_iter", "expected int", "float 1.5"),
        ("test: {flip: 1}", "test.flip", "expected bool", "int 1"),
        ("model: {backbone: {name: 3}}", "model.backbone.name", "expected str", "int 3"),
        ("solver: {steps: [100, x]}", "solver.steps[1]", "expected int", "str 'x'"),
        ("solver: {steps: 100}", "solver.steps", "expected a list of int", "int 100"),
        (
            "model: {rpn: {anchor_sizes: [[32], 64]}}",
            "model.rpn.anchor_sizes[1]",
            "expected a list",
            "int 64",
        ),
        (
            "model: {rpn: {anchor_sizes: [[32.5]]}}",
            "model.rpn.anchor_sizes[0][0]",
            "expected int",
            "float 32.5",
        ),
        ("model: {rpn: 0.7}", "model.rpn", "expected a mapping", "float 0.7"),
        ("model: {num_classes: {a: 1}}", "model.num_classes", "expected int", "dict {'a': 1}"),
        ("solver: {gamma: null}", "solver.gamma", "expected float", "null None"),
    ],
)
def test_wrong_types(tmp_path, text, key, expected, given):
    path = write(tmp_path, "bad.yaml", text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"config key '{key}' ({path})" in message
    assert expected in message and given in message


def test_int_converted_to_float():
    cfg = load_config({"solver": {"base_lr": 1}, "model": {"pixel_mean": [1, 2, 3]}})
    assert cfg.solver.base_lr == 1.0 and type(cfg.solver.base_lr) is float
    assert all(type(v) is float for v in cfg.model.pixel_mean)
    assert type(cfg.to_dict()["solver"]["base_lr"]) is float


def test_exponent_floats_without_a_dot(tmp_path):
    """PyYAML alone reads `1e-4` as a string (YAML 1.1); detkit configs read it as a float."""
    path = write(
        tmp_path, "x.yaml", "solver: {weight_decay: 1e-4}\nmodel: {pixel_std: [1E+2, 5e1, 1]}\n"
    )
    cfg = load_config(path, ["solver.base_lr=2e-3"])
    assert (cfg.solver.weight_decay, cfg.solver.base_lr) == (1e-4, 2e-3)
    assert cfg.model.pixel_std == [100.0, 50.0, 1.0]
    with pytest.raises(ConfigError, match="expected int, got float"):
        load_config(None, ["solver.max_iter=1e5"])


def test_empty_default_list_elements_are_checked_by_the_constraint():
    assert load_config({"test": {"scales": [600, 800]}}).test.scales == [600, 800]
    with pytest.raises(ConfigError, match=r"'test.scales\[1\]' \(<dict>\): expected an int >= 1"):
        load_config({"test": {"scales": [600, 800.5]}})


def test_dataset_entries_need_a_name():
    entry = {"name": "COCODataset", "ann_file": "a.json", "img_dir": "imgs", "extra": {"x": [1]}}
    cfg = load_config({"data": {"train": {"datasets": [entry]}}})
    assert cfg.data.train.datasets[0].to_dict() == entry
    assert dict(cfg.data.train.datasets[0])["name"] == "COCODataset"
    with pytest.raises(ConfigError, match=r"'data.val.datasets\[1\]' \(<dict>\).*'name' string"):
        load_config({"data": {"val": {"datasets": [{"name": "A"}, {"ann_file": "x"}]}}})
    with pytest.raises(ConfigError, match=r"'data.test.datasets\[0\]'"):
        load_config({"data": {"test": {"datasets": ["COCODataset"]}}})
    with pytest.raises(ConfigError, match=r"'data.test.datasets\[0\]'"):
        load_config({"data": {"test": {"datasets": [{"name": 3}]}}})
    with pytest.raises(ConfigError, match=r"'data.train.datasets'.*expected a list"):
        load_config({"data": {"train": {"datasets": {"name": "A"}}}})


# -- the Config object ----------------------------------------------------------------------------
def test_round_trip_to_dict_dump_load(tree, tmp_path):
    cfg = load_config(
        tree,
        [
            "data.train.datasets=[{name: VOCDataset, root: VOC2007, split: trainval}]",
            "solver.weight_decay=1e-05",
        ],
    )
    out = tmp_path / "out" / "config.yaml"
    cfg.dump(out)
    again = load_config(out)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert again.source_file == str(out.resolve())
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_from_dict_revalidates(tree):
    cfg = load_config(tree)
    assert Config.from_dict(cfg.to_dict()) == cfg
    stored = cfg.to_dict()
    stored["model"]["rpn"]["nms_tresh"] = 0.1
    with pytest.raises(ConfigError, match=r"'model.rpn.nms_tresh' \(checkpoint m.pth\)"):
        Config.from_dict(stored, origin="checkpoint m.pth")
    with pytest.raises(ConfigError, match="_base_"):
        Config.from_dict({"_base_": ["a.yaml"]})


def test_config_is_read_only_and_to_dict_is_a_copy(tree):
    cfg = load_config(tree)
    with pytest.raises(TypeError):
        cfg.model = None
    with pytest.raises(TypeError):
        cfg.solver["base_lr"] = 1.0
    with pytest.raises(TypeError):
        cfg.solver.steps.append(1)
    with pytest.raises(TypeError):
        cfg.model.rpn.anchor_sizes[0][0] = 1
    d = cfg.to_dict()
    d["solver"]["steps"].append(7)
    assert cfg.solver.steps == [500]


def test_with_overrides_returns_a_new_config(tree):
    cfg = load_config(tree)
    new = cfg.with_overrides(["solver.base_lr=0.5"])
    assert (cfg.solver.base_lr, new.solver.base_lr) == (0.01, 0.5)
    assert new.source_file == cfg.source_file
    assert new.model.rpn.fg_iou_thresh == 0.8
    assert cfg.with_overrides({"model.weights": "/a b/c.pth"}).model.weights == "/a b/c.pth"
    with pytest.raises(ConfigError, match=r"\(overrides\)"):
        cfg.with_overrides({"model.weights": 3})
    assert load_config(cfg, ["test.flip=true"]).test.flip is True
    with pytest.raises(TypeError):
        cfg.model.with_overrides(["rpn.nms_thresh=0.1"])


def test_copy_pickle_and_deepcopy(tree):
    cfg = load_config(tree)
    for other in (cfg.copy(), pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert other == cfg and other is not cfg
        assert other.source_file == cfg.source_file
        assert other.origin("solver.max_iter") == cfg.origin("solver.max_iter")
    assert pickle.loads(pickle.dumps(cfg.model.rpn)) == cfg.model.rpn


def test_origin_names_the_file_that_set_a_key(tree):
    cfg = load_config(tree, ["solver.gamma=0.5", "data.train.datasets=[{name: A, x: 1}]"])
    base = os.path.normpath(str(tree.parent / "../_base_/schedules/1x.yaml"))
    assert cfg.origin("solver.max_iter") == base
    assert cfg.origin("model.rpn.nms_thresh") == str(tree)
    assert cfg.origin("solver.gamma") == "command line"
    assert cfg.origin("solver.momentum") == "defaults.yaml"
    assert cfg.origin("data.train.datasets[0].x") == "command line"
    assert cfg.data.train.origin("datasets") == "command line"


def test_load_config_from_dict_has_no_source_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "base.yaml", "solver: {gamma: 0.25}\n")
    cfg = load_config({"_base_": "base.yaml", "solver": {"base_lr": 0.5}}, ["solver.max_iter=7"])
    assert (cfg.solver.gamma, cfg.solver.base_lr, cfg.solver.max_iter) == (0.25, 0.5, 7)
    assert cfg.source_file is None
    with pytest.raises(TypeError):
        load_config(42)


def test_missing_attribute_suggests_a_key():
    cfg = load_config()
    with pytest.raises(AttributeError, match="did you mean 'model.rpn.nms_thresh'"):
        _ = cfg.model.rpn.nms_tresh
    with pytest.raises(KeyError):
        cfg["nope"]
    assert cfg.get("nope", 3) == 3 and "model" in cfg


def test_repr_is_readable_yaml(tree):
    text = repr(load_config(tree))
    assert text.startswith("Config from ")
    assert "nms_thresh: 0.5" in text and "steps: [500]" in text
    assert repr(load_config().model.rpn).startswith("Config[model.rpn]:")
