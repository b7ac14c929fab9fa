"""The forbidden arrows of docs/ARCHITECTURE.md, checked on the source.

Each rule names the files it covers and the modules they must not import (a module and all below
it), with exceptions. The walker reads every import with `ast`, those inside functions and
`importlib.import_module("...")` calls included, resolves relative imports, and reports the
importing file, the line and the forbidden module.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Rule:
    name: str
    files: tuple[str, ...]            # globs relative to the repository root
    forbidden: tuple[str, ...]        # dotted module prefixes
    allowed: tuple[str, ...] = ()     # exceptions inside `forbidden`
    words: tuple[str, ...] = ()       # words that must not appear anywhere in the file's text

    def paths(self) -> list[Path]:
        return sorted({p for pattern in self.files for p in ROOT.glob(pattern)})


RULES = [
    Rule("pod code never imports workstation code",
         ("appliance/**/*.py",), ("host_tools",)),
    Rule("the model knows no trainer, dataset tool or service",
         ("appliance/model/**/*.py",),
         tuple(f"appliance.{p}" for p in ("training", "datasets", "inference", "sync",
                                           "watchdog", "runtime", "hf", "runpod"))),
    Rule("inference imports nothing from training or datasets",
         ("appliance/inference/**/*.py",), ("appliance.training", "appliance.datasets")),
    Rule("the RunPod client knows no emulator",
         ("appliance/runpod.py", "appliance/runpod/**/*.py"), ("host_tools.emulators",),
         words=("localpod", "hubemu")),
    # The emulators stand alone; localpod's container backend needs the engine's commands only.
    Rule("the emulators use no other workstation code than the container engine",
         ("host_tools/emulators/**/*.py",), ("host_tools",),
         allowed=("host_tools.emulators", "host_tools.engine")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False
                     ) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in `source`, the module `module` (a package when
    `is_package`); `from M import n` yields M.n, since n may be a submodule."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(node.lineno, base if a.name == "*" else f"{base}.{a.name}")
                      for a in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            found.append((node.lineno, node.args[0].value))
    return found


def under(name: str, prefixes: tuple[str, ...]) -> str | None:
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def violations(rule: Rule, rel_path: str, source: str) -> list[str]:
    """One line per forbidden import or word: `file:line: imports NAME (forbidden: PREFIX)`."""
    path = ROOT / rel_path
    out = []
    for line, name in imported_modules(source, module_name(path), path.name == "__init__.py"):
        prefix = under(name, rule.forbidden)
        if prefix and not under(name, rule.allowed):
            out.append(f"{rel_path}:{line}: imports {name} (forbidden: {prefix})")
    for number, text in enumerate(source.splitlines(), 1):
        out += [f"{rel_path}:{number}: mentions {word!r}" for word in rule.words
                if word in text.lower()]
    return out


def check(rule: Rule) -> list[str]:
    return [v for p in rule.paths()
            for v in violations(rule, str(p.relative_to(ROOT)), p.read_text(encoding="utf-8"))]


# The modeldata branch moves the move encoding into appliance.model; until it is merged the
# predictor imports appliance.datasets.rows. Remove this marker after that merge.
@pytest.mark.parametrize("rule", [pytest.param(r, id=r.name) for r in RULES])
def test_no_forbidden_arrow(rule: Rule) -> None:
    assert rule.paths(), f"{rule.name}: no file matches {rule.files}"
    assert check(rule) == [], rule.name


def test_walker_finds_every_kind_of_import() -> None:
    source = (
        "import os\n"
        "import appliance.training.train as t\n"
        "from appliance.datasets import rows\n"
        "from . import features\n"
        "from ..inference.app import create_app\n"
        "def late():\n"
        "    from appliance.sync.once import sync_once\n"
        "    importlib.import_module('appliance.hf')\n"
    )
    assert imported_modules(source, "appliance.model.network") == [
        (1, "os"), (2, "appliance.training.train"), (3, "appliance.datasets.rows"),
        (4, "appliance.model.features"), (5, "appliance.inference.app.create_app"),
        (7, "appliance.sync.once.sync_once"), (8, "appliance.hf"),
    ]
    assert imported_modules("from .network import X\n", "appliance.model", is_package=True) == [
        (1, "appliance.model.network.X")]


def test_walker_reports_file_line_and_module() -> None:
    model = RULES[1]
    source = ("from appliance.model import vocab\n"
              "from appliance.atomic import atomic_write\n"
              "def f():\n"
              "    from ..training import train\n"
              "    import appliance.hf\n")
    assert violations(model, "appliance/model/network.py", source) == [
        "appliance/model/network.py:4: imports appliance.training.train "
        "(forbidden: appliance.training)",
        "appliance/model/network.py:5: imports appliance.hf (forbidden: appliance.hf)",
    ]
    # A prefix is a whole module name: appliance.hf does not cover appliance.hfx.
    assert violations(model, "appliance/model/network.py", "import appliance.hfx\n") == []


def test_walker_honours_exceptions_and_words() -> None:
    emulators, runpod = RULES[4], RULES[3]
    path = "host_tools/emulators/localpod/containers.py"
    assert violations(emulators, path, "from host_tools import engine\n"
                                       "from host_tools.emulators.localpod.state import P\n"
                                       "from host_tools.image import remove_commands\n") == [
        f"{path}:3: imports host_tools.image.remove_commands (forbidden: host_tools)"]
    assert violations(runpod, "appliance/runpod/rest.py",
                      "'''Talks to RunPod.'''\nURL = 'http://LocalPod'\n") == [
        "appliance/runpod/rest.py:2: mentions 'localpod'"]


def documented_parts() -> list[str]:
    """The paths the parts table of docs/ARCHITECTURE.md names, with `{a,b}` and module lists
    (`` `bootstrap`, `config` `` after a package) expanded."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("## The parts", 1)[1].split("\n## ", 1)[0]
    paths: list[str] = []
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        first, owns = line.split(" | ")[0:2]
        for spec in re.findall(r"`([^`]+)`", first):
            head, _, rest = spec.partition("{")
            names, _, tail = rest.partition("}")
            paths += [head + n + tail for n in names.split(",")] if rest else [spec]
        if first.endswith("runtime/`"):
            paths += [f"appliance/runtime/{m}.py" for m in re.findall(r"`(\w+)`", owns)
                      if m != "templates"]
    return paths


def test_every_part_the_architecture_names_exists() -> None:
    parts = documented_parts()
    assert len(parts) > 30
    missing = [p for p in parts if not (ROOT / p).exists()]
    assert missing == []


def test_every_package_is_in_the_architecture() -> None:
    named = "\n".join(documented_parts())
    packages = sorted(str(p.parent.relative_to(ROOT)) + "/" for p in ROOT.glob("*/*/__init__.py")
                      if p.parts[-3] in ("appliance", "host_tools"))
    assert [p for p in packages if p not in named] == []
