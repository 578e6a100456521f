"""Component sections (a `name:` picking a class): their keys are the class's constructor arguments,
switching the class resets the section, a key the class does not take is an error; old checkpoint
configs are translated."""

import inspect
import logging
import textwrap
from pathlib import Path

import pytest

from detkit.config import Config, load_config
from detkit.config.schema import MISSING, components, lookup_default, schema
from detkit.errors import ConfigError
from detkit.modeling.backbones import FPN, ResNet
from detkit.registry import ROI_BOX_HEADS, ROI_POOLERS

# arguments the builder derives from other sections (never config keys), and keys it reads itself
DERIVED = {"in_channels", "in_strides", "pooler_size"}
READ_BY_BUILDER = {"model.backbone": {"weights", "allow_random_init"}}
CLASSES = {
    "model.backbone": {"ResNet": ResNet},
    "model.neck": {"FPN": FPN, "none": None},
    "model.roi_heads.pooler": {name: ROI_POOLERS.get(name) for name in ROI_POOLERS},
    "model.roi_heads.box_head": {name: ROI_BOX_HEADS.get(name) for name in ROI_BOX_HEADS},
}


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def keyword_defaults(cls):
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


# -- the table equals the constructors ------------------------------------------------------------
def test_components_are_the_registered_classes():
    assert set(components()) == set(CLASSES)
    for section, classes in CLASSES.items():
        assert set(components()[section]) == set(classes), section


@pytest.mark.parametrize("section", sorted(CLASSES))
def test_component_keys_are_constructor_arguments_with_their_defaults(section):
    for name, cls in CLASSES[section].items():
        declared = dict(components()[section][name])
        if cls is None:  # `none`: no module at all
            assert declared == {}
            continue
        for key in READ_BY_BUILDER.get(section, ()):
            declared.pop(key)
        derived = DERIVED | set(getattr(cls, "backbone_args", ()))
        expected = {k: v for k, v in keyword_defaults(cls).items() if k not in derived}
        expected = {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}
        assert declared == expected, f"{section}: {name}"


def test_defaults_yaml_shows_the_default_class_of_each_section():
    for section, classes in components().items():
        node = lookup_default(section.split("."))
        assert node == {"name": node["name"], **classes[node["name"]]}, section


def test_box_heads_say_which_backbone_keys_they_take():
    assert ROI_BOX_HEADS.get("TwoMLPHead").backbone_args == ()
    res5_args = set(ROI_BOX_HEADS.get("Res5Head").backbone_args)
    assert res5_args <= set(schema()["model"]["backbone"])
    assert res5_args <= set(keyword_defaults(ROI_BOX_HEADS.get("Res5Head")))


def test_ignored_arguments_are_gone():
    assert {"sampling_ratio", "aligned"}.isdisjoint(keyword_defaults(ROI_POOLERS.get("ROIPool")))
    assert "fc_dim" not in keyword_defaults(ROI_BOX_HEADS.get("Res5Head"))


# -- switching classes ----------------------------------------------------------------------------
def test_a_new_name_resets_the_section_to_that_class_defaults(tmp_path):
    write(
        tmp_path, "base.yaml", "model: {roi_heads: {pooler: {sampling_ratio: 0, output_size: 9}}}\n"
    )
    leaf = write(
        tmp_path, "leaf.yaml", "_base_: base.yaml\nmodel: {roi_heads: {pooler: {name: ROIPool}}}\n"
    )
    cfg = load_config(leaf)
    assert cfg.model.roi_heads.pooler.to_dict() == {
        "name": "ROIPool",
        "output_size": 7,
        "canonical_scale": 224,
        "canonical_level": 4,
    }
    assert cfg.origin("model.roi_heads.pooler.output_size") == "defaults.yaml"
    back = cfg.with_overrides(["model.roi_heads.pooler.name=ROIAlign"])
    assert back.model.roi_heads.pooler.sampling_ratio == 2  # ROIAlign's default, not base.yaml's 0


def test_the_same_name_again_keeps_the_section(tmp_path):
    cfg = load_config(
        None,
        [
            "model.roi_heads.pooler={name: ROIPool, output_size: 14}",
            "model.roi_heads.pooler.name=ROIPool",
        ],
    )
    assert cfg.model.roi_heads.pooler.output_size == 14
    assert cfg.origin("model.roi_heads.pooler.output_size") == "command line"


