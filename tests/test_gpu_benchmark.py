"""``benchmarks/gpu.py`` runs, on the CPU at the tiniest setting, so that the script cannot rot."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
TINIEST = ["--device", "cpu", "--model", "resnet_small", "--image-size", "16", "--batch-size", "4", "--steps", "1",
           "--windows", "1", "--warmup", "2", "--loader-batches", "1", "--workers", "0", "--threads", "1"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH"))
                                                       if p)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def _script():
    """The script as a module (registered first: its dataclasses look their module up)."""
    if "gpu_benchmark" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
        sys.modules["gpu_benchmark"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["gpu_benchmark"]


def test_gpu_benchmark_on_the_cpu_writes_a_cpu_table(tmp_path):
    """Classification methods, AutoMix (the anchor's note), a self-supervised framework (its views),
    the compiled variant (backend ``eager``: dynamo without code generation, seconds)."""
    out = tmp_path / "table.md"
    done = _run(*TINIEST, "--methods", "automix,mocov3", "--compile", "vanilla,automix", "--compile-backend", "eager",
                "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert text in done.stdout
    assert text.startswith("# Step cost of every method on a CPU: ") and "GPU" not in text.splitlines()[0]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert list(rows) == ["vanilla", "mixup", "automix", "mocov3"]  # the references first, always
    assert "failed" not in text and "not run" not in text
    assert rows["vanilla"][4] == "1.00" and rows["mixup"][5] == "1.00"  # ratios to vanilla, to mixup
    assert rows["mocov3"][2] == "4 x (2x16²)" and rows["automix"][2] == "4x3x16²"
    for name, cells in rows.items():
        assert float(cells[3]) > 0 and float(cells[6]) > 0, name  # ms/step, images/s
        assert cells[7] == "-"  # no CUDA peak memory on the CPU
        compiled = name in ("vanilla", "automix")
        assert (cells[8] != "-") == compiled, name
    assert rows["vanilla"][9] == "1.00" and float(rows["automix"][9]) > 0
    assert "AutoMix measured here:" in text and "on a CPU" in text


def test_gpu_benchmark_refuses_what_it_cannot_measure(tmp_path):
    done = _run(*TINIEST, "--methods", "mixupp", "--out", str(tmp_path / "t.md"))
    assert done.returncode == 2 and "--methods: unknown mixupp" in done.stderr
    done = _run("--device", "tpu")
    assert done.returncode == 2 and "--device must be cuda, cuda:N or cpu, got 'tpu'" in done.stderr
    if not torch.cuda.is_available():
        done = _run("--methods", "vanilla")
        assert done.returncode == 2 and "no CUDA device here: pass --device cpu" in done.stderr
    assert not (tmp_path / "t.md").exists()


def test_the_default_file_names_the_kind_of_device():
    gpu = _script()
    path = gpu.default_out(torch.device("cpu"))
    assert path.parent == ROOT / "docs" / "benchmarks" and path.name.startswith("cpu-") and path.suffix == ".md"
    assert gpu.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


@pytest.mark.parametrize("batch, text", [
    ((torch.zeros(8, 3, 32, 32), None), "8x3x32²"),
    (([torch.zeros(8, 3, 32, 32)] * 2 + [torch.zeros(8, 3, 16, 16)] * 6, None), "8 x (2x32² + 6x16²)"),
])
def test_inputs_are_described_as_the_method_gets_them(batch, text):
    assert _script().describe_inputs(batch) == text
