"""provision.py's template and registry-auth commands: `template-create`, `template-update`,
`template-show` (REST v2 templates of the appliance) and `registry-auth add|list|remove`
(RunPod container registry auths, for a private image).

A template carries the image's ports (settings.pod_ports), its /workspace volume, disk sizes and
the env the appliance wants on RunPod: TEMPLATE_ENV (values that differ from the env contract's
defaults) and, for each secret variable (settings.is_secret_name), never a value but RunPod's
secret reference `{{ RUNPOD_SECRET_<VAR> }}`: the commands list the secrets to create. A
registry password is read from stdin or a named variable, never from argv, and never printed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import settings
from appliance.runpod import PodSpec, RunpodClient, Template, TemplateSpec
from host_tools.cli import CliError, Env, confirm, emit, find_by_ref, table
from host_tools.pod_args import parse_env_pairs
from host_tools.pods import find_registry

# What a template sets beyond the env contract's defaults: a RunPod pod bills while it idles, so
# the idle watchdog runs (AUTOSTOP_IDLE_MINUTES, default 30).
TEMPLATE_ENV = {"START_IDLE_WATCHDOG": "1"}
# Secrets every template refers to: the inference API is public through RunPod's HTTP proxy.
REQUIRED_SECRETS = ("INFERENCE_API_TOKEN",)
# Referred to as soon as the env names a Hub repository (artifact sync, datasets).
HF_SECRET = "HF_TOKEN"
HF_REPOS = ("HF_REPO_ID", "HF_DATASET_REPO_ID")
VOLUME_PATH = str(settings.default(settings.RuntimeSettings, "WORKSPACE_DIR"))
SECRET_REF = re.compile(r"\{\{\s*RUNPOD_SECRET_([A-Za-z0-9_-]+)\s*\}\}")
CONSOLE_HINT = ("RunPod console > Secrets > Create Secret (the name as listed, the value "
                "yours); in localpod: POST /_localpod/secrets {\"name\", \"value\"}")

AddCommand = Callable[[str, str, Callable[[Env, argparse.Namespace], int]],
                      argparse.ArgumentParser]


def secret_ref(name: str) -> str:
    return "{{ RUNPOD_SECRET_" + name + " }}"


@dataclass(frozen=True)
class NeededSecret:
    """A RunPod secret a template refers to; `value_in`: the env file that held its value
    (not sent)."""

    name: str
    variables: tuple[str, ...]
    value_in: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "variables": list(self.variables),
                "value_in": self.value_in or None}


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (# comments, blank lines; one pair of surrounding quotes removed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--from-env {path}: {exc.strerror}", 2) from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pair = parse_env_pairs([line], None, flag=f"{path}:{number}")
        for key, value in pair.items():
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[key] = value
    return values


def with_references(env: dict[str, str], from_file: dict[str, str], file_name: str,
                    required: tuple[str, ...]) -> tuple[dict[str, str], list[NeededSecret]]:
    """The env to send, every secret variable (and each of `required`) a secret reference,
    and the secrets it needs."""
    out = dict(env)
    for name in required:
        out.setdefault(name, secret_ref(name))
    for var, value in list(out.items()):
        if settings.is_secret_name(var) and not SECRET_REF.fullmatch(value.strip()):
            out[var] = secret_ref(var)
    needed: dict[str, list[str]] = {}
    for var, value in out.items():
        for name in SECRET_REF.findall(value):
            needed.setdefault(name, []).append(var)
    secrets = [NeededSecret(name, tuple(variables),
                            file_name if any(settings.is_secret_name(v) and from_file.get(v)
                                             and not SECRET_REF.search(from_file[v])
                                             for v in variables) else "")
               for name, variables in sorted(needed.items())]
    return out, secrets


def needed_secrets(env: dict[str, str]) -> list[NeededSecret]:
    return with_references(env, {}, "", ())[1]


def wanted_env(base: dict[str, str], args: argparse.Namespace, defaults: bool
               ) -> tuple[dict[str, str], list[NeededSecret]]:
    """`base` (TEMPLATE_ENV for a new template, the template's env on update), then
    --from-env, then --env; secrets as references."""
    from_file = read_env_file(args.from_env) if args.from_env else {}
    flags = parse_env_pairs(args.env or [], None)
    for var, value in flags.items():
        if settings.is_secret_name(var) and value and not SECRET_REF.fullmatch(value.strip()):
            raise CliError(f"--env {var}: a secret's value does not go on the command line; "
                           "put it in a --from-env file (it becomes a secret reference) or "
                           f"give --env '{var}={secret_ref(var)}'", 2)
    env = {**base, **from_file, **flags}
    required: tuple[str, ...] = REQUIRED_SECRETS if defaults else ()
    if defaults and any(env.get(k) for k in HF_REPOS):
        required += (HF_SECRET,)
    return with_references(env, from_file, str(args.from_env or ""), required)


def check_sizes(disk_gb: int | None, volume_gb: int | None) -> None:
    if disk_gb is not None and disk_gb < 1:
        raise CliError(f"--disk-gb must be at least 1, not {disk_gb}", 2)
    if volume_gb is not None and volume_gb < 10:
        raise CliError(f"--volume-gb must be at least 10 (RunPod's minimum), not {volume_gb}", 2)


def find_template(client: RunpodClient, ref: str) -> Template:
    """The account's template whose id or name is `ref` (ids first; never an ambiguous name)."""
    return find_by_ref(client.list_templates(), ref, "template", "provision.py template-list")


def template_text(verb: str, t: Template, secrets: list[NeededSecret]) -> str:
    env = [f"{k}={v}" for k, v in sorted(t.env.items())] or ["-"]
    lines = [f"{verb} {t.name} (id {t.id})", f"  image     {t.image}",
             f"  ports     {','.join(t.ports)}",
             f"  disk      {t.disk_gb} GB container, {t.volume_gb} GB volume on "
             f"{t.volume_path or '-'}",
             f"  registry  {t.registry or '-'}", f"  env       {env[0]}",
             *(f"            {e}" for e in env[1:])]
    if secrets:
        width = max(len(s.name) for s in secrets)
        lines.append("secrets a pod from it needs (create each before the pod starts; "
                     f"{CONSOLE_HINT}):")
        for s in secrets:
            source = (f"its value is in {s.value_in}, which was not sent" if s.value_in
                      else "a value of your choice" if s.variables == (s.name,) else "")
            lines.append(f"  {s.name.ljust(width)}  for {', '.join(s.variables)}"
                         + (f" ({source})" if source else ""))
    return "\n".join(lines)


def emit_template(env: Env, args: argparse.Namespace, verb: str, t: Template,
                  secrets: list[NeededSecret]) -> None:
    emit(env, args.json, {"template": t.to_dict(), "secrets": [s.to_dict() for s in secrets]},
         template_text(verb, t, secrets))


# -- commands -------------------------------------------------------------------------------------


def cmd_template_create(env: Env, args: argparse.Namespace) -> int:
    check_sizes(args.disk_gb, args.volume_gb)
    template_env, secrets = wanted_env(dict(TEMPLATE_ENV), args, defaults=True)
    with env.client_factory() as client:
        registry = find_registry(client, args.registry_auth).id if args.registry_auth else None
        created = client.create_template(TemplateSpec(
            name=args.name, image=args.image, ports=list(settings.pod_ports()),
            env=template_env, disk_gb=args.disk_gb, volume_gb=args.volume_gb,
            volume_path=VOLUME_PATH, registry=registry))
    emit_template(env, args, "created template", created, secrets)
    return 0


def cmd_template_update(env: Env, args: argparse.Namespace) -> int:
    check_sizes(args.disk_gb, args.volume_gb)
    env_given = bool(args.env or args.from_env)
    if not (env_given or args.image or args.rename or args.disk_gb or args.volume_gb
            or args.registry_auth):
        raise CliError("nothing to change: give --image, --env, --from-env, --disk-gb, "
                       "--volume-gb, --registry-auth or --rename", 2)
    with env.client_factory() as client:
        found = find_template(client, args.template)
        new_env, secrets = wanted_env(found.env, args, defaults=False) if env_given \
            else (None, needed_secrets(found.env))
        registry = find_registry(client, args.registry_auth).id if args.registry_auth else None
        updated = client.update_template(found.id, TemplateSpec(
            name=args.rename or "", image=args.image or "", env=new_env, disk_gb=args.disk_gb,
            volume_gb=args.volume_gb, volume_path=found.volume_path or VOLUME_PATH,
            registry=registry))
    emit_template(env, args, "updated template", updated, secrets)
    return 0


def cmd_template_show(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        found = find_template(client, args.template)
        shown = client.get_template(found.id)
    emit_template(env, args, "template", shown, needed_secrets(shown.env))
    return 0


def read_password(env: Env, args: argparse.Namespace) -> str:
    """From the variable --password-env names, else stdin (a prompt on a terminal)."""
    if args.password_env:
        value = os.environ.get(args.password_env, "")
        where = f"the variable {args.password_env}"
    elif env.is_tty():
        value, where = getpass.getpass("registry password: "), "the prompt"
    else:
        value, where = sys.stdin.readline().rstrip("\r\n"), "stdin"
    if not value:
        raise CliError(f"no password: {where} gave none (pipe it on stdin, or name a variable "
                       "holding it with --password-env)", 2)
    return value


def cmd_registry_add(env: Env, args: argparse.Namespace) -> int:
    password = read_password(env, args)
    with env.client_factory() as client:
        created = client.create_registry(args.name, args.username, password)
    emit(env, args.json, created.to_dict(),
         f"added registry auth {created.name} (id {created.id}) for user {args.username}; use "
         f"it with `template-create --registry-auth {created.name}` or `provision "
         f"--registry-auth {created.name}`")
    return 0


def cmd_registry_list(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        auths = client.list_registries()
    emit(env, args.json, [r.to_dict() for r in auths],
         table([[r.id, r.name] for r in auths], ["ID", "NAME"]) if auths
         else "no registry auths")
    return 0


def cmd_registry_remove(env: Env, args: argparse.Namespace) -> int:
    with env.client_factory() as client:
        found = find_registry(client, args.auth)
        confirm(env, args.yes, f"Remove registry auth {found.name} ({found.id})? Templates and "
                "pods naming it can no longer pull their image.")
        client.delete_registry(found.id)
    emit(env, args.json, {**found.to_dict(), "removed": True},
         f"removed registry auth {found.name} (id {found.id})")
    return 0


# -- parser ---------------------------------------------------------------------------------------


def template_options(sp: argparse.ArgumentParser, creating: bool) -> None:
    sp.add_argument("--image", required=creating, metavar="REF",
                    help="the appliance image, e.g. ghcr.io/OWNER/NAME:TAG")
    sp.add_argument("--disk-gb", type=int, default=PodSpec.disk_gb if creating else None,
                    help="container disk" + (" (default %(default)s)" if creating else ""))
    sp.add_argument("--volume-gb", type=int, default=PodSpec.volume_gb if creating else None,
                    help=f"volume on {VOLUME_PATH}, kept on stop"
                    + (" (default %(default)s)" if creating else ""))
    sp.add_argument("--from-env", type=Path, metavar="FILE",
                    help="KEY=VALUE lines; a secret's value is not sent, it becomes a secret "
                    "reference")
    sp.add_argument("--env", action="append", metavar="K=V",
                    help="a variable (repeatable; after --from-env); secrets become references")
    sp.add_argument("--registry-auth", metavar="NAME|ID",
                    help="container registry auth for a private image")


def add_commands(add: AddCommand) -> None:
    """Register the template and registry-auth commands with provision.py's parser."""
    sp = add("template-create", "create a template of the appliance: its ports, /workspace "
             "volume, env defaults, secrets as RunPod secret references", cmd_template_create)
    sp.add_argument("name")
    template_options(sp, creating=True)
    sp = add("template-update", "change a template (env entries merge into its env)",
             cmd_template_update)
    sp.add_argument("template", metavar="NAME|ID")
    sp.add_argument("--rename", metavar="NAME", help="a new name")
    template_options(sp, creating=False)
    sp = add("template-show", "one template and the secrets a pod from it needs",
             cmd_template_show)
    sp.add_argument("template", metavar="NAME|ID")

    sp = add("registry-auth", "container registry auths (private images): add, list, remove",
             cmd_registry_list)
    verbs = sp.add_subparsers(dest="verb", required=True, metavar="VERB")
    add_sp = verbs.add_parser("add", help="add one; the password comes from stdin or "
                              "--password-env, never from the command line")
    add_sp.add_argument("name")
    add_sp.add_argument("--username", required=True)
    add_sp.add_argument("--password-env", metavar="VAR",
                        help="read the password from this environment variable")
    add_sp.set_defaults(func=cmd_registry_add)
    list_sp = verbs.add_parser("list", help="list them (never a password)")
    list_sp.set_defaults(func=cmd_registry_list)
    rm_sp = verbs.add_parser("remove", help="remove one")
    rm_sp.add_argument("auth", metavar="NAME|ID")
    rm_sp.add_argument("--yes", action="store_true", help="do not ask")
    rm_sp.set_defaults(func=cmd_registry_remove)
    for verb in (add_sp, list_sp, rm_sp):  # --json before or after the verb
        verb.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                          help="machine-readable output")
