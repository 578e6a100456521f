"""tools/video.py --backend: onnxruntime writes the eager backend's records, the frames/s figures
name their backend, and a backend that cannot run the model is one error line."""

import json

import pytest

from detkit.utils.threads import physical_cores
from tests.helpers import error_lines, load_tool, save_tiny_checkpoint
from tests.video.helpers import FAST, reference_video

video_tool = load_tool("video")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("video_backend") / "tiny.pth", FAST)


def run_video(ckpt, tmp_path, backend: str, *extra: str) -> int:
    return video_tool.main(
        [
            str(ckpt),
            "--input",
            str(reference_video()),
            "--output",
            str(tmp_path / f"{backend}.jsonl"),
            "--no-video",
            "--max-frames",
            "12",
            "--score-thresh",
            "0",
            "--no-progress",
            "--stats-json",
            str(tmp_path / f"{backend}_stats.json"),
            "--backend",
            backend,
            *extra,
        ]
    )


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def same_detections(a: dict, b: dict) -> bool:
    """Every detection of record ``a`` has a twin in record ``b``: same label, the same box and
    score up to the records' rounding (boxes to 0.01 px, scores to 1e-4: one step of each, for
    values 1e-5 apart that round apart)."""
    others = list(zip(b["boxes"], b["scores"], b["labels"]))

    def has_twin(box, score, label) -> bool:
        return any(
            other_label == label
            and abs(other_score - score) <= 1.01e-4
            and max(abs(x - y) for x, y in zip(other_box, box)) <= 0.0101
            for other_box, other_score, other_label in others
        )

    return all(has_twin(*d) for d in zip(a["boxes"], a["scores"], a["labels"]))


def test_onnxruntime_writes_the_eager_records(tmp_path, ckpt, detkit_log):
    pytest.importorskip("onnxruntime")
    assert run_video(ckpt, tmp_path, "eager") == 0
    assert run_video(ckpt, tmp_path, "onnxruntime") == 0
    eager = read_jsonl(tmp_path / "eager.jsonl")
    ort = read_jsonl(tmp_path / "onnxruntime.jsonl")
    assert len(eager) == len(ort) == 12
    assert sum(len(r["boxes"]) for r in eager) > 50  # the random model detects plenty at score 0
    for e, o in zip(eager, ort):
        assert {k: e[k] for k in ("frame", "timestamp", "width", "height")} == {
            k: o[k] for k in ("frame", "timestamp", "width", "height")
        }
        assert len(e["boxes"]) == len(o["boxes"])
        assert same_detections(e, o) and same_detections(o, e), e["frame"]
    for backend in ("eager", "onnxruntime"):
        stats = json.loads((tmp_path / f"{backend}_stats.json").read_text())
        assert stats["backend"] == backend and stats["frames"] == 12
        # the default --batch-size on the CPU: the frames test.parallel_images runs side by side
        assert stats["batch_size"] == min(physical_cores(), 8)
    final = [m for m in detkit_log.messages if "frames/s for the whole" in m]
    assert [("backend eager" in m, "backend onnxruntime" in m) for m in final] == [
        (True, False),
        (False, True),
    ]


def test_backend_that_cannot_run_the_model_is_one_line(tmp_path, ckpt, capsys):
    assert run_video(ckpt, tmp_path, "bogus") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert (
        "BackendError: unknown backend 'bogus' (backend= / --backend); valid: eager, onnxruntime"
        in line
    )
    pytest.importorskip("onnxruntime")
    assert run_video(ckpt, tmp_path, "onnxruntime", "test.flip=true") == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "test.flip=true (flip testing" in line
    assert not (tmp_path / "onnxruntime.jsonl").exists()  # refused before any frame was read
