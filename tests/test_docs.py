"""The documentation is checked: the site builds, and every code block of the README and of the notebook
page runs.

What it can catch: a broken link or a docstring mkdocstrings cannot render (``mkdocs build --strict``), an
example that no longer runs because an API or option changed, a README command that fails on a fresh
folder.  Python blocks are executed in order in one namespace per page; shell blocks run their ``featx``
lines through the CLI, in a folder holding a tiny generated ``photos/`` (3 classes) and ``new-photos/``
(:mod:`newuser`, whose codes are cached once for the run).
A block preceded by ``<!-- illustrative: why -->`` is not run (installs, minutes-long routes); there are
few, and each says why.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from featx.cli import main
from newuser import newuser  # noqa: F401 -- the shared new user's folder (a fixture)

PAGES = [ROOT / "README.md", ROOT / "docs" / "notebook.md"]
BLOCK = re.compile(r"(?P<marker><!-- illustrative:[^>]*-->\s*\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)
MAX_ILLUSTRATIVE = 4


def blocks(page: Path):
    """(language, code, illustrative) of each fenced block."""
    return [(m["lang"], m["code"], bool(m["marker"])) for m in BLOCK.finditer(page.read_text(encoding="utf-8"))]


@pytest.fixture
def in_workdir(newuser, monkeypatch):  # noqa: F811
    """The new user's folder (photos/, new-photos/) as the working directory, its cache as $FEATX_CACHE."""
    monkeypatch.chdir(newuser)
    monkeypatch.setenv("FEATX_CACHE", str(newuser / "cache"))
    return newuser


def run_shell(code: str) -> None:
    for line in code.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        argv = shlex.split(line)
        assert argv[0] == "featx", f"not a featx command (mark the block illustrative, saying why): {line}"
        assert main(argv[1:]) == 0, line


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_code_block_runs(page, in_workdir, capsys):
    found = blocks(page)
    assert found, f"{page.name}: no code blocks found"
    assert sum(ill for _, _, ill in found) <= MAX_ILLUSTRATIVE, "too many blocks marked illustrative"
    namespace = {"__name__": "__docs__"}
    for lang, code, illustrative in found:
        if illustrative:
            compile(code, page.name, "exec") if lang == "python" else None  # still valid Python
            continue
        if lang == "python":
            exec(compile(code, page.name, "exec"), namespace)  # noqa: S102 -- the page's own example
        elif lang in ("bash", "sh", "console"):
            run_shell(code)
        else:
            pytest.fail(f"{page.name}: a ```{lang} block: give it a language this test runs, or mark it illustrative")
    out = capsys.readouterr().out
    if page.name == "README.md":
        assert "test accuracy" in out and (in_workdir / "predictions.csv").exists()


def test_readme_leads_with_the_two_commands_and_names_no_development_history():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = blocks(ROOT / "README.md")[0][1]
    assert first.splitlines()[0].startswith("bash scripts/demo.sh") and "bash scripts/test.sh" in first
    assert text.index("## In a notebook") < 3000 + text.index("## Five minutes")  # the API comes early
    for word in ("../shared", "session", "issue", "shared with"):
        assert word not in text, word


def test_docs_site_builds_strict(tmp_path):
    if shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists():
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]' installs it)")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -e '.[dev]')")
    exe = Path(sys.executable).parent / "mkdocs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(exe) if exe.exists() else "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "notebook" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "load_features" in api and "n_images" in api  # docstrings rendered, shapes included
