"""test.parallel_images: the images of one call side by side in threads on the CPU give the results
of one image at a time, in order, under the caller's grad/inference mode, each worker with its
share of torch's threads and the caller's thread setting untouched; test.ims_per_batch made
concrete by one function."""

import os
import threading

import numpy as np
import pytest
import torch
from torch import nn

from detkit import Detector
from detkit.errors import ConfigError
from detkit.inference.parallel import (
    ParallelImages,
    resolve_parallel_images,
    resolve_test_batch,
    with_test_batch,
)
from tests.helpers import save_tiny_checkpoint, smooth_image, tiny_config

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
    expected = [one.predict([im])[0] for im in images()]
    got = two.predict(images(), batch_size=5)  # 3 images in one thread, 2 in the other
    assert_same(expected, got)
    assert sum(len(r["boxes"]) for r in got) > 0  # not vacuous
    if backend == "onnxruntime":  # the workers' sessions: of their share of the threads, if other
        sessions = two.predictor.predictor.sessions_by_threads()
        assert set(sessions) <= {two.predictor.threads_per_image}


class ThreadProbe(nn.Module):
    """A predictor that reports, per sample, the thread it ran in and that thread's torch threads."""

    def forward(self, samples):
        return [
            {
                "index": s["index"],
                "thread": threading.get_ident(),
                "threads": torch.get_num_threads(),
            }
            for s in samples
        ]


def threads_of_a_new_thread() -> int:
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_each_worker_has_its_share_and_the_callers_setting_stays():
    caller = torch.get_num_threads()
    wrapped = ParallelImages(ThreadProbe(), images=2, threads=4)
    samples = [{"index": i} for i in range(5)]
    out = wrapped(samples)
    assert [o["index"] for o in out] == list(range(5))  # in the order of the samples
    workers = {o["thread"] for o in out}
    assert 1 <= len(workers) <= 2 and threading.get_ident() not in workers
    assert all(o["threads"] == 2 for o in out)  # 4 threads // 2 images
    again = wrapped(samples)  # every call: worker threads, each with its share
    assert [o["index"] for o in again] == list(range(5)) and all(o["threads"] == 2 for o in again)
    assert threading.get_ident() not in {o["thread"] for o in again}
    assert torch.get_num_threads() == caller
    assert threads_of_a_new_thread() == caller  # threads started later begin as before
    alone = wrapped(samples[:1])  # one sample: straight through, in the caller's thread
    assert alone[0]["thread"] == threading.get_ident() and alone[0]["threads"] == caller


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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_side_by_side_works_in_a_process_forked_after_use(ckpt):
    """Threads do not survive fork: a child forked after the parent ran images side by side runs
    them side by side too (in threads of its own), with the parent's results."""
    import multiprocessing

    det = Detector.from_checkpoint(str(ckpt), overrides=["test.parallel_images=1"])
    wrapped = ParallelImages(det.predictor, images=2, threads=2)  # one thread per image
    samples = [det.sample(im) for im in images()[:4]]
    with torch.no_grad():
        expected = wrapped(samples)

    def child():
        with torch.no_grad():
            got = wrapped(samples)
        same = all(
            torch.equal(a["labels"], b["labels"]) and torch.allclose(a["boxes"], b["boxes"])
            for a, b in zip(got, expected)
        )
        os._exit(0 if same and len(got) == len(samples) else 3)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=120)
    if process.is_alive():
        process.kill()
        pytest.fail("images side by side hung in a forked child")
    assert process.exitcode == 0


def test_resolve_parallel_images():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_parallel_images(tiny_config(), cpu, cores=2) == 2
    assert resolve_parallel_images(tiny_config(), cpu, cores=32) == 8
    assert resolve_parallel_images(tiny_config(), cuda, cores=2) == 1
    assert resolve_parallel_images(tiny_config("test.parallel_images=3"), cpu) == 3
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="test.parallel_images"):
            resolve_parallel_images(tiny_config(f"test.parallel_images={bad}"), cpu)


def test_test_batch_auto_follows_the_images_side_by_side_and_an_integer_is_kept(tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = tiny_config("test.ims_per_batch=auto")
    assert resolve_test_batch(auto, cpu, cores=2) == 2
    assert resolve_test_batch(auto, cpu, cores=32) == 8
    assert resolve_test_batch(auto, cuda, cores=2) == 1
    assert (
        resolve_test_batch(tiny_config("test.ims_per_batch=auto", "test.parallel_images=1"), cpu)
        == 1
    )
    assert (
        resolve_test_batch(tiny_config("test.ims_per_batch=auto", "test.parallel_images=3"), cpu)
        == 3
    )
    # an integer is used as given, whichever file or override it came from
    from detkit.config import load_config

    file = tmp_path / "one.yaml"
    file.write_text("test: {ims_per_batch: 1}\n")
    for cfg in (tiny_config("test.ims_per_batch=1"), load_config(str(file))):
        assert resolve_test_batch(cfg, cpu, cores=4) == 1
        assert with_test_batch(cfg, cpu) is cfg
    assert resolve_test_batch(tiny_config("test.ims_per_batch=3"), cuda) == 3
    concrete = with_test_batch(
        tiny_config("test.ims_per_batch=auto", "test.parallel_images=2"), cpu
    )
    assert concrete.test.ims_per_batch == 2
    # a caller that runs fewer images side by side (the trainer's evaluation under several
    # processes: one at a time) gets auto resolved to that; an integer stays as given
    auto2 = tiny_config("test.ims_per_batch=auto", "test.parallel_images=2")
    assert with_test_batch(auto2, cpu, images=1).test.ims_per_batch == 1
    assert (
        with_test_batch(tiny_config("test.ims_per_batch=3"), cpu, images=1).test.ims_per_batch == 3
    )
