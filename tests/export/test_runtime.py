"""The onnxruntime backend: same detections as eager, a graph cache keyed by what changes the
graph, and a clear refusal of every option the exported graph does not contain."""

import logging
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch

from detkit import Detector
from detkit.errors import BackendError, WriteError
from detkit.export import graph_cache, runtime
from detkit.export.graph_cache import graph_key
from detkit.export.runtime import OnnxRuntimePredictor
from detkit.inference.backends import check_backend, make_predictor
from detkit.inference.parallel import ParallelImages
from detkit.utils.threads import cpu_description, physical_cores
from tests.helpers import SIZES, TINY_C4, save_tiny_checkpoint, smooth_image, tiny_config

pytest.importorskip("onnx", reason="optional extra detkit[export] (onnx) not installed")
pytest.importorskip(
    "onnxruntime", reason="optional extra detkit[export] (onnxruntime) not installed"
)

ORT = "onnxruntime"


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    """Nothing a test exports lands in ~/.cache: the cache folder is the test's own."""
    monkeypatch.setenv("DETKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fpn(tmp_path_factory):
    """(checkpoint, eager Detector, onnxruntime Detector with its graph exported)."""
    ckpt = save_tiny_checkpoint(tmp_path_factory.mktemp("fpn") / "m.pth")
    ort = Detector.from_checkpoint(str(ckpt), backend=ORT)
    assert ort.predictor.backend == ORT  # exports once, next to the checkpoint
    return ckpt, Detector.from_checkpoint(str(ckpt)), ort


def copy_checkpoint(ckpt, folder):
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.copy(ckpt, folder / ckpt.name)


def graphs(folder):
    return sorted(p.name for p in folder.glob("*.onnx"))


def assert_same_detections(eager, ort, images):
    total = 0
    for image in images:
        a, b = eager.predict([image])[0], ort.predict([image])[0]
        assert len(a["boxes"]) == len(b["boxes"]), image.shape
        assert b["boxes"].dtype == np.float32 and b["labels"].dtype == np.int64
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert a["names"] == b["names"]
        np.testing.assert_allclose(a["boxes"], b["boxes"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=0, atol=1e-5)
        total += len(a["boxes"])
    assert total > 0  # the comparison is not vacuous


# ---------------------------------------------------------------------------------------------
# same outputs as eager


def test_fpn_onnxruntime_equals_eager_at_several_sizes(fpn):
    _, eager, ort = fpn
    assert ort.predictor.backend == ORT and eager.backend == "eager"
    assert_same_detections(eager, ort, [smooth_image(h, w, i) for i, (h, w) in enumerate(SIZES)])


def test_c4_onnxruntime_equals_eager(tmp_path):
    extra = ["model.rpn.post_nms_topk_test=64"]  # res5 runs per RoI: fewer proposals, faster
    ckpt = save_tiny_checkpoint(tmp_path / "c4.pth", extra, base=TINY_C4)
    eager = Detector.from_checkpoint(str(ckpt))
    ort = Detector.from_checkpoint(str(ckpt), backend=ORT)
    assert_same_detections(
        eager, ort, [smooth_image(h, w, i) for i, (h, w) in enumerate(SIZES[:2])]
    )


def unwrap(predictor):
    """The backend's own predictor inside ParallelImages (test.parallel_images on the CPU)."""
    return predictor.predictor if isinstance(predictor, ParallelImages) else predictor


def test_predictor_is_a_parameterless_module(fpn):
    _, eager, ort = fpn
    p = unwrap(ort.predictor)
    assert isinstance(p, OnnxRuntimePredictor) and isinstance(p, torch.nn.Module)
    assert list(p.parameters()) == [] and p.class_names == eager.class_names
    assert p.path.endswith(".onnx") and os.path.isfile(p.path)
    assert p.train().training and not p.eval().training
    out = p([ort.sample(smooth_image(120, 90, 0))])[0]
    assert set(out) == {"boxes", "scores", "labels"}
    assert all(isinstance(v, torch.Tensor) for v in out.values())


def test_another_thread_setting_gets_a_session_of_its_own(fpn, monkeypatch):
    """A caller running under another thread count (ParallelImages' workers) gets a session made
    once for that count, with the same detections."""
    _, _, ort = fpn
    p = unwrap(ort.predictor)
    own = p.session.get_session_options().intra_op_num_threads
    sample = ort.sample(smooth_image(120, 90, 0))
    expected = p([sample])[0]
    monkeypatch.setattr(runtime, "session_threads", lambda: own + 1)
    got = p([sample])[0]
    sessions = p.sessions_by_threads()
    assert list(sessions) == [own + 1]
    assert sessions[own + 1].get_session_options().intra_op_num_threads == own + 1
    p([sample])
    assert p.sessions_by_threads().keys() == sessions.keys()  # made once
    torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=0, atol=1e-3)
    assert torch.equal(got["labels"], expected["labels"])


def test_record_size_is_the_one_boxes_map_to(fpn):
    """Eager maps boxes to the sample's "height"/"width"; so does the onnxruntime predictor."""
    _, eager, ort = fpn
    image = smooth_image(240, 320, 3)
    outs = []
    for det in (eager, ort):
        sample = det.sample(image)
        sample["height"], sample["width"] = 480, 960  # e.g. a record of the full-size image
        outs.append(det.predictor([sample])[0])
    assert len(outs[0]["boxes"]) > 0
    torch.testing.assert_close(outs[1]["boxes"], outs[0]["boxes"], rtol=0, atol=2e-3)


def test_a_sample_at_another_size_is_refused(fpn):
    _, _, ort = fpn
    sample = ort.sample(smooth_image(240, 320, 0), min_size=100)  # a multi-scale pass would
    with pytest.raises(BackendError, match=r"input\.min_size_test=128"):
        ort.predictor([sample])
    resized = {"image": sample["image"], "height": 240, "width": 320}  # no size/scale
    with pytest.raises(BackendError, match="original"):
        ort.predictor([resized])


# ---------------------------------------------------------------------------------------------
# the graph cache


def test_second_construction_reuses_the_cached_file(fpn, monkeypatch):
    ckpt, _, first = fpn
    path = first.predictor.path
    assert os.path.dirname(path) == str(ckpt.parent) and path.startswith(str(ckpt) + ".")
    mtime = os.stat(path).st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cached graph fits")

    monkeypatch.setattr(graph_cache, "onnx_bytes", no_export)
    again = Detector.from_checkpoint(str(ckpt), backend=ORT).predictor
    assert again.path == path and os.stat(path).st_mtime_ns == mtime
    # from_config with the same weights is the same graph: same file
    cfg = tiny_config()
    assert Detector.from_config(cfg, weights=str(ckpt), backend=ORT).predictor.path == path


def test_key_follows_weights_and_graph_config_only(fpn):
    _, eager, _ = fpn
    model, cfg = eager.model, eager.cfg
    key = graph_key(model, cfg)
    assert graph_key(model, cfg) == key
    # keys outside the graph (where outputs go, the training schedule) keep the file
    assert (
        graph_key(model, cfg.with_overrides(["output_dir=elsewhere", "solver.max_iter=7"])) == key
    )
    assert graph_key(model, cfg.with_overrides(["model.roi_heads.score_thresh_test=0.2"])) != key
    assert graph_key(model, cfg.with_overrides(["input.min_size_test=96"])) != key
    assert graph_key(model, cfg, opset=18) != key
    changed = Detector.from_checkpoint(str(fpn[0])).model
    with torch.no_grad():
        changed.roi_heads.predictor.cls_score.bias[0] += 1e-6
    assert graph_key(changed, cfg) != key


def test_truncated_cache_file_is_rebuilt_and_older_graphs_removed(fpn, tmp_path, caplog):
    ckpt, _, first = fpn
    ckpt = copy_checkpoint(ckpt, tmp_path / "run")
    name = os.path.basename(first.predictor.path)
    data = open(first.predictor.path, "rb").read()
    (tmp_path / "run" / name).write_bytes(data[: len(data) // 3])
    stale = tmp_path / "run" / "m.pth.0123456789abcdef.onnx"
    stale.write_bytes(b"an older export")
    with caplog.at_level(logging.INFO, logger="detkit"):
        det = Detector.from_checkpoint(str(ckpt), backend=ORT)
        assert det.predictor.backend == ORT
    assert any(r.levelno == logging.WARNING and name in r.getMessage() for r in caplog.records)
    assert any("no cached graph for these" in r.getMessage() for r in caplog.records)
    assert graphs(tmp_path / "run") == [name]  # rebuilt in place, the older one gone, no temp file
    assert (tmp_path / "run" / name).stat().st_size > len(data) // 2
    assert len(det.predict([smooth_image(240, 320, 0)])[0]["boxes"]) > 0


def test_unwritable_checkpoint_folder_falls_back_to_the_cache_folder(fpn, tmp_path, monkeypatch):
    ckpt, _, first = fpn
    ckpt = copy_checkpoint(ckpt, tmp_path / "readonly")
    os.chmod(tmp_path / "readonly", 0o555)
    try:
        if os.access(tmp_path / "readonly", os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        exported = open(first.predictor.path, "rb").read()
        monkeypatch.setattr(graph_cache, "onnx_bytes", lambda *a, **k: exported)
        path = Detector.from_checkpoint(str(ckpt), backend=ORT).predictor.path
    finally:
        os.chmod(tmp_path / "readonly", 0o755)
    assert os.path.dirname(path) == str(tmp_path / "cache")
    assert graphs(tmp_path / "readonly") == []


def test_failed_write_next_to_weights_falls_back_to_the_cache_folder(fpn, tmp_path, monkeypatch):
    """The same fallback when the folder looks writable but the write fails (works as root)."""
    ckpt, _, first = fpn
    ckpt = copy_checkpoint(ckpt, tmp_path / "full")
    exported = open(first.predictor.path, "rb").read()
    monkeypatch.setattr(graph_cache, "onnx_bytes", lambda *a, **k: exported)
    write = graph_cache.atomic_write_bytes

    def disk_full_there(data, path):
        if path.parent == tmp_path / "full":
            raise WriteError(f"cannot write {path}: No space left on device")
        return write(data, path)

    monkeypatch.setattr(graph_cache, "atomic_write_bytes", disk_full_there)
    path = Detector.from_checkpoint(str(ckpt), backend=ORT).predictor.path
    assert os.path.dirname(path) == str(tmp_path / "cache")
    assert graphs(tmp_path / "full") == [] and list((tmp_path / "full").iterdir()) == [ckpt]
    # found there next time, without exporting
    monkeypatch.setattr(graph_cache, "onnx_bytes", None)
    assert Detector.from_checkpoint(str(ckpt), backend=ORT).predictor.path == path


def test_no_weights_file_caches_in_the_cache_folder(fpn, tmp_path, monkeypatch):
    exported = open(fpn[2].predictor.path, "rb").read()
    monkeypatch.setattr(graph_cache, "onnx_bytes", lambda *a, **k: exported)
    path = Detector.from_config(tiny_config(), backend=ORT).predictor.path
    assert os.path.dirname(path) == str(tmp_path / "cache")
    assert os.path.basename(path).startswith("model.")


# ---------------------------------------------------------------------------------------------
# what the backend refuses


@pytest.mark.parametrize(
    "override",
    [
        "test.scales=[96,128]",
        "test.flip=true",
        "test.precision=bf16",
        "test.precision=fp16",
        "model.roi_heads.refine_iterations=1",
        "input.resize_rounding=round",
        "model.resize_interpolation=pil_bilinear",
    ],
)
def test_options_the_graph_lacks_are_refused(tmp_path, override):
    ckpt = save_tiny_checkpoint(tmp_path / "r.pth")
    shown = override.replace(",", ", ")  # lists print as [96, 128]
    with pytest.raises(BackendError, match=rf"{re.escape(shown)} \(.*: set "):
        Detector.from_checkpoint(str(ckpt), overrides=[override], backend=ORT)
    assert graphs(tmp_path) == []  # refused before anything is exported
    check_backend(tiny_config(override), "eager", "cpu")  # eager runs all of them


def test_gpu_unknown_backend_and_missing_package_are_refused(monkeypatch):
    cfg = tiny_config()
    with pytest.raises(BackendError, match=r"device=cuda.*use device=cpu"):
        check_backend(cfg, ORT, "cuda")
    with pytest.raises(
        BackendError,
        match=r"unknown backend 'tensorrt' \(backend= / --backend\); valid: eager, onnxruntime",
    ):
        check_backend(cfg, "tensorrt", "cpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(BackendError, match=r"pip install 'detkit\[export\]'"):
        Detector.from_config(cfg, backend=ORT)
    Detector.from_config(cfg)  # eager needs no extra


def test_eager_predictor_is_build_predictor(tmp_path):
    cfg = tiny_config("test.flip=true")
    from detkit.modeling import build_model
    from detkit.modeling.tta import MultiScaleFlip

    predictor = make_predictor(build_model(cfg), cfg)
    assert isinstance(unwrap(predictor), MultiScaleFlip)
    one = make_predictor(build_model(cfg), tiny_config("test.flip=true", "test.parallel_images=1"))
    assert isinstance(one, MultiScaleFlip)  # test.parallel_images=1: nothing around it


def test_physical_cores_counts_cores_not_hyperthreads(tmp_path, monkeypatch):
    blocks = [
        f"processor\t: {cpu}\nphysical id\t: {cpu // 4}\ncore id\t\t: {cpu % 2}\n"
        for cpu in range(8)
    ]  # 2 sockets x 2 cores x 2 threads
    (tmp_path / "cpuinfo").write_text("\n".join(blocks))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert physical_cores(str(tmp_path / "cpuinfo")) == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 4})
    assert physical_cores(str(tmp_path / "cpuinfo")) == 2  # 0 and 2 share core (0, 0)
    assert physical_cores(str(tmp_path / "missing")) == 3  # no cpuinfo: the allowed CPUs


def test_cpu_description_names_the_cpu_cores_and_units(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    block = "processor\t: {}\nmodel name\t: Example CPU 9000\ncore id\t\t: {}\nflags\t\t: {}\n"
    flags = "fpu sse avx2 avx512f amx_bf16 amx_tile"
    (tmp_path / "amx").write_text("\n".join(block.format(c, c // 2, flags) for c in range(4)))
    assert cpu_description(str(tmp_path / "amx")) == (
        "Example CPU 9000, 2 physical cores, AVX-512, AMX"
    )
    (tmp_path / "avx2").write_text("\n".join(block.format(c, c, "fpu avx2") for c in range(4)))
    assert cpu_description(str(tmp_path / "avx2")) == "Example CPU 9000, 4 physical cores, AVX2"


def test_onnxruntime_threads_follow_torch_set_num_threads(monkeypatch):
    """One thread setting for both backends (tools/video.py --threads): onnxruntime uses the
    physical cores, or fewer when torch was told fewer."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    data = onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data.ir_version = 8
    data = data.SerializeToString()
    monkeypatch.setattr(runtime, "physical_cores", lambda: 4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        session = runtime.ort_session(data)
        assert session.get_session_options().intra_op_num_threads == 1
        torch.set_num_threads(8)
        session = runtime.ort_session(data)
        assert session.get_session_options().intra_op_num_threads == 4
    finally:
        torch.set_num_threads(threads)
