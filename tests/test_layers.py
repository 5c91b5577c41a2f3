"""The package keeps the layers ARCHITECTURE.md writes down: no import up a layer, none between siblings, no cycle.

What it can catch: a module importing a higher layer (inside a function too), training importing prediction
or the reverse, an import cycle, a module taking another's private name, and a module missing from (or
stale in) ARCHITECTURE.md. The checker runs on the real package, and on a small package made here with a
deliberate upward import and a deliberate cycle, to show that it fails on each.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("code_metrics", ROOT / "scripts" / "code_metrics.py")
code_metrics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(code_metrics)


def read_layers(text: str) -> list[tuple[int, str, list[str]]]:
    """``(level, row name, module patterns)`` for each row of the *Layers* table."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1], re.findall(r"`([^`]+)`", cells[2])))
    return rows


def read_module_map(text: str) -> list[str]:
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\|\s*`([^`]+)`\s*\|", section, flags=re.M)


def row_of(module: str, rows) -> list[tuple[int, str]]:
    return [(level, name) for level, name, patterns in rows if any(fnmatch.fnmatchcase(module, p) for p in patterns)]


def layer_violations(package: Path, architecture: str) -> list[str]:
    """Every broken rule, one message each, naming both modules (empty when the package keeps its layers)."""
    modules = code_metrics.load_package(package)
    rows = read_layers(architecture)
    problems = []
    where = {}
    for name in modules:
        found = row_of(name, rows)
        if len(found) != 1:
            problems.append(f"{name} is in {len(found)} rows of ARCHITECTURE.md's Layers table (expected 1)")
        else:
            where[name] = found[0]
    known = set(modules)
    graph = {}
    for name, (path, tree) in modules.items():
        graph[name] = set()
        for target, line, names in code_metrics.import_edges(tree, name, path.name == "__init__.py", known):
            if target not in known or target == name:
                continue
            graph[name].add(target)
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and not (target.startswith(name + ".") or name.startswith(target + ".")):
                problems.append(f"{name} imports the private name(s) {', '.join(private)} of {target} "
                                f"({path.name}:{line})")
            if name not in where or target not in where:
                continue
            (level, row), (t_level, t_row) = where[name], where[target]
            if t_level > level:
                problems.append(f"{name} (layer {level} {row}) imports {target} (layer {t_level} {t_row}), "
                                f"a higher layer ({path.name}:{line})")
            elif t_level == level and t_row != row:
                problems.append(f"{name} ({row}) imports {target} ({t_row}): sibling layers never import each "
                                f"other ({path.name}:{line})")
    for cycle in code_metrics.cycles(graph):
        problems.append(f"import cycle between {' and '.join(cycle)}")
    return problems


def test_the_package_keeps_its_layers():
    problems = layer_violations(ROOT / "featx", (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_the_module_map_lists_every_module_once_and_nothing_else():
    listed = read_module_map((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    modules = set(code_metrics.load_package(ROOT / "featx"))
    assert sorted(m for m in set(listed) if listed.count(m) > 1) == []
    assert sorted(modules - set(listed)) == [], "modules missing from ARCHITECTURE.md's module map"
    assert sorted(set(listed) - modules) == [], "ARCHITECTURE.md's module map names modules that do not exist"


TOY_ARCHITECTURE = """
## Layers

| # | layer | modules | may rely on |
|---|---|---|---|
| 0 | base | `featx`, `featx.low` | - |
| 1 | left | `featx.left` | base |
| 1 | right | `featx.right` | base |
| 2 | top | `featx.top`, `featx.top2` | everything |
"""


def toy_package(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "featx"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, body in files.items():
        (package / f"{name}.py").write_text(body)
    return package


def test_a_clean_toy_package_passes(tmp_path):
    package = toy_package(tmp_path, {"low": "", "left": "from featx import low\n", "right": "import featx.low\n",
                                     "top": "from featx.left import x\n", "top2": "from featx import top\n"})
    assert layer_violations(package, TOY_ARCHITECTURE) == []


@pytest.mark.parametrize("files, expected", [
    ({"low": "def f():\n    from featx.top import x\n", "left": "", "right": "", "top": "", "top2": ""},
     "featx.low (layer 0 base) imports featx.top (layer 2 top), a higher layer (low.py:2)"),
    ({"low": "", "left": "from featx.right import y\n", "right": "", "top": "", "top2": ""},
     "featx.left (left) imports featx.right (right): sibling layers never import each other (left.py:1)"),
    ({"low": "", "left": "", "right": "", "top": "from featx import top2\n",
      "top2": "def g():\n    import featx.top\n"},
     "import cycle between featx.top and featx.top2"),
    ({"low": "", "left": "from featx.low import _hidden\n", "right": "", "top": "", "top2": ""},
     "featx.left imports the private name(s) _hidden of featx.low (left.py:1)"),
    ({"low": "", "left": "", "right": "", "top": "", "top2": "", "stray": ""},
     "featx.stray is in 0 rows of ARCHITECTURE.md's Layers table (expected 1)"),
])
def test_the_checker_fails_on_an_upward_import_a_sibling_import_a_cycle_and_a_stray_module(tmp_path, files,
                                                                                          expected):
    assert layer_violations(toy_package(tmp_path, files), TOY_ARCHITECTURE) == [expected]


def test_former_import_paths_still_give_the_same_objects():
    """Old import paths stay for one release as thin re-exports of the new homes."""
    import featx.baselines
    import featx.finetune
    import featx.fit
    from featx import prediction, training
    from featx.training import networks, recipes

    assert featx.fit.fit_head.__wrapped__ is training.fit_head and featx.fit.predict is prediction.predict
    assert featx.fit.sweep.__wrapped__ is training.sweep
    assert featx.fit.labelled_codes.__wrapped__ is training.labelled_codes
    assert featx.finetune.finetune.__wrapped__ is training.finetune and featx.finetune.get_recipe is recipes.get_recipe
    assert featx.finetune.predict_finetuned is prediction.predict_keras
    assert featx.baselines.train_baseline.__wrapped__ is training.train_baseline
    assert featx.baselines.build_baseline is networks.build_baseline


def test_the_former_paths_still_take_arguments_in_their_former_order(recwarn):
    """``featx.fit.fit_head(data, backbone, taps, head, pooling, ...)`` names the later ones, with a warning."""
    from featx.compat import positional

    def fit(data, backbone="b", taps="t", head="h", *, pooling="avg", dtype="float32"):
        return (data, backbone, taps, head, pooling, dtype)

    old = positional(fit, ("data", "backbone", "taps", "head", "pooling", "dtype"))
    assert old("d", "m", "p", "logistic", "max") == ("d", "m", "p", "logistic", "max", "float32")
    assert any(issubclass(w.category, FutureWarning) and "pooling" in str(w.message) for w in recwarn)
    assert old("d", dtype="float16") == ("d", "b", "t", "h", "avg", "float16")
    with pytest.raises(TypeError, match="multiple values for pooling"):
        old("d", "m", "p", "h", "max", pooling="avg")
    with pytest.raises(TypeError, match="at most 6 positional"):
        old("d", "m", "p", "h", "max", "float16", "extra")
