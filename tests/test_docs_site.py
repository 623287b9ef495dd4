"""The documentation site builds with no warning, and the README stays a front page whose links work.

`mkdocs build --strict` fails on a page missing from the nav, a link to a missing page and a link to
a heading that does not exist (mkdocs.yml's `validation`), so a moved section cannot leave a dead
link behind. The README is read on GitHub and PyPI, outside MkDocs, so its links are checked here.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 400

# [text](target) and ![alt](target), and reference definitions: [name]: target
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
REFERENCE_LINK = re.compile(r"^\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def relative_links(markdown_text: str) -> list[str]:
    """Links to files of this repository (not URLs, not anchors on the same page), code blocks left out."""
    text = FENCE.sub("", markdown_text)
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def heading_anchors(markdown_file: Path) -> set[str]:
    """The ids MkDocs gives the headings of a page (GitHub gives the same for these headings)."""
    text = FENCE.sub("", markdown_file.read_text(encoding="utf-8"))
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE)
    return {slugify(re.sub(r"[`*]", "", heading), "-") for heading in headings}


def test_docs_site_builds_with_no_warning(tmp_path):
    site = tmp_path / "site"
    # Material's end-of-life banner is not a problem of this site: keep the log for real warnings.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
    assert (site / "index.html").is_file()
    assert (site / "performance" / "index.html").is_file()


def test_readme_stays_a_front_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move details into a page under docs/"
    )


def test_readme_links_point_at_existing_files_and_headings():
    links = relative_links(README.read_text(encoding="utf-8"))
    assert links, "README.md links to no documentation page"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve()
        if not target.is_file():
            broken.append(f"{link}: no file {path}")
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
            broken.append(f"{link}: no heading '#{anchor}' in {path}")
    assert not broken, "README.md links that lead nowhere:\n" + "\n".join(broken)
