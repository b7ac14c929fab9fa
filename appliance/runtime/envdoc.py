"""The pod's env docs generated from appliance/settings.py: image/env.example (every variable,
its default and doc, ready to paste into a RunPod template) and the Markdown table rendering that
docs/ENVIRONMENT.md uses for the pod's and (host_tools/envdoc.py) the workstation's variables;
and the migration table of the predecessor's variables (appliance/legacy_env.py) that
docs/ENVIRONMENT.md and the README show.

`python -m appliance.runtime.envdoc` rewrites image/env.example; `--check` fails when it is stale.
`python -m host_tools.envdoc` writes docs/ENVIRONMENT.md and image/env.example together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from appliance import legacy_env, settings

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / "image" / "env.example"
Groups = list[tuple[str, list[tuple[str, str, str]]]]


def group_name(klass: type) -> str:
    name = klass.__name__.removesuffix("Settings").removesuffix("Env")
    return {"Hf": "HF Hub", "Runpod": "RunPod", "Ssh": "SSH", "Path": "Paths",
            "LocalPod": "Local pod", "HostSsh": "SSH to pods"}.get(name, name)


def default_text(name: str, f: FieldInfo) -> str:
    """The default as an env value; '' when it is unset or depends on the machine."""
    extra = f.json_schema_extra
    if isinstance(extra, dict) and "doc_default" in extra:
        return str(extra["doc_default"])
    value = f.get_default()
    if value is None or settings.is_secret_name(name):
        return ""
    if value == settings.DEFAULT_REPO_DIR:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def variables(classes: Iterable[type[BaseSettings]] | None = None) -> Groups:
    """[(group, [(variable, default, doc), ...]), ...] of `classes` (default: the pod's settings
    classes) in definition order."""
    out = []
    for klass in settings.pod_settings_classes() if classes is None else classes:
        rows = [(name, default_text(name, f), (f.description or "").strip())
                for name, f in klass.model_fields.items()]
        out.append((group_name(klass), rows))
    return out


def markdown_table(groups: Groups) -> str:
    """One Markdown table: variable, default, meaning; each group named on its first row."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for group, rows in groups:
        for i, (name, default, doc) in enumerate(rows):
            shown = f"`{default}`" if default else ""
            label = f"**{group}**: " if i == 0 else ""
            cell = doc.replace("|", "\\|")
            lines.append(f"| `{name}` | {shown} | {label}{cell} |")
    return "\n".join(lines)


def migration_table() -> str:
    """The predecessor's variables: what each meant there and how it is read here."""
    lines = ["| predecessor's variable | read here as | meaning there | here |",
             "| --- | --- | --- | --- |"]
    for v in legacy_env.OLD_VARIABLES:
        new = "no effect" if v.new is None else f"`{v.new}`"
        there, here = (t.replace("|", "\\|") for t in (v.meaning, v.effect))
        lines.append(f"| `{v.name}` | {new} | {there} | {here} |")
    return "\n".join(lines)


def env_example() -> str:
    lines = [
        "# Every environment variable the pod reads, with its default; paste into a RunPod",
        "# template and change what you need. An empty value means the default (or unset).",
        "# Generated from appliance/settings.py by `python -m appliance.runtime.envdoc`;"
        " do not edit.",
    ]
    for group, rows in variables():
        lines += ["", f"# -- {group} --"]
        for name, default, doc in rows:
            lines += [f"# {doc}", f"{name}={default}"]
    return "\n".join(lines) + "\n"


def write_or_check(wanted: dict[Path, str], check: bool, command: str) -> int:
    """Write each stale file (or, with `check`, name them all and return 1)."""
    stale = []
    for path, text in wanted.items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            continue
        stale.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"stale: {names}; run `{command}`", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.runtime.envdoc", description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = p.parse_args(argv)
    return write_or_check({ENV_EXAMPLE: env_example()}, args.check,
                          "python -m appliance.runtime.envdoc")


if __name__ == "__main__":
    sys.exit(main())
