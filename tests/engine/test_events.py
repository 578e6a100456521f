"""The training log when the disk fills: one error naming metrics.jsonl and the reason, and closing
the log afterwards does not raise again (that would hide the first error in the trainer's finally)."""

import errno
import os

import pytest

from detkit.engine.events import EventWriter
from detkit.utils.io import WriteError


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
