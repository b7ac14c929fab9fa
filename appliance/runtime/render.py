"""Settings -> the pod's config files: supervisord.conf, one program file each, sshd_config.

Pure (no I/O but reading the templates), so golden tests pin the output; the bootstrap writes the
files where `Layout` says. The templates are supervisord.conf.d/ at the repository's top level,
installed with the package as appliance/runtime/templates (a symlink there in the source tree),
and read through importlib.resources.
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from appliance import legacy_env, settings
from appliance.runtime.config import (
    HOST_KEY_TYPES,
    LOGIN_SHELL,
    SYSTEM_PATH,
    Layout,
    PodConfig,
    strip_credentials,
)

TEMPLATES = files("appliance.runtime") / "templates"
# Order is start order (supervisord priority); sshd stops last.
PROGRAM_FILES = {
    "fatal-reviver": "00-fatal-reviver.conf",
    "sshd": "10-sshd.conf",
    "inference": "20-inference.conf",
    "jupyter": "30-jupyter.conf",
    "hf-sync": "40-hf-sync.conf",
    "idle-watchdog": "50-idle-watchdog.conf",
}
# Login shells get these besides the settings variables that are set (never a secret).
EXTRA_SHELL_VARS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                    "NVIDIA_DRIVER_CAPABILITIES", "TZ", "LANG", "LC_ALL")


class RenderError(ValueError):
    """A value that cannot be written into a config file safely, named."""


@dataclass(frozen=True)
class Rendered:
    text: str
    mode: int


@dataclass(frozen=True)
class Plan:
    """Which programs run, and why any enabled one is left out."""

    programs: tuple[str, ...]
    left_out: Mapping[str, str]


def plan(services: settings.ServiceSettings, torch_ok: bool,
         max_hours: float | None = None, uploads: bool = True) -> Plan:
    """`max_hours` (AUTOSTOP_MAX_HOURS): the watchdog runs for its hard cap alone; `uploads`
    False (a cluster node other than the primary) leaves hf-sync out."""
    wanted = {
        "fatal-reviver": True,
        "sshd": services.START_SSHD,
        "inference": services.START_INFERENCE_API,
        "jupyter": services.START_JUPYTER,
        "hf-sync": services.START_HF_SYNC,
        "idle-watchdog": services.START_IDLE_WATCHDOG or max_hours is not None,
    }
    left_out = {}
    if wanted["inference"] and not torch_ok:
        wanted["inference"] = False
        left_out["inference"] = "torch cannot be imported, so the inference API would crash-loop"
    if wanted["hf-sync"] and not uploads:
        wanted["hf-sync"] = False
        left_out["hf-sync"] = ("a cluster node other than the primary (NODE_RANK > 0): global "
                               "rank 0 writes the artifacts on the primary, which uploads them")
    return Plan(tuple(n for n, on in wanted.items() if on), left_out)


# -- escaping ---------------------------------------------------------------------------------

def _ini(value: str, what: str) -> str:
    """A value for a supervisord option: one line, no inline comment, '%' escaped."""
    if "\n" in value or "\r" in value:
        raise RenderError(f"{what}: {value!r} holds a line break; it cannot go into supervisord "
                          "config")
    for marker in (" ;", "\t;", " #", "\t#"):
        if marker in value:
            raise RenderError(f"{what}: {value!r} holds {marker.strip()!r} after a space, which "
                              "supervisord reads as a comment")
    return value.replace("%", "%%")


def _command(args: list[str], what: str) -> str:
    return _ini(" ".join(shlex.quote(a) for a in args), what)


def _environment(env: Mapping[str, str], what: str) -> str:
    for key, value in env.items():
        if '"' in value or "\\" in value:
            raise RenderError(f"{what}: {key}={value!r} holds a quote or backslash, which "
                              "supervisord's environment= cannot carry")
    return _ini(",".join(f'{k}="{v}"' for k, v in env.items()), what)


def _sshd_value(value: str, what: str) -> str:
    if any(c in value for c in '"\n\r'):
        raise RenderError(f"{what}: {value!r} holds a quote or line break; it cannot go into "
                          "sshd_config")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def _template(name: str, **values: str) -> str:
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    try:
        return string.Template(text).substitute(values)
    except KeyError as exc:
        raise RenderError(f"template {TEMPLATES / name} uses ${exc.args[0]}, which render.py "
                          "does not fill in") from None


# -- the files ----------------------------------------------------------------------------------

def _user_env(layout: Layout, **extra: str) -> dict[str, str]:
    return {"HOME": str(layout.user_home), "USER": layout.user, "LOGNAME": layout.user,
            "SHELL": LOGIN_SHELL, **extra}


def _hf_token_path(layout: Layout, secret_names: frozenset[str]) -> dict[str, str]:
    """huggingface_hub reads the token from this file, so it needs no HF_TOKEN in the env."""
    if "HF_TOKEN" not in secret_names:
        return {}
    return {"HF_TOKEN_PATH": str(layout.secret_file("HF_TOKEN"))}


def _heartbeat(cfg: PodConfig, layout: Layout) -> dict[str, str]:
    """Inference touches this file and the watchdog reads it: both must get the same path."""
    path = cfg.inference.INFERENCE_HEARTBEAT_FILE or layout.heartbeat_dir / "inference"
    return {"INFERENCE_HEARTBEAT_FILE": str(path)}


def _listen_host(cfg: PodConfig) -> str:
    return cfg.runtime.APPLIANCE_BIND_HOST


def supervisord_conf(layout: Layout, extra_conf_dir: Path | None) -> str:
    globs = [layout.conf_d / "*.conf"]
    if extra_conf_dir is not None:
        globs.append(extra_conf_dir / "*.conf")
    for g in globs:
        if any(c.isspace() for c in str(g)):
            raise RenderError(f"{g}: supervisord's [include] cannot hold a path with spaces")
    return _template(
        "supervisord.conf",
        log_dir=_ini(str(layout.log_dir), "log dir"),
        pidfile=_ini(str(layout.pidfile), "pid file"),
        socket=_ini(str(layout.socket), "socket"),
        group=_ini(layout.user, "APPLIANCE_USER"),
        include=_ini(" ".join(str(g) for g in globs), "include"),
    )


def program_conf(name: str, cfg: PodConfig, layout: Layout, secret_names: frozenset[str]) -> str:
    """One program file; `secret_names` are the secret files the bootstrap wrote."""
    py = str(layout.python)
    log_dir = _ini(str(layout.log_dir), "log dir")
    user = _ini(layout.user, "APPLIANCE_USER")
    home = _ini(str(layout.user_home), "APPLIANCE_USER_HOME")
    host = _listen_host(cfg)
    if name == "fatal-reviver":
        rt = cfg.runtime
        args = [py, "-m", "appliance.runtime.reviver", "--socket", str(layout.socket),
                "--records", str(layout.fatal_dir),
                "--cooldown", f"{rt.APPLIANCE_FATAL_COOLDOWN_SECONDS:g}",
                "--max-revives", str(rt.APPLIANCE_FATAL_MAX_REVIVES), "--uncapped", "sshd"]
        return _template("fatal-reviver.conf", command=_command(args, name), log_dir=log_dir)
    if name == "sshd":
        args = [str(layout.sshd), "-D", "-e", "-f", str(layout.sshd_config)]
        return _template("sshd.conf", command=_command(args, name), log_dir=log_dir)
    if name == "inference":
        inf = cfg.inference
        args = [py, "-m", "appliance.inference", "--host", inf.listen_host(host),
                "--port", str(inf.INFERENCE_PORT)]
        if inf.INFERENCE_MODEL_PATH is not None:
            args += ["--model", str(inf.INFERENCE_MODEL_PATH)]
        args += ["--device", inf.INFERENCE_DEVICE]
        return _template("inference.conf", command=_command(args, name), directory=home,
                         user=user, log_dir=log_dir,
                         environment=_environment(_user_env(layout, **_heartbeat(cfg, layout)),
                                                  name))
    if name == "jupyter":
        ws = str(layout.workspace)
        args = [py, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={host}",
                f"--ServerApp.port={cfg.jupyter.JUPYTER_PORT}", "--ServerApp.port_retries=0",
                f"--ServerApp.root_dir={ws}"]
        env = _user_env(layout, JUPYTER_TOKEN_FILE=str(layout.secret_file("JUPYTER_TOKEN")),
                        **_hf_token_path(layout, secret_names))
        return _template("jupyter.conf", command=_command(args, name), log_dir=log_dir,
                         directory=_ini(ws, "WORKSPACE_DIR"), user=user,
                         environment=_environment(env, name))
    if name == "hf-sync":
        args = [py, "-m", "appliance.sync", "watch"]
        env = _user_env(layout, **_hf_token_path(layout, secret_names))
        return _template("hf-sync.conf", command=_command(args, name), directory=home,
                         user=user, log_dir=log_dir, environment=_environment(env, name))
    if name == "idle-watchdog":
        args = [py, "-m", "appliance.watchdog"]
        return _template("idle-watchdog.conf", command=_command(args, name),
                         directory=_ini(str(layout.state_dir), "state dir"), log_dir=log_dir,
                         environment=_environment(_heartbeat(cfg, layout), name))
    raise RenderError(f"unknown program {name!r}; known: {', '.join(PROGRAM_FILES)}")


def ssh_path(layout: Layout) -> str:
    parts = [str(layout.bin_dir), str(layout.venv_bin), *SYSTEM_PATH]
    return ":".join(dict.fromkeys(parts))


def sshd_config(cfg: PodConfig, layout: Layout, shell_vars: Mapping[str, str]) -> str:
    """`shell_vars`: what ssh sessions see besides PATH (see shell_env); a value sshd_config
    cannot quote is left out here (login shells still get it from the env file)."""
    host_keys = "\n".join(
        "HostKey " + _sshd_value(str(layout.host_key(t)), "host key") for t in HOST_KEY_TYPES
    )
    pairs = {"PATH": ssh_path(layout)}
    pairs.update({k: v for k, v in shell_vars.items()
                  if k != "PATH" and not any(c in v for c in '"\\') and v.isprintable()})
    setenv = " ".join(_sshd_value(f"{k}={v}", "SetEnv") for k, v in pairs.items())
    return _template(
        "sshd_config",
        port=str(cfg.ssh.SSH_PORT),
        listen_address=_sshd_value(_listen_host(cfg), "APPLIANCE_BIND_HOST"),
        host_keys=host_keys,
        user=_sshd_value(layout.user, "APPLIANCE_USER"),
        authorized_keys=_sshd_value(str(layout.authorized_keys), "authorized_keys"),
        setenv=setenv,
    )


def supervisorctl_shim(layout: Layout) -> str:
    return _template("supervisorctl", python=str(layout.python),
                     config=repr(str(layout.supervisord_conf)))


def shell_env(environ: Mapping[str, str], layout: Layout,
              secret_names: frozenset[str]) -> dict[str, str]:
    """The allow-listed environment for login shells: no secret, ever. The predecessor's
    variables appear under the names they are read as."""
    declared = {name for klass in settings.pod_settings_classes() for name in klass.model_fields}
    merged = {o.old.new: o.value for o in legacy_env.outcomes(environ)
              if o.status == "read" and o.old.new and o.value is not None}
    merged.update({k: v for k, v in environ.items() if v})
    out: dict[str, str] = {}
    for name in sorted(merged):
        allowed = name in declared or name.startswith("RUNPOD_") or name in EXTRA_SHELL_VARS
        if not allowed or settings.is_secret_name(name):
            continue
        out[name] = strip_credentials(merged[name]) if name == "REPO_URL" else merged[name]
    out["HF_HOME"] = str(layout.hf_home)
    out["APPLIANCE_SECRETS_DIR"] = str(layout.secrets_dir)
    out.update(_hf_token_path(layout, secret_names))
    out["VIRTUAL_ENV"] = str(layout.venv_bin.parent)
    return out


def env_file(environ: Mapping[str, str], layout: Layout, secret_names: frozenset[str]) -> str:
    lines = [
        "# The pod's environment for login shells and ssh commands (allow-listed, no secrets).",
        "# Written by appliance.runtime.bootstrap at every start; edits here are lost.",
    ]
    for name, value in shell_env(environ, layout, secret_names).items():
        lines.append(f"export {name}={shlex.quote(value)}")
    front = f"{shlex.quote(str(layout.bin_dir))}:{shlex.quote(str(layout.venv_bin))}"
    lines += [
        f'case ":$PATH:" in *:{shlex.quote(str(layout.venv_bin))}:*) ;; '
        f'*) export PATH={front}:"$PATH" ;; esac',
        "",
    ]
    return "\n".join(lines)


def render_all(cfg: PodConfig, layout: Layout, *, torch_ok: bool, environ: Mapping[str, str],
               secret_names: frozenset[str]) -> dict[str, Rendered]:
    """Every file the bootstrap writes, by name: supervisord.conf, conf.d/NN-<program>.conf,
    sshd_config (when sshd runs), supervisorctl and appliance-env.sh."""
    p = plan(cfg.services, torch_ok, cfg.max_hours, cfg.uploads)
    out = {"supervisord.conf": Rendered(
        supervisord_conf(layout, cfg.runtime.APPLIANCE_EXTRA_CONF_DIR), 0o644)}
    for name in p.programs:
        out[f"conf.d/{PROGRAM_FILES[name]}"] = Rendered(
            program_conf(name, cfg, layout, secret_names), 0o600)
    if cfg.services.START_SSHD:
        out["sshd_config"] = Rendered(
            sshd_config(cfg, layout, shell_env(environ, layout, secret_names)), 0o644)
    out["supervisorctl"] = Rendered(supervisorctl_shim(layout), 0o755)
    out["appliance-env.sh"] = Rendered(env_file(environ, layout, secret_names), 0o644)
    return out
