"""One model called from two Python threads at once gives each thread the results of calling it
alone: the model holds no state that a call changes (its anchor cache is only read and added to),
so images side by side and user threads may share it."""

import sys
import threading

import pytest
import torch

from detkit import Detector
from detkit.modeling import build_model
from tests.helpers import CLASS_NAMES, one_torch_thread, smooth_image, tiny_config

# more distinct padded sizes than the anchor cache keeps, so that entries are dropped while the
# other thread reads them; size_divisibility 0: every resized size is its own padded size
MIN_SIZES = range(48, 48 + 70)


@pytest.fixture
def one_thread_each():
    """One torch thread per Python thread (a tiny model on a small shared CPU is faster so)."""
    yield from one_torch_thread()


def often_switching(run):
    """``run()`` with Python switching threads every few microseconds instead of every 5 ms: a
    check-then-read race in the model shows up within a few calls."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        run()
    finally:
        sys.setswitchinterval(saved)


def test_two_threads_at_once_get_each_their_own_results(one_thread_each):
    cfg = tiny_config(
        "model.size_divisibility=0", "test.parallel_images=1", "input.max_size_test=160"
    )
    torch.manual_seed(0)
    det = Detector(build_model(cfg, class_names=CLASS_NAMES), cfg)
    samples = [det.sample(smooth_image(60, 80, i), min_size=m) for i, m in enumerate(MIN_SIZES)]
    assert len({tuple(s["size"]) for s in samples}) == len(MIN_SIZES)
    with torch.no_grad():
        expected = [det.predictor([s])[0] for s in samples]  # one call at a time, alone
    orders = [list(range(len(samples))), list(reversed(range(len(samples))))]
    results = [{} for _ in orders]
    errors = []

    def run(order, out):
        try:
            with torch.no_grad():
                for i in order:
                    out[i] = det.predictor([samples[i]])[0]
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=job) for job in zip(orders, results)]

    def start_and_join():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    often_switching(start_and_join)
    assert not errors, errors
    assert sum(len(e["boxes"]) for e in expected) > 0  # not vacuous
    for out in results:
        assert sorted(out) == list(range(len(samples)))
        for i, want in enumerate(expected):
            for key in ("boxes", "scores", "labels"):
                assert torch.equal(out[i][key], want[key]), (i, key)
