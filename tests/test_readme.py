"""The README and the documentation's guides work for a new user on a fresh machine.

* Every ```python block of README.md, docs/index.md and docs/guide/*.md runs as pasted: alone, in a
  fresh namespace (each block brings its own imports, model and data), from an empty working
  directory (the training example writes its run directory there). Blocks that import Lightning
  (not a dependency) are skipped where it is not installed. The method pages' snippets are
  fragments of a training loop (``loader``, ``model`` of your own) and are not run.
* No command in README.md or docs/**/*.md points at the maintainers' data (``../shared/...``): users
  get placeholders (``/path/to/...``) or data they can download.
* ``.ci/run`` installs into a virtual environment it creates, then runs exactly the README's test
  command (the second line of the setup block).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: the pages whose python blocks run as pasted: the README, the site's front page and its guides
RUN_PAGES = [README, ROOT / "docs" / "index.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]

pytestmark = pytest.mark.usefixtures("one_thread")


def _python_blocks(page: Path = README) -> list[tuple[str, str]]:
    """``(id, code)`` of every ```python block of ``page``, the id named after the section it is in."""
    blocks, section, fence, code = [], "top", None, []
    for line in page.read_text().splitlines(keepends=True):
        if fence is None and line.startswith("```"):
            fence, code = line.strip(), []
        elif fence is not None and line.strip() == "```":
            if fence == "```python":
                blocks.append((f"{len(blocks)}-{section}", "".join(code)))
            fence = None
        elif fence is not None:
            code.append(line)
        elif line.startswith("#"):
            section = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
    return blocks


BLOCKS = [(page, f"{page.stem}-{name}", code) for page in RUN_PAGES for name, code in _python_blocks(page)]


def test_the_readme_and_the_guides_have_python_examples() -> None:
    assert len(_python_blocks(README)) >= 2
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize(("page", "code"), [(page, code) for page, _, code in BLOCKS],
                         ids=[name for _, name, _ in BLOCKS])
def test_python_example_runs_as_pasted(page: Path, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if re.search(r"^import lightning|^from lightning", code, flags=re.M):
        pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(code, str(page), "exec"), namespace)  # noqa: S102 - the documentation's own code
    except Exception as e:  # pragma: no cover - the failure message is the point
        pytest.fail(f"{page.relative_to(ROOT)} example failed with {type(e).__name__}: {e}\n---\n{code}")


def _user_docs() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", _user_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_documented_command_needs_the_maintainers_data(path: Path) -> None:
    lines = [f"{path.name}:{i}: {line}" for i, line in enumerate(path.read_text().splitlines(), 1)
             if "../shared" in line]
    assert lines == []


def _readme_setup_commands() -> list[str]:
    setup = re.search(r"^## Setup.*?^```bash\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    assert setup is not None, "README.md has no setup section with a bash block"
    return setup.group(1).strip().splitlines()


def test_ci_runs_the_readme_test_command_in_a_fresh_virtual_environment() -> None:
    test_command = _readme_setup_commands()[1]
    assert test_command == "python -m pytest -q"
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line.strip() for line in script if not line.lstrip().startswith("#")]
    assert test_command in commands  # exactly the README's command, as a line of its own
    venv = next(i for i, c in enumerate(commands) if re.search(r"-m venv\b", c))
    install = next(i for i, c in enumerate(commands) if 'pip install -e ".[test]"' in c)
    assert venv < install < commands.index(test_command)
