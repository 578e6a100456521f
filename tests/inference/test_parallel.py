"""test.parallel_images: the images of one call side by side in threads on the CPU give the results
of one image at a time, in order, under the caller's grad/inference mode, with torch's thread
setting put back."""

import os

import numpy as np
import pytest
import torch

from detkit import Detector
from detkit.errors import ConfigError
from detkit.inference.parallel import ParallelImages, resolve_parallel_images
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
        with pytest.raises(
            ConfigError, match=r"test.parallel_images.*expected auto \| an int >= 1"
        ):
            resolve_parallel_images(tiny_config(f"test.parallel_images={bad}"), cpu)


# RoI pooling: chunks of RoIs side by side on the CPU (torchvision's CPU kernels use one core)
@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def fpn_features_and_boxes(dtype=torch.float32, rois=120):
    g = torch.Generator().manual_seed(0)
    feats = [
        torch.randn(2, 8, 64 // s, 96 // s, generator=g)
        .to(dtype)
        .contiguous(memory_format=torch.channels_last)
        for s in (1, 2, 4)
    ]
    xy = torch.rand(rois, 2, generator=g) * torch.tensor([300.0, 200.0])
    wh = torch.rand(rois, 2, generator=g) * 250 + 1
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([384.0, 256.0]))], 1)
    return feats, [boxes[: rois // 3], boxes[rois // 3 :]]


@pytest.mark.parametrize("name", ["ROIAlign", "ROIPool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_roi_chunks_side_by_side_equal_one_call(name, dtype, two_threads, monkeypatch):
    from detkit.modeling import poolers
    from detkit.registry import ROI_POOLERS

    pooler = ROI_POOLERS.get(name)(output_size=7, in_strides=(4, 8, 16))
    feats, boxes = fpn_features_and_boxes(dtype)
    calls = []
    real = poolers.run_side_by_side
    monkeypatch.setattr(poolers, "run_side_by_side", lambda c: calls.append(len(c)) or real(c))
    with torch.inference_mode():
        split = pooler(feats, boxes, (256, 384))
        assert calls and max(calls) == 2  # at least one level was pooled in two chunks
        monkeypatch.setattr(poolers, "roi_threads", lambda feature, rois: 1)
        one = pooler(feats, boxes, (256, 384))
    assert split.dtype == dtype and split.shape == (120, 8, 7, 7)
    assert torch.equal(split, one)
    assert split.abs().sum() > 0


def test_roi_threads_follow_the_calling_threads_torch_setting(two_threads):
    from detkit.modeling.poolers import MIN_ROIS_PER_THREAD, roi_threads

    feature = torch.zeros(1, 4, 8, 8)
    rois = torch.zeros(1000, 5)
    assert roi_threads(feature, rois[: 2 * MIN_ROIS_PER_THREAD]) == 2
    assert roi_threads(feature, rois[: 2 * MIN_ROIS_PER_THREAD - 1]) == 1  # too few to hand over
    torch.set_num_threads(1)  # e.g. a ParallelImages worker's share on 2 cores
    assert roi_threads(feature, rois) == 1


@pytest.mark.parametrize("name", ["ROIAlign", "ROIPool"])
def test_training_roi_chunks_give_one_calls_values_and_gradients(name, two_threads, monkeypatch):
    """RoIAlign's forward and backward run in chunks side by side in training too (same forward,
    gradients up to float rounding); RoIPool has no such path and keeps one call."""
    from detkit.modeling import poolers
    from detkit.registry import ROI_POOLERS

    pooler = ROI_POOLERS.get(name)(output_size=7, in_strides=(4, 8, 16))
    chunked = []
    real = poolers._RoIAlignSideBySide.apply
    monkeypatch.setattr(
        poolers._RoIAlignSideBySide, "apply", lambda *a: chunked.append(a[-1]) or real(*a)
    )
    if name == "ROIAlign":  # the chunked backward is RoIAlign's gradient (finite differences)
        feature = torch.randn(1, 3, 16, 20, dtype=torch.float64, requires_grad=True)
        rois = torch.tensor([[0, 4.0, 6.0, 60.0, 50.0]] * 40, dtype=torch.float64)
        rois[:, 1:] += torch.arange(40, dtype=torch.float64)[:, None] / 3
        chunks = lambda f: pooler.pool_chunks_with_grad(f, rois, 0.25, 2)  # noqa: E731
        torch.autograd.gradcheck(chunks, (feature,), atol=1e-6)
        chunked.clear()
    feats, boxes = fpn_features_and_boxes(rois=150)
    weights = torch.randn(150, 8, 7, 7, generator=torch.Generator().manual_seed(1))
    results = []
    for split in (True, False):
        if not split:
            monkeypatch.setattr(poolers, "roi_threads", lambda feature, rois: 1)
        leaves = [f.clone().contiguous().requires_grad_() for f in feats]
        out = pooler(leaves, boxes, (256, 384))
        (out * weights).sum().backward()
        results.append((out.detach(), [f.grad for f in leaves]))
    (split_out, split_grads), (one_out, one_grads) = results
    assert chunked == ([2] * len(chunked) if name == "ROIAlign" else [])  # 2 chunks per level
    assert len(chunked) >= (1 if name == "ROIAlign" else 0)
    assert torch.equal(split_out, one_out)
    for a, b in zip(split_grads, one_grads):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_run_side_by_side_order_modes_and_errors():
    from detkit.utils.threads import MAX_THREADS, run_side_by_side

    assert run_side_by_side([lambda i=i: i for i in range(5)]) == [0, 1, 2, 3, 4]
    with torch.inference_mode():
        out = run_side_by_side([lambda: torch.ones(2) * 2] * 3)
    assert all(t.is_inference() for t in out)

    def boom():
        raise RuntimeError("chunk failed")

    with pytest.raises(RuntimeError, match="chunk failed"):
        run_side_by_side([lambda: 1, boom])
    with pytest.raises(ValueError, match="at most"):
        run_side_by_side([lambda: 1] * (MAX_THREADS + 1))


def _side_by_side_in_child(queue):
    from detkit.utils.threads import run_side_by_side

    queue.put(run_side_by_side([lambda i=i: i * i for i in range(3)]))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_pools_work_again_in_a_forked_child(ckpt):
    """The parent's pool threads do not survive fork: the child makes its own pool (else its work
    would wait forever in the parent's queue)."""
    import multiprocessing

    from detkit.utils.threads import run_side_by_side

    assert run_side_by_side([lambda: 1, lambda: 2]) == [1, 2]  # the parent's pool exists
    det = Detector.from_checkpoint(str(ckpt), overrides=["test.parallel_images=2"])
    samples = [det.sample(im) for im in images()[:2]]
    det.predictor(samples)  # and ParallelImages' pool too
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_side_by_side_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("run_side_by_side hung in a forked child")
    assert child.exitcode == 0 and queue.get(timeout=5) == [0, 1, 4]
    pool = det.predictor._pool
    pool._pid = -1  # as a forked child sees it: the pool is made again, and works
    assert len(det.predictor(samples)) == 2 and pool._pid == os.getpid()
