"""resolve_device: the values every device option accepts, and the errors for the others."""

import pytest
import torch

from detkit.errors import ConfigError, DetkitError
from detkit.utils.device import resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_cuda_only_when_available(no_cuda):
    assert resolve_device() == resolve_device(None) == resolve_device("cpu") == torch.device("cpu")


def test_auto_and_indices_with_two_gpus(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"--device='cuda:2': only 2 CUDA device\(s\) visible"):
        resolve_device("cuda:2", option="--device")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_without_cuda_names_the_option(no_cuda, device):
    with pytest.raises(ConfigError) as info:
        resolve_device(device, option="--device")
    assert isinstance(info.value, DetkitError)
    assert str(info.value).startswith(f"--device={str(device)!r} asks for CUDA, but this machine")
    assert "use --device='cpu', or 'auto' for CUDA only when available" in str(info.value)


@pytest.mark.parametrize(
    "device, problem",
    [("gpu", "is not a device"), ("meta", "detkit runs on auto, cpu, cuda, cuda:<index>")],
)
def test_other_values_list_the_valid_ones(device, problem):
    with pytest.raises(ConfigError, match=problem):
        resolve_device(device, option="--device")
