"""Files a tool cannot read or write end it with one error line naming the file, exit status 1 and
no traceback: a truncated, garbage or non-checkpoint file given to every tool that reads weights
(and to ``--resume``), and an ``--output-dir`` that cannot be a folder. The tools run in-process
(``main`` returns the status); one runs as its own Python process, as a user starts it."""

import shutil

import pytest
import torch

from tests.engine.helpers import load_tool, run_tool, tiny_config


def damaged(tmp_path, kind: str):
    path = tmp_path / f"{kind}.pth"
    if kind == "truncated":  # a copy cut short
        torch.save({"model": {"w": torch.ones(1000)}, "config": {}}, path)
        with open(path, "r+b") as f:
            f.truncate(300)
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:  # a readable torch file that is no checkpoint
        torch.save([1, 2, 3], path)
    return path


def assert_one_error_line(status: int, err: str, *expected: str) -> str:
    """Exit status 1, no traceback, exactly one ERROR line, the last one, naming ``expected``."""
    errors = [line for line in err.splitlines() if "ERROR]" in line]
    assert status == 1 and "Traceback" not in err, err
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def config_file(data_root, tmp_path):
    path = tmp_path / "tiny.yaml"
    tiny_config(data_root).dump(path)
    return str(path)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "list"])
def test_unreadable_checkpoint_in_every_tool(kind, config_file, tmp_path, capsys):
    bad = damaged(tmp_path, kind)
    image = tmp_path / "frame.jpg"  # never read: the model is loaded first
    commands = {
        "video": [str(bad), "--input", str(image), "--no-progress"],
        "video --weights": [config_file, "--weights", str(bad), "--input", str(image)],
        "export": [str(bad), "--format", "torchscript", "--output", str(tmp_path / "m.pt")],
        "convert_weights": ["--from", "torchvision", "--config", config_file, str(bad), "o.pth"],
        "test": [config_file, "--weights", str(bad), "--output-dir", str(tmp_path / "test")],
    }
    reason = "holds a list, not a checkpoint dict" if kind == "list" else "cannot read checkpoint"
    for command, argv in commands.items():
        status = load_tool(command.split()[0]).main(argv)
        line = assert_one_error_line(status, capsys.readouterr().err, str(bad), reason)
        assert "miniz" not in line, f"{command}: {line}"  # torch's paragraph stays out
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "o.pth").exists()


def test_unreadable_checkpoints_on_resume(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(damaged(tmp_path, "truncated"), out / "last.pth")
    shutil.copy(damaged(tmp_path, "list"), out / "model_0000004.pth")
    status = load_tool("train").main([config_file, "--output-dir", str(out), "--resume"])
    err = capsys.readouterr().err
    assert_one_error_line(
        status,
        err,
        f"no readable checkpoint in {out}",
        f"cannot read checkpoint {out / 'last.pth'}",
        f"{out / 'model_0000004.pth'} holds a list",
    )


def test_output_dir_that_cannot_be_a_folder(config_file, tmp_path, capsys):
    blocker = tmp_path / "a_file"  # the tests run as root: a file in the path, not chmod, blocks
    blocker.write_text("x")
    for tool, argv in (
        ("train", [config_file, "--output-dir", str(blocker / "run")]),
        ("test", [config_file, "--weights", str(blocker), "--output-dir", str(blocker / "t")]),
    ):
        status = load_tool(tool).main(argv)
        assert_one_error_line(
            status,
            capsys.readouterr().err,
            f"{blocker / ('run' if tool == 'train' else 't')}",
            "Not a directory",
        )


@pytest.mark.slow
def test_unreadable_checkpoint_as_a_user_runs_the_tool(tmp_path):
    bad = damaged(tmp_path, "truncated")
    proc = run_tool(["tools/video.py", str(bad), "--input", str(tmp_path / "clip.mp4")])
    assert proc.returncode == 1 and not proc.stdout, proc.stdout
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, nothing else
    assert f"CheckpointError: cannot read checkpoint {bad}" in proc.stderr


def test_a_tool_run_in_process_leaves_the_logger_as_it_found_it(tmp_path, caplog):
    """main sets up the detkit console log for its own run only: afterwards the caller's logging
    (here pytest's caplog, on the root logger) sees detkit's records again."""
    import logging

    logger = logging.getLogger("detkit")
    before = (list(logger.handlers), logger.level, logger.propagate)
    missing = tmp_path / "missing.json"
    status = load_tool("evaluate").main(["--gt", str(missing), "--results", str(missing)])
    assert status != 0
    assert (list(logger.handlers), logger.level, logger.propagate) == before
    with caplog.at_level(logging.WARNING, logger="detkit"):
        logger.warning("after the tool")
    assert caplog.messages == ["after the tool"]
