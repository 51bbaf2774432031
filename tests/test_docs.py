"""The documentation: the site builds with --strict (no broken link, anchor or page), the configuration
reference is what the code accepts, and the README's table of where to read on points at real pages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from openpose_ray.config_loader import dotted_keys
from openpose_ray.config_reference import reference_markdown, sections

REPO_ROOT = Path(__file__).resolve().parent.parent


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, env=env, timeout=300)


def test_the_site_builds_strictly_and_a_broken_link_would_fail_it(tmp_path):
    done = _build(REPO_ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()
    assert (tmp_path / "site" / "clusters" / "index.html").is_file()
    # the same docs with one link to a page that is not there: the build fails, naming it
    copy = tmp_path / "copy"
    shutil.copytree(REPO_ROOT / "docs", copy / "docs")
    shutil.copy(REPO_ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    with open(copy / "docs" / "guide.md", "a") as page:
        page.write("\nSee [the old page](no-such-page.md).\n")
    broken = _build(copy, tmp_path / "broken")
    assert broken.returncode != 0 and "no-such-page.md" in broken.stderr


def test_the_configuration_reference_is_what_the_code_accepts():
    """docs/configuration.md is written from the dataclasses (python -m openpose_ray.config_reference --write
    docs/configuration.md): it lists every key the loader takes, each with its docstring entry."""
    assert (REPO_ROOT / "docs" / "configuration.md").read_text() == reference_markdown(), \
        "docs/configuration.md is stale: python -m openpose_ray.config_reference --write docs/configuration.md"
    listed = [key for _, _, rows in sections() for key, *_ in rows]
    assert sorted(listed) == sorted(dotted_keys())
    text = (REPO_ROOT / "docs" / "configuration.md").read_text()
    assert "| `inference.precision` | fp32 &#124; tf32 &#124; bf16 &#124; fp16 &#124; auto | `auto` |" in text


def test_the_readme_is_short_and_its_links_lead_to_pages():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 120
    assert "bash scripts/setup.sh" in readme and ".venv/bin/python -m pytest -q" in readme  # the two commands CI runs
    targets = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(targets) >= 10
    for target in targets:
        assert (REPO_ROOT / target).is_file(), target
    nav = (REPO_ROOT / "mkdocs.yml").read_text()
    for page in (REPO_ROOT / "docs").glob("*.md"):
        assert page.name in nav, f"{page.name} is not in mkdocs.yml's nav"
