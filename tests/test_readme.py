"""The README's Python examples run as written.

Every ```python block of README.md is executed, in order, in one namespace that holds what the
prose around the fragments assumes (``model``, a small resnet, on ``device`` = the CPU). Two
kinds of block are not run here, each covered elsewhere: full training runs (``train(``:
tests/test_cli_train.py) and the two-alternatives DataLoader sketch (``MixCollate``:
tests/test_mixers.py's MixCollate tests).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = ("train(load_config", "collate_fn=mixlab.MixCollate")


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_examples_to_run() -> None:
    runnable = [b for b in _blocks() if not any(marker in b for marker in SKIP)]
    assert len(runnable) >= 4


@pytest.mark.usefixtures("one_thread")
def test_readme_python_examples_run_in_order(capsys) -> None:
    from mixlab.models import create_model

    torch.manual_seed(0)
    namespace = {"model": create_model("resnet_small", 10, width=8), "device": torch.device("cpu")}
    for block in _blocks():
        if any(marker in block for marker in SKIP):
            continue
        try:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
        except Exception as e:  # pragma: no cover - the failure message is the point
            pytest.fail(f"README example failed with {type(e).__name__}: {e}\n---\n{block}")
    assert torch.isfinite(namespace["loss"])  # the last examples end with a loss
