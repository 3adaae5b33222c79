"""The documentation site: it builds without a warning, its CLI reference lists every subcommand,
every method has a page with its gallery picture, and ``mixlab gallery`` writes the pictures."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mixlab import registry
from mixlab.cli import build_parser, main
from mixlab.engine.gallery import MIXED_VIEWS, build_gallery, gallery_methods

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PNG = b"\x89PNG\r\n\x1a\n"


def _hooks():
    spec = importlib.util.spec_from_file_location("mixlab_docs_hooks", DOCS / "hooks" / "mixlab_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ CLI reference
def test_the_cli_reference_documents_every_subcommand_with_its_help() -> None:
    hooks = _hooks()
    commands = hooks.subcommands(build_parser())
    assert {"train", "pretrain", "eval", "show", "gallery", "list", "bench"} <= set(commands)
    reference = hooks.cli_reference()
    for name, parser in commands.items():
        assert f"## mixlab {name}\n" in reference
        for action in parser._actions:  # every flag of every subcommand, as --help prints it
            for flag in action.option_strings:
                assert flag in reference, f"mixlab {name} {flag} missing from the CLI reference"
    page = (DOCS / "cli.md").read_text()
    assert hooks.MARKER in page  # the page the reference is generated into
    assert "cli.md" in (ROOT / "mkdocs.yml").read_text()


def test_docstring_roles_render_as_plain_code() -> None:
    html = 'see :class:<code>~mixlab.core.result.MixResult</code> and :func:<code>pair_index</code>'
    assert _hooks().on_page_content(html, None, None, None) == (
        "see <code>~mixlab.core.result.MixResult</code> and <code>pair_index</code>")


# ------------------------------------------------------------------------------------ the README
def test_the_readme_is_a_front_page_whose_links_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 20  # it links into the site: guides, method pages, results
    assert [link for link in local if not (ROOT / link).exists()] == []
    for page in ("docs/methods/automix.md", "docs/guide/own-loop.md", "docs/results/index.md"):
        assert page in local


# ------------------------------------------------------------------------------------ method pages
def _method_pages(folders: tuple[str, ...] = ("methods",)) -> str:
    return "\n".join(p.read_text() for folder in folders for p in sorted((DOCS / folder).glob("*.md")))


def test_every_registered_method_is_named_on_a_method_or_guide_page() -> None:
    pages = _method_pages(("methods", "guide"))
    missing = [name for name in registry.METHODS if name != "vanilla" and f"`{name}`" not in pages]
    assert missing == []


def test_every_method_page_has_a_defaults_table_generated_from_the_registry() -> None:
    hooks = _hooks()
    for page in sorted((DOCS / "methods").glob("*.md")):
        markers = hooks.METHODS_MARKER.findall(page.read_text())
        assert markers, f"{page.name} has no <!-- mixlab-methods: ... --> table"
        for names in markers:
            table = hooks.method_table(names.split())  # raises on a name that is not registered
            for name in names.split():
                defaults = ", ".join(f"`{k}={v}`" for k, v in registry.METHODS[name].defaults.items()) or "none"
                assert f"{name}` | {registry.METHODS[name].description} |" in table and defaults in table
    with pytest.raises(ValueError, match="unknown method.*cutmixx"):
        hooks.method_table(["cutmix", "cutmixx"])


def test_the_gallery_pictures_the_method_pages_show_exist_and_are_small() -> None:
    links = sorted(set(re.findall(r"\]\(\.\./gallery/([^)]+\.png)\)", _method_pages())))
    assert len(links) >= 20
    for name in links:
        path = DOCS / "gallery" / name
        assert path.is_file(), f"docs/gallery/{name} is shown by a method page but missing: run mixlab gallery"
        assert path.read_bytes()[:8] == PNG
        assert path.stat().st_size < 200_000
    assert set(links) <= {f"{name}.png" for name in gallery_methods()}


# ------------------------------------------------------------------------------------ the gallery
def test_gallery_command_draws_two_methods_on_the_same_batch(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gallery"
    assert main(["gallery", "--out", str(out), "--methods", "mixup,cutmix", "--n", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cutmix.png", "index.md", "mixup.png"]
    for name in ("mixup", "cutmix"):
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == PNG and len(png) < 200_000
    index = (out / "index.md").read_text()
    assert "![mixup](mixup.png)" in index and "![cutmix](cutmix.png)" in index
    assert "mixlab gallery --out docs/gallery --n 2 --seed 0" in index
    assert "wrote" in capsys.readouterr().out


def test_gallery_of_a_self_supervised_view_applies_its_settings(tmp_path: Path) -> None:
    (entry,) = build_gallery(tmp_path, ["mae+cropmix"], n=2)
    assert MIXED_VIEWS["mae+cropmix"][0] == "mae"
    assert entry.path == tmp_path / "mae+cropmix.png" and entry.path.is_file()
    assert entry.what != "no mixing"  # the CropMix input mixes; MAE's default input does not


def test_gallery_refuses_unknown_names_before_writing_anything(tmp_path: Path) -> None:
    out = tmp_path / "gallery"
    with pytest.raises(ValueError, match=r"unknown method\(s\) 'cutmixx'.*valid names: .*cutmix"):
        build_gallery(out, ["mixup", "cutmixx"])
    with pytest.raises(ValueError, match="at least one method"):
        build_gallery(out, [])
    assert not out.exists()


def test_gallery_covers_every_registered_method_but_vanilla() -> None:
    names = gallery_methods()
    drawn = {MIXED_VIEWS.get(name, (name, ()))[0] for name in names}
    assert drawn == set(registry.METHODS) - {"vanilla"}
    assert len(names) == len(set(names))
    assert all(registry.is_self_supervised(method) for method, _ in MIXED_VIEWS.values())


# ------------------------------------------------------------------------------------ the site
@pytest.mark.slow
def test_the_site_builds_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "cli" / "index.html").read_text().count("mixlab gallery") >= 1
