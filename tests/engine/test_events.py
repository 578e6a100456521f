"""The training log when the disk fills: one error naming metrics.jsonl and the reason, and closing
the log afterwards does not raise again (that would hide the first error in the trainer's finally)."""

import errno
import json
import os

import pytest

from detkit.engine.events import EventWriter
from detkit.errors import WriteError


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full (ENOSPC)")
def test_full_disk_while_logging_names_the_file(tmp_path):
    writer = EventWriter(tmp_path)
    writer.write(1, {"total_loss": 1.5})
    writer._file.close()
    writer._file = open("/dev/full", "a", encoding="utf-8")  # every write: ENOSPC from the kernel
    with pytest.raises(WriteError) as info:
        writer.write(2, {"total_loss": 1.4})
    assert str(info.value) == f"cannot write {tmp_path / 'metrics.jsonl'}: No space left on device"
    assert info.value.errno == errno.ENOSPC
    writer.close()  # nothing left to flush: no second error
    assert (tmp_path / "metrics.jsonl").read_text() == '{"iteration": 1, "total_loss": 1.5}\n'


def test_metrics_file_that_cannot_be_opened(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match=f"cannot write {blocker / 'metrics.jsonl'}: Not a dir"):
        EventWriter(blocker)


def test_curves_show_ap_and_ap50_at_every_evaluation(tmp_path):
    from detkit.engine.events import METRICS_FILE, eval_series, plot_curves, read_jsonl

    lines = [
        {"iteration": i, "total_loss": 2.0 / i, "loss_cls": 1.0 / i, "lr": 0.1}
        for i in (1, 2, 3, 4)
    ]
    lines += [
        {"iteration": i, "split": "val", "AP": ap, "AP50": ap * 2, "AP75": ap}
        for i, ap in ((2, 0.05), (4, 0.1), (6, 0.15), (8, 0.2))
    ]
    lines.append({"iteration": 8, "split": "val", "AP": 0.25, "AP50": 0.5, "AP75": 0.2})  # resumed
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines))
    series = eval_series(read_jsonl(tmp_path / METRICS_FILE))
    assert list(series) == ["AP", "AP50"]  # AP75 is not drawn over them
    assert series["AP"] == [(2, 0.05), (4, 0.1), (6, 0.15), (8, 0.25)]
    assert [v for _, v in series["AP50"]] == [0.1, 0.2, 0.3, 0.5]
    assert (
        plot_curves(tmp_path) == tmp_path / "curves.png"
        and (tmp_path / "curves.png").stat().st_size
    )
