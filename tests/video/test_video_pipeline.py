"""tools/video.py and detkit.io_video: every input kind, the JSON-lines schema, corrupt frames, Ctrl-C."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detkit import Detector
from detkit.errors import ConfigError, DataError
from detkit.io_video import (
    CaptureSource,
    RunStats,
    detect_source,
    filter_detections,
    make_record,
    open_source,
    run_pipeline,
)
from detkit.io_video.sources import Frame
from detkit.io_video.writers import JsonLinesWriter, VideoFileWriter
from tests.helpers import CLASS_NAMES, load_tool, save_tiny_checkpoint
from tests.video.helpers import FAST, FakeCapture, count_video_frames, fake_infer, reference_video

video_tool = load_tool("video")

RECORD_KEYS = {"frame", "timestamp", "width", "height", "boxes", "scores", "labels", "names"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("video") / "tiny.pth", FAST)


@pytest.fixture(scope="module")
def det(ckpt):
    return Detector.from_checkpoint(str(ckpt))


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def check_schema(record, class_names=CLASS_NAMES):
    assert RECORD_KEYS <= set(record)
    n = len(record["boxes"])
    assert len(record["scores"]) == len(record["labels"]) == len(record["names"]) == n
    assert all(len(b) == 4 for b in record["boxes"])
    assert all(isinstance(v, int) for v in record["labels"])
    assert [class_names[i] for i in record["labels"]] == record["names"]
    assert record["scores"] == sorted(record["scores"], reverse=True)


def write_images(folder, n, size=(80, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.jpg"
        cv2.imwrite(str(p), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        paths.append(p)
    return paths


def test_video_file_gives_one_frame_and_one_record_per_source_frame(tmp_path, ckpt):
    """The real model on every frame of the reference clip, through the command line tool."""
    src = reference_video()
    out = tmp_path / "out" / "clip.mp4"
    rc = video_tool.main(
        [
            str(ckpt),
            "--input",
            str(src),
            "--output",
            str(out),
            "--batch-size",
            "8",
            "--score-thresh",
            "0",
            "--no-progress",
            "--stats-json",
            str(tmp_path / "stats.json"),
        ]
    )
    assert rc == 0
    assert count_video_frames(out) == 168
    cap = cv2.VideoCapture(str(out))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (294, 240)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
    records = read_jsonl(out.with_suffix(".jsonl"))
    assert [r["frame"] for r in records] == list(range(168))
    assert records[25]["timestamp"] == pytest.approx(1.0)
    for r in records:
        check_schema(r)
        assert (r["width"], r["height"]) == (294, 240)
    assert sum(len(r["boxes"]) for r in records) > 0  # the random model does detect something
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert (
        stats["frames"] == 168
        and stats["pipeline_fps"] > 0
        and stats["model_fps"] >= stats["pipeline_fps"]
    )


def test_every_and_max_frames(tmp_path, det):
    src = reference_video()
    result = detect_source(
        det, str(src), output=str(tmp_path / "v.mp4"), every=10, progress=False, infer=fake_infer
    )
    records = read_jsonl(result.jsonl)
    assert [r["frame"] for r in records] == list(range(0, 168, 10))
    assert count_video_frames(result.video) == 17
    assert cv2.VideoCapture(result.video).get(cv2.CAP_PROP_FPS) == pytest.approx(
        2.5
    )  # real duration kept
    result = detect_source(
        det,
        str(src),
        output=str(tmp_path / "m.mp4"),
        max_frames=7,
        progress=False,
        infer=fake_infer,
    )
    assert result.stats.frames == 7 and len(read_jsonl(result.jsonl)) == 7


@pytest.mark.parametrize("kind", ["image", "folder", "glob"])
def test_image_inputs(tmp_path, ckpt, kind):
    paths = write_images(tmp_path / "imgs", 3)
    spec = {
        "image": str(paths[1]),
        "folder": str(tmp_path / "imgs"),
        "glob": str(tmp_path / "imgs" / "*.jpg"),
    }[kind]
    out = tmp_path / "annotated"
    assert (
        video_tool.main(
            [
                str(ckpt),
                "--input",
                spec,
                "--output",
                str(out),
                "--score-thresh",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    expected = [paths[1]] if kind == "image" else paths
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(p.name for p in expected)
    assert cv2.imread(str(out / expected[0].name)).shape == (64, 80, 3)
    records = read_jsonl(out / "detections.jsonl")
    assert [r["file"] for r in records] == [str(p) for p in expected]
    for r in records:
        check_schema(r)
        assert r["timestamp"] is None and (r["width"], r["height"]) == (80, 64)


def test_output_naming_an_image_file(tmp_path, ckpt, detkit_log):
    """--output x.jpg with one input image writes that file (and x.jsonl), not a folder x.jpg/;
    with several input images it is a clear usage error."""
    paths = write_images(tmp_path / "imgs", 2)
    out = tmp_path / "result" / "annotated.jpg"
    args = [str(ckpt), "--output", str(out), "--score-thresh", "0", "--no-progress"]
    assert video_tool.main(args + ["--input", str(paths[0])]) == 0
    assert out.is_file() and cv2.imread(str(out)).shape == (64, 80, 3)
    (record,) = read_jsonl(out.with_suffix(".jsonl"))
    assert record["file"] == str(paths[0])
    assert video_tool.main(args + ["--input", str(tmp_path / "imgs")]) == 1
    assert "names one image file but the input has 2 images" in detkit_log.text


def test_camera_with_fake_capture(tmp_path, det):
    cap = FakeCapture(num_frames=12, size=(64, 48), fps=30, live=True)
    result = detect_source(
        det,
        0,
        output=str(tmp_path / "cam.mp4"),
        max_frames=8,
        batch_size=3,
        progress=False,
        capture_factory=lambda index: cap,
        infer=fake_infer,
    )
    records = read_jsonl(result.jsonl)
    assert [r["frame"] for r in records] == list(range(8))
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps) and all(isinstance(t, float) for t in stamps)
    assert count_video_frames(result.video) == 8 and cap.released
    with pytest.raises(DataError, match="camera 3"):
        open_source("3", capture_factory=lambda index: FakeCapture(opened=False))


def test_corrupt_video_frame_is_logged_and_skipped(tmp_path, det, detkit_log):
    cap = FakeCapture(num_frames=10, fail_at={4})
    source = CaptureSource(cap, "clip.avi")
    stats = run_pipeline(
        source,
        fake_infer,
        class_names=CLASS_NAMES,
        jsonl=JsonLinesWriter(str(tmp_path / "c.jsonl")),
        writer=VideoFileWriter(str(tmp_path / "c.mp4"), source.fps),
        progress=False,
    )
    assert stats.frames == 9 and stats.skipped == 1
    assert [r["frame"] for r in read_jsonl(tmp_path / "c.jsonl")] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert "frame 4 of clip.avi could not be decoded" in detkit_log.text
    assert count_video_frames(tmp_path / "c.mp4") == 9


def test_truncated_video_ends_with_a_warning_not_corrupt_frames(detkit_log):
    source = CaptureSource(FakeCapture(num_frames=30, fail_at=range(20, 30)), "short.mp4")
    frames = list(source)
    assert len(frames) == 20 and all(f.image is not None for f in frames)
    assert "short.mp4 ended at frame 20 although its header announces 30 frames" in detkit_log.text
    with pytest.raises(DataError, match="cannot decode any frame of broken.mp4"):
        list(CaptureSource(FakeCapture(num_frames=30, fail_at=range(30)), "broken.mp4"))


def test_corrupt_image_in_folder_is_skipped(tmp_path, det, detkit_log):
    paths = write_images(tmp_path / "imgs", 3)
    paths[1].write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = detect_source(
        det, str(tmp_path / "imgs"), output=str(tmp_path / "o"), progress=False, infer=fake_infer
    )
    assert result.stats.skipped == 1
    assert [r["file"] for r in read_jsonl(result.jsonl)] == [str(paths[0]), str(paths[2])]
    assert str(paths[1]) in detkit_log.text


def test_ctrl_c_leaves_a_playable_video(tmp_path, det):
    src = reference_video()
    calls = []

    def interrupted_infer(images):
        calls.append(len(images))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return fake_infer(images)

    result = detect_source(
        det,
        str(src),
        output=str(tmp_path / "int.mp4"),
        batch_size=2,
        progress=False,
        infer=interrupted_infer,
    )
    assert result.stats.interrupted and result.stats.frames == 6
    assert (
        count_video_frames(result.video) == 6
    )  # the container was finalised: cv2 reads every written frame
    assert [r["frame"] for r in read_jsonl(result.jsonl)] == list(range(6))


def test_unreadable_inputs_are_clear_errors(tmp_path, det, ckpt, detkit_log):
    with pytest.raises(DataError, match="input not found: .*nope.mp4"):
        open_source(str(tmp_path / "nope.mp4"))
    fake = tmp_path / "notavideo.mp4"
    fake.write_text("hello")
    with pytest.raises(DataError, match="notavideo.mp4"):
        open_source(str(fake))
    with pytest.raises(DataError, match="no files match"):
        open_source(str(tmp_path / "*.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        open_source(str(tmp_path / "empty"))
    assert video_tool.main([str(ckpt), "--input", str(fake), "--no-progress"]) == 1
    assert "DataError" in detkit_log.text and "notavideo.mp4" in detkit_log.text
    with pytest.raises(ConfigError, match="unknown class name.*'bus'.*cat"):
        detect_source(det, str(fake), classes=["bus"], progress=False)


def test_record_schema_and_filters():
    dets = {
        "boxes": np.array([[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 9, 9]], np.float32),
        "scores": np.array([0.9, 0.6, 0.3], np.float32),
        "labels": np.array([2, 0, 2]),
    }
    kept = filter_detections(dets, score_thresh=0.5, keep_labels=[2])
    assert kept["scores"].tolist() == pytest.approx([0.9]) and kept["labels"].tolist() == [2]
    frame = Frame(index=7, timestamp=0.28, image=np.zeros((10, 20, 3), np.uint8))
    record = make_record(frame, filter_detections(dets), CLASS_NAMES)
    assert record == json.loads(json.dumps(record))  # plain JSON types only
    assert (
        record["frame"] == 7
        and record["timestamp"] == 0.28
        and (record["width"], record["height"]) == (20, 10)
    )
    assert record["names"] == ["car", "cat", "car"] and record["boxes"][0] == [1.0, 2.0, 3.0, 4.0]
    assert "file" not in record
    assert RunStats(frames=10, wall_s=2.0, model_s=1.0).pipeline_fps == 5.0


@pytest.mark.slow
def test_sigint_to_the_tool_finishes_the_outputs(tmp_path):
    """A real Ctrl-C (SIGINT) while tools/video.py runs: exit status 130, a playable video and a
    JSON-lines file with the same frames."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = reference_video()
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "sig.mp4"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "tools/video.py",
            str(ckpt),
            "--input",
            str(src),
            "--output",
            str(out),
            "--threads",
            "1",
            "--no-progress",
        ],
        cwd=env["PYTHONPATH"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    jsonl = out.with_suffix(".jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    log = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, log
    records = read_jsonl(jsonl)
    assert 3 <= len(records) < 168
    assert count_video_frames(out) == len(records)
    assert "interrupted" in log


def test_default_output_names():
    from detkit.io_video.runner import default_output

    assert default_output("clips/street.mp4", False) == "output/video/street.mp4"
    assert default_output(0, False) == "output/video/camera0.mp4"
    assert default_output("frames/*.jpg", True) == "output/video/frames"
    assert default_output("photos/", True) == "output/video/photos"


def test_config_with_weights_and_no_video(tmp_path, ckpt):
    import torch
    import yaml

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(torch.load(ckpt, weights_only=False)["config"]))
    out = tmp_path / "only.jsonl"
    assert (
        video_tool.main(
            [
                str(cfg_file),
                "--weights",
                str(ckpt),
                "--input",
                str(reference_video()),
                "--output",
                str(out),
                "--no-video",
                "--max-frames",
                "3",
                "--classes",
                "dog,car",
                "--score-thresh",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    records = read_jsonl(out)
    assert len(records) == 3 and not list(tmp_path.glob("*.mp4"))
    assert all(set(r["names"]) <= {"dog", "car"} for r in records)


def test_inference_switches_from_the_config_are_used(ckpt):
    import torch

    from detkit.io_video import detector_infer
    from detkit.modeling.tta import MultiScaleFlip

    det = Detector.from_checkpoint(str(ckpt), overrides=["test.flip=true"])
    frame = cv2.cvtColor(cv2.imread(str(reference_video().parent / "color.jpg")), cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        expected = MultiScaleFlip(det.model, scales=[64], max_size=128, flip=True)(
            [det.sample(frame)]
        )[0]
        plain = det.model([det.sample(frame)])[0]
    got = detector_infer(det)([frame])[0]
    np.testing.assert_allclose(got["boxes"], expected["boxes"].numpy(), rtol=1e-5, atol=1e-4)
    assert len(got["boxes"]) != len(plain["boxes"]) or not np.allclose(
        got["boxes"], plain["boxes"].numpy()
    )


def test_a_source_error_in_the_reader_thread_reaches_the_caller(tmp_path):
    source = CaptureSource(FakeCapture(num_frames=5, fail_at=range(5)), "dead.mp4")
    with pytest.raises(DataError, match="cannot decode any frame of dead.mp4"):
        run_pipeline(
            source,
            fake_infer,
            class_names=CLASS_NAMES,
            jsonl=JsonLinesWriter(str(tmp_path / "d.jsonl")),
            progress=False,
        )


def test_per_class_thresholds_array_in_filter_detections():
    dets = {
        "boxes": np.array([[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 9, 9], [2, 2, 4, 4]], np.float32),
        "scores": np.array([0.9, 0.6, 0.3, 0.2], np.float32),
        "labels": np.array([2, 0, 2, 1]),
    }
    kept = filter_detections(dets, score_thresh=np.array([0.7, 0.2, 0.3]))
    assert kept["labels"].tolist() == [2, 2, 1] and kept["scores"].tolist() == pytest.approx(
        [0.9, 0.3, 0.2]
    )
    assert kept["boxes"].tolist() == [[1, 2, 3, 4], [0, 0, 9, 9], [2, 2, 4, 4]]
    kept = filter_detections(dets, np.array([0.0, 0.0, 0.95]), keep_labels=[0, 2])
    assert kept["labels"].tolist() == [0]
    empty = {k: v[:0] for k, v in dets.items()}
    assert filter_detections(empty, np.array([0.5, 0.5, 0.5]))["boxes"].shape == (0, 4)


def test_thresholds_file_per_class_in_detect_source_and_the_tool(tmp_path, det, ckpt, detkit_log):
    from detkit.analysis.thresholds import write_thresholds

    # fake_infer: a dog (label 1) at 0.9 and a cat (label 0) at 0.1 in every frame
    path = write_thresholds(tmp_path / "thr.json", {"cat": 0.05, "dog": 0.95, "car": None}, {})
    cap = FakeCapture(num_frames=4)
    result = detect_source(
        det,
        0,
        output=str(tmp_path / "cam.mp4"),
        score_thresh=str(path),
        progress=False,
        capture_factory=lambda index: cap,
        infer=fake_infer,
    )
    records = read_jsonl(result.jsonl)
    assert len(records) == 4 and all(r["names"] == ["cat"] for r in records)
    assert f"{path}: 1 of 3 classes have no score threshold there" in detkit_log.text
    # the default float threshold (0.5) still keeps the dog only
    result = detect_source(
        det,
        0,
        output=str(tmp_path / "cam2.mp4"),
        progress=False,
        capture_factory=lambda index: FakeCapture(num_frames=2),
        infer=fake_infer,
    )
    assert all(r["names"] == ["dog"] for r in read_jsonl(result.jsonl))
    # the tool: a number or a file; a file that names another model's classes fails in one line
    paths = write_images(tmp_path / "imgs", 1)
    every = write_thresholds(tmp_path / "all.json", {"cat": 0.0, "dog": 0.0, "car": 0.0}, {})
    args = [str(ckpt), "--input", str(paths[0]), "--no-progress", "--no-video"]
    out_file = tmp_path / "o_file.jsonl"
    out_zero = tmp_path / "o_zero.jsonl"
    assert video_tool.main(args + ["--output", str(out_file), "--score-thresh", str(every)]) == 0
    assert video_tool.main(args + ["--output", str(out_zero), "--score-thresh", "0"]) == 0
    (from_file,), (from_zero,) = read_jsonl(out_file), read_jsonl(out_zero)
    assert len(from_file["scores"]) > 0 and from_file == from_zero
    wrong = write_thresholds(tmp_path / "wrong.json", {"person": 0.5}, {})
    assert video_tool.main(args + ["--output", str(out_file), "--score-thresh", str(wrong)]) == 1
    assert "ConfigError" in detkit_log.text and "unknown class name(s) 'person'" in detkit_log.text
    assert (
        video_tool.parse_args(["m.pth", "--input", "x", "--score-thresh", "0.25"]).score_thresh
        == 0.25
    )
