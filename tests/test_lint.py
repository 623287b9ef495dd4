"""The code passes the linter with the settings in pyproject.toml, and every ``noqa`` says why."""

import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: A noqa comment names its codes, then a dash and the reason (``noqa: CODE - why``).
NOQA = re.compile(r"#\s*noqa\b(?P<rest>.*)$")
EXPLAINED = re.compile(r":\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*\s+-\s+\S")


def _ruff() -> str | None:
    beside_python = Path(sys.executable).with_name("ruff")
    return str(beside_python) if beside_python.exists() else shutil.which("ruff")


def test_ruff_finds_nothing():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    result = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _unexplained(text: str, name: str) -> list[str]:
    found = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type != tokenize.COMMENT:
            continue  # one inside a string is not a comment
        if (match := NOQA.search(token.string)) and not EXPLAINED.match(match.group("rest")):
            found.append(f"{name}:{token.start[0]}: {token.line.strip()}")
    return found


def test_every_noqa_names_its_rule_and_says_why():
    files = [path for folder in ("quadra_ad", "tests", "scripts") for path in (ROOT / folder).rglob("*.py")]
    offending = [line for path in sorted(files)
                 for line in _unexplained(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert offending == []


def test_the_noqa_check_tells_an_explained_noqa_from_a_bare_one():
    assert _unexplained("x = 1  # noqa: F401 - re-exported\n", "a.py") == []
    assert _unexplained("x = 1  # noqa: F401, E402 - after the path setup\n", "a.py") == []
    assert _unexplained("x = 1  # noqa: F401\n", "a.py") == ["a.py:1: x = 1  # noqa: F401"]
    assert _unexplained("x = 1  # noqa\n", "a.py") == ["a.py:1: x = 1  # noqa"]
