"""test.parallel_images: the images of one call side by side in threads on the CPU give the results
of one image at a time, in order, under the caller's grad/inference mode, with torch's thread
setting put back."""

import numpy as np
import pytest
import torch

from detkit import Detector
from detkit.config import ConfigError
from detkit.modeling.parallel import ParallelImages, resolve_parallel_images
from tests.conftest import tiny_config
from tests.export.test_export import smooth_image
from tests.video.helpers import save_tiny_checkpoint

SIZES = [(240, 320), (333, 211), (97, 203), (200, 200), (150, 330)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("parallel") / "m.pth")


def images():
    return [smooth_image(h, w, i) for i, (h, w) in enumerate(SIZES)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["labels"], y["labels"])
        np.testing.assert_allclose(x["boxes"], y["boxes"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(x["scores"], y["scores"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_side_by_side_equals_one_at_a_time_in_order(ckpt, backend, tmp_path, monkeypatch):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
        monkeypatch.setenv("DETKIT_CACHE", str(tmp_path / "cache"))
    one = Detector.from_checkpoint(str(ckpt), backend=backend, overrides=["test.parallel_images=1"])
    two = Detector.from_checkpoint(str(ckpt), backend=backend, overrides=["test.parallel_images=2"])
    assert isinstance(two.predictor, ParallelImages) and two.predictor.backend == backend
    threads = torch.get_num_threads()
    expected = [one.predict([im])[0] for im in images()]
    got = two.predict(images(), batch_size=5)  # 3 images in one thread, 2 in the other
    assert_same(expected, got)
    assert sum(len(r["boxes"]) for r in got) > 0  # not vacuous
    assert torch.get_num_threads() == threads  # the workers' setting is undone
    if backend == "onnxruntime":  # the workers ran a session of their own thread count
        from detkit.export.runtime import session_threads

        inner, per_image = two.predictor.predictor, max(1, threads // 2)
        assert set(inner._sessions) == (set() if per_image == session_threads() else {per_image})


def test_workers_take_the_callers_inference_mode(ckpt):
    det = Detector.from_checkpoint(str(ckpt), overrides=["test.parallel_images=2"])
    samples = [det.sample(im) for im in images()[:2]]
    with torch.inference_mode():
        out = det.predictor(samples)
    assert all(o["boxes"].is_inference() for o in out)
    with torch.no_grad():
        out = det.predictor(samples)
    assert not any(o["scores"].requires_grad for o in out)


def test_an_error_in_a_worker_reaches_the_caller(ckpt):
    det = Detector.from_checkpoint(str(ckpt), overrides=["test.parallel_images=2"])
    good = det.sample(images()[0])
    with pytest.raises(AttributeError, match="no attribute"):
        det.predictor([good, {"image": "not an image", "height": 1, "width": 1}])
    assert len(det.predictor([good, good])) == 2  # and the pool still works


def test_resolve_parallel_images():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_parallel_images(tiny_config(), cpu, cores=2) == 2
    assert resolve_parallel_images(tiny_config(), cpu, cores=32) == 8
    assert resolve_parallel_images(tiny_config(), cuda, cores=2) == 1
    assert resolve_parallel_images(tiny_config("test.parallel_images=3"), cpu) == 3
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="test.parallel_images.*is not auto or an integer"):
            resolve_parallel_images(tiny_config(f"test.parallel_images={bad}"), cpu)
