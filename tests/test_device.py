"""`device: auto` picks CUDA, then Apple's MPS, then the CPU; a device that is not here is refused naming its key."""

import pytest
import torch

from src.runs import DEVICES, RunError, select_device


def test_auto_picks_the_first_device_present():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device("auto", "train.device") == torch.device(expected)
    assert select_device("cpu", "train.device") == torch.device("cpu")


@pytest.mark.parametrize("name", [name for name in ("cuda", "mps") if name in DEVICES])
def test_a_device_that_is_not_here_is_refused(name):
    present = torch.cuda.is_available() if name == "cuda" else torch.backends.mps.is_available()
    if present:
        pytest.skip(f"a {name} device is present here")
    with pytest.raises(RunError, match=rf"^x.yaml: train.device is '{name}' but no {name.upper()} device"):
        select_device(name, "x.yaml: train.device")


def test_an_unknown_device_is_named():
    with pytest.raises(RunError, match=r"--device must be one of \['auto', 'cpu', 'cuda', 'mps'\], got 'tpu'"):
        select_device("tpu", "--device")
