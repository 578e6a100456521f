"""Per-class score thresholds: the file the error analysis writes and inference reads back."""

import json

import numpy as np
import pytest

from detkit.analysis.thresholds import FORMAT, load_thresholds, write_thresholds
from detkit.errors import ConfigError

NAMES = ["cat", "dog", "car"]


def test_write_then_load_round_trip(tmp_path):
    path = write_thresholds(
        tmp_path / "out" / "thresholds.json",
        {"cat": 0.625, "dog": 0.25, "car": None},
        {"default": 0.5, "iou_thresh": 0.5, "source": "val"},
    )
    doc = json.loads(path.read_text())
    assert doc == {
        "format": FORMAT,
        "version": 1,
        "thresholds": {"cat": 0.625, "dog": 0.25},
        "no_operating_point": ["car"],
        "default": 0.5,
        "iou_thresh": 0.5,
        "source": "val",
    }
    assert not list(path.parent.glob(".tmp-*"))  # written atomically, nothing left behind
    for source in (path, str(path), doc):
        thr = load_thresholds(source, NAMES, base=0.9)
        assert thr.dtype == np.float64 and thr.tolist() == [0.625, 0.25, 0.5]


def test_no_default_keeps_the_base_threshold_and_logs_the_fallback(tmp_path, detkit_log):
    path = write_thresholds(tmp_path / "t.json", {"cat": 0.7, "car": None}, {})
    assert json.loads(path.read_text())["default"] is None
    assert load_thresholds(path, NAMES, base=0.3).tolist() == [0.7, 0.3, 0.3]
    (line,) = [m for m in detkit_log.messages if "no score threshold" in m]
    assert str(path) in line and "dog, car" in line and "0.3" in line and "cat" not in line


def test_plain_dict_number_and_none():
    assert load_thresholds(None, NAMES) is None
    assert load_thresholds(0.4, NAMES).tolist() == [0.4] * 3
    assert load_thresholds(1, NAMES).tolist() == [1.0] * 3
    assert load_thresholds({"dog": 0.8}, NAMES).tolist() == [0.0, 0.8, 0.0]
    assert load_thresholds({"dog": 0.8, "cat": None}, NAMES, base=0.5).tolist() == [0.5, 0.8, 0.5]


def test_unknown_class_names_the_valid_ones_and_a_close_match(tmp_path):
    with pytest.raises(ConfigError, match=r"'dgo' \(did you mean 'dog'\?\).*cat, dog, car"):
        load_thresholds({"dgo": 0.5}, NAMES)
    path = write_thresholds(tmp_path / "t.json", {"person": 0.5}, {})
    with pytest.raises(ConfigError, match=rf"{path}: unknown class name\(s\) 'person';"):
        load_thresholds(path, NAMES)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_scores_outside_zero_one(value):
    with pytest.raises(ConfigError, match=r"class 'cat'.*outside \[0, 1\]"):
        load_thresholds({"cat": value}, NAMES)
    with pytest.raises(ConfigError, match=r"outside \[0, 1\]"):
        load_thresholds(value, NAMES)
    with pytest.raises(ConfigError, match=r"class 'cat'.*outside \[0, 1\]"):
        write_thresholds("unused.json", {"cat": value}, {})


@pytest.mark.parametrize("value", ["0.5", True, [0.5]])
def test_non_numeric_scores(value):
    with pytest.raises(ConfigError, match=r"class 'dog'.* is not a number"):
        load_thresholds({"dog": value}, NAMES)


def test_bad_default_and_bad_source_types():
    doc = {"format": FORMAT, "version": 1, "thresholds": {}, "default": 2}
    with pytest.raises(ConfigError, match=r"'default'.*outside \[0, 1\]"):
        load_thresholds(doc, NAMES)
    with pytest.raises(ConfigError, match="must be a number, a dict"):
        load_thresholds([0.5, 0.5, 0.5], NAMES)


def test_unreadable_or_malformed_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=f"not found: {missing}"):
        load_thresholds(missing, NAMES)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=f"{bad} is not valid JSON"):
        load_thresholds(bad, NAMES)
    listed = tmp_path / "list.json"
    listed.write_text("[0.5]")
    with pytest.raises(ConfigError, match=f"{listed}: expected a JSON object"):
        load_thresholds(listed, NAMES)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else", "thresholds": {}}))
    with pytest.raises(ConfigError, match=f"{other}: 'format' is 'something else'"):
        load_thresholds(other, NAMES)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"format": FORMAT, "version": 2, "thresholds": {}}))
    with pytest.raises(ConfigError, match=f"{newer}: thresholds file version 2"):
        load_thresholds(newer, NAMES)
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(ConfigError, match=f"cannot read the score thresholds file {folder}"):
        load_thresholds(folder, NAMES)


def test_meta_cannot_overwrite_the_format_keys(tmp_path):
    with pytest.raises(ConfigError, match="reserved"):
        write_thresholds(tmp_path / "t.json", {"cat": 0.5}, {"thresholds": {}})
    assert not (tmp_path / "t.json").exists()