def test_with_overrides_keeps_the_origins_of_a_chosen_class(tmp_path):
    path = write(
        tmp_path, "c4.yaml", "model: {roi_heads: {pooler: {name: ROIPool, output_size: 14}}}\n"
    )
    cfg = load_config(path).with_overrides(["solver.gamma=0.5"])
    assert cfg.model.roi_heads.pooler.output_size == 14
    assert cfg.origin("model.roi_heads.pooler.output_size") == str(path)


def test_override_values_of_a_non_default_class_are_typed():
    assert lookup_default(["model", "roi_heads", "pooler", "aligned"]) is False
    assert lookup_default(["model", "neck", "nope"]) is MISSING
    cfg = load_config(None, ["model.neck.name=none"])
    assert cfg.model.neck.to_dict() == {"name": "none"}


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, key, name, takes",
    [
        (
            ["model.roi_heads.pooler.name=ROIPool", "model.roi_heads.pooler.aligned=true"],
            "model.roi_heads.pooler.aligned",
            "ROIPool",
            "ROIPool takes: output_size, canonical_scale, canonical_level",
        ),
        (
            ["model.roi_heads.pooler={name: ROIPool, sampling_ratio: 0}"],
            "model.roi_heads.pooler.sampling_ratio",
            "ROIPool",
            "ROIPool takes: output_size",
        ),
        (
            ["model.roi_heads.box_head.name=Res5Head", "model.roi_heads.box_head.fc_dim=512"],
            "model.roi_heads.box_head.fc_dim",
            "Res5Head",
            "Res5Head takes no keys besides name",
        ),
        (
            ["model.neck.name=none", "model.neck.out_channels=64"],
            "model.neck.out_channels",
            "none",
            "none takes no keys besides name",
        ),
    ],
)
def test_a_key_the_chosen_class_does_not_take_is_an_error(overrides, key, name, takes):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert message.startswith(f"config key '{key}' (command line) does not apply to {name} ")
    assert takes in message


def test_the_error_names_the_file_that_chose_the_class(tmp_path):
    base = write(tmp_path, "_base_/c4.yaml", "model: {roi_heads: {pooler: {name: ROIPool}}}\n")
    leaf = write(
        tmp_path,
        "leaf.yaml",
        "_base_: _base_/c4.yaml\nmodel: {roi_heads: {pooler: {aligned: true}}}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_config(leaf)
    assert str(err.value) == (
        f"config key 'model.roi_heads.pooler.aligned' ({leaf}) does not apply to ROIPool "
        f"('model.roi_heads.pooler.name' from {base}); "
        "ROIPool takes: output_size, canonical_scale, canonical_level"
    )
    with pytest.raises(ConfigError, match=r"from command line"):
        load_config(None, ["model.roi_heads.box_head.name=Res5Head"]).with_overrides(
            ["model.roi_heads.box_head.fc_dim=64"]
        )


def test_unknown_class_and_misspelt_component_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.roi_heads.pooler.name=ROIPoool"])
    assert str(err.value) == (
        "config key 'model.roi_heads.pooler.name' (command line): unknown class 'ROIPoool'; "
        "valid: ROIAlign, ROIPool; did you mean 'ROIPool'?"
    )
    with pytest.raises(ConfigError, match=r"'model.neck.name' .*valid: FPN, none"):
        load_config(None, ["model.neck.name=C4"])
    path = write(tmp_path, "x.yaml", "model: {roi_heads: {pooler: {sampling_ratoi: 0}}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"unknown config key 'model.roi_heads.pooler.sampling_ratoi' ({path}); "
        "did you mean 'model.roi_heads.pooler.sampling_ratio'?"
    )
    with pytest.raises(ConfigError, match=r"'model.roi_heads.box_head.fc_dim' \(x\): expected int"):
        Config({"model": {"roi_heads": {"box_head": {"fc_dim": "wide"}}}}, origin="x")


def test_configs_load_from_dict_silently_and_strictly(caplog):
    current = load_config(None, ["model.roi_heads.refine_iterations=1"]).to_dict()
    with caplog.at_level(logging.WARNING, logger="detkit"):
        assert Config.from_dict(current).model.roi_heads.refine_iterations == 1
    assert not caplog.records
    current["model"]["roi_heads"]["pooler"] = {"name": "ROIPool", "aligned": True}
    with pytest.raises(ConfigError, match=r"'model.roi_heads.pooler.aligned' \(checkpoint m.pth\)"):
        Config.from_dict(current, origin="checkpoint m.pth")
    # a stored config is checked like a file: no key is translated
    old = {"model": {"roi_heads": {"refine": {"enabled": True}}}}
    with pytest.raises(ConfigError, match=r"unknown config key 'model.roi_heads.refine' \(ckpt\)"):
        Config.from_dict(old, origin="ckpt")
