"""Build and push the pod image with the engine host_tools/engine.py picks: which build path, the
dependency sets each path mounts into the build, the debootstrap base, tags, build and push.

Two paths (the build log says which one and why). Default: BASE_IMAGE (Debian bookworm slim) is
pulled when missing and pip installs the dependencies inside the build from the package index,
with a cache mount (torch's CPU index for the cpu variant; wheels that pip's find-links here hold
are offered first). Offline (OFFLINE=1, or BASE_IMAGE cannot be pulled): a debootstrapped base and
a wheelhouse downloaded on this host, installed with --no-index.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from host_tools.engine import Engine, EngineError, answers, apt_install, detect_engine, push_flags
from host_tools.settings import ImageSettings, SettingsError, load

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = "http://deb.debian.org/debian"
WHEELHOUSE = ROOT / "build" / "wheelhouse"
DEPS = ROOT / "build" / "deps"
# The CPU build carries no CUDA libraries (a tenth of the CUDA wheel's size); where
# download.pytorch.org cannot be reached, pip's find-links must hold it (here: /opt/wheels).
# pip counts 2.13.0+cpu as ==2.13.0 (and ranks it higher), so the CUDA spec excludes it.
TORCH_SPECS = {"cpu": "torch==2.13.0+cpu", "cuda": "torch==2.13.0,!=2.13.0+cpu"}
# The default path's torch index per variant; PyPI's own torch is the CUDA build.
TORCH_INDEXES: dict[str, str | None] = {"cpu": "https://download.pytorch.org/whl/cpu",
                                        "cuda": None}
DEFAULT_BASE_IMAGE = str(ImageSettings.model_fields["BASE_IMAGE"].get_default())
# The offline base `build` debootstraps itself when OFFLINE_BASE_IMAGE names it and it is missing.
DEFAULT_OFFLINE_BASE = str(ImageSettings.model_fields["OFFLINE_BASE_IMAGE"].get_default())
# Packages the image's venv gets besides the project's own dependencies.
# Debian bookworm's python3: wheels are resolved for exactly this interpreter.
TARGET_PYTHON = "3.11.2"
# The code baked in the image (image/Dockerfile: APPLIANCE_CODE_DIR; a unit test keeps them equal).
IMAGE_CODE_DIR = "/opt/chessbot"
IMAGE_EXTRAS = ("supervisor", "jupyterlab", "huggingface_hub")


class ImageError(RuntimeError):
    """A build or push step that failed, with what to do about it."""


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def shown(path: Path, root: Path | None = None) -> str:
    """A path as people read it: relative to the checkout when inside it."""
    root = root or ROOT
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def image_repo(raw: str | None = None) -> str:
    """IMAGE_REPO lower-cased (registries refuse upper case), checked for a sane shape."""
    default = ImageSettings.model_fields["IMAGE_REPO"].get_default()
    given = (raw if raw is not None else load(ImageSettings).IMAGE_REPO) or default
    repo = given.strip().lower()
    # A ":" only as a registry port (before the first "/"); a tag is added by tags().
    if (not re.fullmatch(r"[a-z0-9]+([._:/-][a-z0-9]+)*", repo) or repo.count(":") > 1
            or ":" in repo.rpartition("/")[2]):
        raise ImageError(f"IMAGE_REPO={given!r} is not an image name like "
                         "ghcr.io/owner/chess-bot")
    return repo


def git_sha(root: Path = ROOT) -> str:
    """Short commit of HEAD, with -dirty when tracked files differ (a tag must not lie)."""
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "nogit"
    dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--",
                            "appliance", "host_tools", "image", "supervisord.conf.d",
                            "pyproject.toml"], check=False).returncode != 0
    return f"{sha}-dirty" if dirty else sha


def tags(repo: str | None = None, tag: str | None = None) -> list[str]:
    name = image_repo(repo)
    first = tag or load(ImageSettings).IMAGE_TAG or git_sha()
    return [f"{name}:{first}", f"{name}:latest"]


def image_exists(engine: Engine, ref: str) -> bool:
    return answers(engine.cmd("image", "inspect", ref))


# -- base image -------------------------------------------------------------------------------
def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    files = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for stanza in re.split(r"\n\s*\n", text):  # deb822: fields in any order
            fields = {k.lower(): v.split() for k, v in
                      re.findall(r"^([A-Za-z][\w-]*):[ \t]*(.*)$", stanza, re.M)}
            if {"bookworm", "stable"} & set(fields.get("suites", [])):
                for uri in fields.get("uris", []):
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
        for m in re.finditer(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if m.group(2) == "bookworm" and m.group(1).rstrip("/").endswith("/debian"):
                return m.group(1)
    return DEFAULT_MIRROR


def build_base(engine: Engine, ref: str | None = None, mirror: str | None = None,
               force: bool = False) -> str:
    """debootstrap a minimal bookworm and import it as `ref` (default OFFLINE_BASE_IMAGE); skipped
    when the image exists."""
    ref = ref or load(ImageSettings).OFFLINE_BASE_IMAGE
    if not force and image_exists(engine, ref):
        log(f"base image {ref} exists: skipped (FORCE=1 rebuilds it)")
        return ref
    if not shutil.which("debootstrap"):
        try:
            apt_install(["debootstrap"])
        except EngineError as exc:
            raise ImageError(str(exc)) from None
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root: run `make base-image` as root, or let the "
                         "build pull BASE_IMAGE (unset OFFLINE)")
    mirror = mirror or load(ImageSettings).DEBIAN_MIRROR or apt_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chessbot-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap bookworm from {mirror} (a few minutes)")
        proc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs),
                               mirror], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-800:]
            raise ImageError(f"debootstrap from {mirror} failed: {tail}")
        # apt caches and lists are rebuilt by the Dockerfile's apt-get update anyway.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        imp = subprocess.run(engine.cmd("import", "-", ref), stdin=tar.stdout,
                             capture_output=True, text=True, check=False)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise ImageError(f"{engine.name} import failed: {imp.stderr.strip()[-500:]}")
    log(f"base image {ref} built in {time.monotonic() - started:.0f} s")
    return ref


# -- wheelhouse -------------------------------------------------------------------------------
def wheel_requirements(variant: str) -> list[str]:
    if variant not in ("cpu", "cuda"):
        raise ImageError(f"TORCH_VARIANT={variant!r}: expected cpu or cuda")
    torch = load(ImageSettings).TORCH_SPEC or TORCH_SPECS[variant]
    return [torch, *IMAGE_EXTRAS]


def requirements(variant: str) -> list[str]:
    """Everything the image's venv installs, torch first (one resolution, so the project's
    `torch>=...` cannot pull a second torch)."""
    return [*wheel_requirements(variant), *project_dependencies(), "setuptools>=68", "wheel"]


def write_if_changed(path: Path, text: str) -> None:
    """Leave an equal file alone, so the build's bind mount (and its cache) sees no change."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def build_wheelhouse(variant: str = "cpu", dest: Path = WHEELHOUSE,
                     python: str = sys.executable) -> Path:
    """The offline path's dependency set: every wheel the image installs, downloaded (or built) on
    the host, cached by inputs. The image build then needs no registry.
    """
    everything = requirements(variant)
    key = hashlib.sha256("\n".join([TARGET_PYTHON, *everything]).encode()).hexdigest()[:16]
    out = dest / variant
    stamp = out / ".inputs"
    if stamp.is_file() and stamp.read_text().strip() == key:
        log(f"wheelhouse {shown(out)} up to date")
        return out
    log(f"wheelhouse: resolving for CPython {TARGET_PYTHON} into {shown(out)}")
    # `pip wheel` first, because some dependencies ship only sdists (chess): it builds them
    # here, so the host must be a CPython 3.11 on x86_64 like the image.
    if sys.version_info[:2] != (3, 11) or os.uname().machine != "x86_64":
        raise ImageError("the wheelhouse is built with this Python for the image's bookworm "
                         "CPython 3.11 on x86_64; run it with such a Python (e.g. .venv)")
    built = dest / f".{variant}-host"
    shutil.rmtree(built, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    pip = [python, "-m", "pip"]
    # One resolution for everything, so the project's `torch>=...` cannot pull a second torch.
    subprocess.run([*pip, "wheel", "-q", "--prefer-binary", "-w", str(built), *everything],
                   check=True)
    # Then the image's own interpreter decides: bookworm has 3.11.2, and newer releases of some
    # packages need 3.11.5, which the host may have.
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(17, 37)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    target = [arg for plat in platforms for arg in ("--platform", plat)]
    subprocess.run([*pip, "download", "-q", "--only-binary=:all:", "--python-version",
                    TARGET_PYTHON, "--implementation", "cp", *target, "--find-links",
                    str(built), "-d", str(out), *everything], check=True)
    shutil.rmtree(built, ignore_errors=True)
    # The Dockerfile installs exactly this list from the wheelhouse, before the project's code.
    (out / "requirements.txt").write_text("\n".join(everything) + "\n", encoding="utf-8")
    (out / "pip.args").write_text("--no-index\n--find-links\n/deps\n", encoding="utf-8")
    stamp.write_text(key + "\n")
    return out


def pip_config(python: str = sys.executable) -> dict[str, list[str]]:
    """pip's configuration here (its config files and PIP_* variables): each key's values, env
    first. The default path's build takes two things from it: find-links (wheels this machine
    keeps at hand) and cert (a CA bundle, e.g. of a TLS-inspecting proxy)."""
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                          text=True, check=False)
    config: dict[str, list[str]] = {}
    for key, value in re.findall(r"^\S*?\.([\w-]+)='(.*)'$", proc.stdout, re.M):
        config.setdefault(key, []).append(value)
    return config


def find_links_dirs(config: dict[str, list[str]]) -> list[Path]:
    """The local directories among pip's find-links."""
    found: list[Path] = []
    for item in " ".join(config.get("find-links", [])).split():
        if "://" in item and not item.startswith("file://"):
            continue
        path = Path(item.removeprefix("file://"))
        if path.is_dir() and path not in found:
            found.append(path)
    return found


def local_wheels(torch_spec: str, dirs: Sequence[Path]) -> list[Path]:
    """The wheels in `dirs` a build may take: all, except torch wheels other than the pinned
    version exactly (a CPU wheel in the CUDA build's context would only confuse)."""
    pin = re.match(r"torch\s*==\s*([^,\s]+)", torch_spec)
    chosen: dict[str, Path] = {}
    for folder in dirs:
        for wheel in sorted(folder.glob("*.whl")):
            name, version = wheel.name.split("-")[:2]
            if name.lower() == "torch" and (pin is None or version != pin.group(1)):
                continue
            chosen.setdefault(wheel.name, wheel)
    return list(chosen.values())


def prepare_deps(variant: str = "cpu", dest: Path = DEPS,
                 config: dict[str, list[str]] | None = None) -> Path:
    """The default path's dependency set: requirements.txt, pip.args (index, find-links, cert),
    wheels/ (hard links of local wheels) and ca.pem; pip resolves it inside the build."""
    everything = requirements(variant)
    config = pip_config() if config is None else config
    out = dest / variant
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = local_wheels(everything[0], find_links_dirs(config))
    for stale in set(p.name for p in wheels.glob("*.whl")) - {w.name for w in found}:
        (wheels / stale).unlink()
    for wheel in found:
        target = wheels / wheel.name
        if not target.exists():
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy2(wheel, target)
    args = ["--find-links", "/deps/wheels"]
    local_torch = any(w.name.lower().startswith("torch-") for w in found)
    index = load(ImageSettings).TORCH_INDEX_URL or TORCH_INDEXES[variant]
    if index and not local_torch:
        args += ["--extra-index-url", index]
    certs = [Path(c) for c in config.get("cert", []) if Path(c).is_file()]
    if certs:
        write_if_changed(out / "ca.pem", certs[0].read_text(encoding="utf-8"))
        args += ["--cert", "/deps/ca.pem"]
    log(f"dependencies: {everything[0]} from "
        + ("a local wheel" if local_torch else index or "the package index")
        + (f"; {len(found)} wheel(s) from pip's find-links here" if found else "")
        + (f"; pip's CA bundle {certs[0]}" if certs else ""))
    write_if_changed(out / "requirements.txt", "\n".join(everything) + "\n")
    write_if_changed(out / "pip.args", "\n".join(args) + "\n")
    return out


def project_dependencies() -> list[str]:
    """The project's own dependencies, from pyproject.toml."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(data["project"]["dependencies"])


# -- build and push ---------------------------------------------------------------------------
def pull(engine: Engine, ref: str) -> str | None:
    """Pull `ref`; None when it worked, else why not (the engine's last line)."""
    proc = subprocess.run(engine.cmd("pull", *engine.pull_flags, ref), capture_output=True,
                          text=True, check=False)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def choose_path(engine: Engine, variant: str, base: str | None = None,
                offline: bool | None = None, context: Path = ROOT) -> tuple[str, Path]:
    """The build's base image and dependency set: the default path when the base can be pulled,
    else (or with OFFLINE=1) the offline one; logs which and why."""
    settings = load(ImageSettings)
    base = base or settings.BASE_IMAGE
    wheel_requirements(variant)  # a bad variant fails before anything is pulled
    if offline if offline is not None else settings.OFFLINE:
        reason = "OFFLINE=1"
    else:
        # Pulled only when missing, as `docker build` does: a re-pull voids podman's layer
        # cache, and a one-line change would rebuild every layer.
        here = image_exists(engine, base)
        why = None if here else pull(engine, base)
        if why is None:
            log(f"default path: {'found' if here else 'pulled'} {base}; pip installs the "
                "dependencies in the build (cache mount)")
            return base, prepare_deps(variant, dest=context / "build" / "deps")
        reason = f"{base} cannot be pulled ({why})"
    offline_base = settings.OFFLINE_BASE_IMAGE
    log(f"offline path: {reason}; base {offline_base}, wheelhouse downloaded on this host")
    if offline_base == DEFAULT_OFFLINE_BASE:
        build_base(engine, offline_base)
    return offline_base, build_wheelhouse(variant, dest=context / "build" / "wheelhouse")


def build(engine: Engine, *, variant: str = "cpu", base: str | None = None,
          repo: str | None = None, tag: str | None = None, quiet: bool = False,
          context: Path = ROOT, no_cache: bool = False,
          offline: bool | None = None) -> list[str]:
    base, deps = choose_path(engine, variant, base, offline, context)
    refs = tags(repo, tag)
    argv = engine.cmd("build", "-f", str(context / "image" / "Dockerfile"),
                      "--build-arg", f"BASE_IMAGE={base}",
                      "--build-arg", f"TORCH_VARIANT={variant}",
                      "--build-arg", f"DEPS={deps.relative_to(context)}")
    argv += engine.build_flags
    for ref in refs:
        argv += ["-t", ref]
    if quiet:
        argv.append("-q")
    if no_cache:
        argv.append("--no-cache")
    started = time.monotonic()
    log(f"{' '.join(argv[:2])} -> {', '.join(refs)}")
    proc = subprocess.run([*argv, str(context)], check=False,
                          stdout=subprocess.DEVNULL if quiet else None)
    if proc.returncode != 0:
        raise ImageError(f"{engine.name} build failed (exit {proc.returncode})")
    log(f"built {refs[0]} in {time.monotonic() - started:.1f} s")
    return refs


def push(engine: Engine, *, repo: str | None = None, tag: str | None = None,
         dry_run: bool = False, tls_verify: bool | None = None) -> list[list[str]]:
    """Push both tags; `tls_verify` None: plain HTTP to a loopback registry only (podman)."""
    refs = tags(repo, tag)
    commands = []
    for ref in refs:
        verify = tls_verify if tls_verify is not None else not loopback(registry(ref))
        commands.append(engine.cmd("push", *push_flags(engine.name, verify), ref))
    for argv in commands:
        if dry_run:
            print(f"would run: {' '.join(argv)}")
            continue
        if not image_exists(engine, argv[-1]):
            raise ImageError(f"{argv[-1]} does not exist locally: run `make image` first")
        log(" ".join(argv))
        if subprocess.run(argv, check=False).returncode != 0:
            raise ImageError(f"{' '.join(argv)} failed: is `{engine.name} login` done for "
                             f"{registry(argv[-1])}?")
    return commands


def registry(ref: str) -> str:
    """The registry of an image reference: its first part when that names a host (a dot, a
    port or localhost), else Docker Hub."""
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def loopback(host: str) -> bool:
    """A registry on this machine (host or host:port), which serves plain HTTP in tests."""
    return host.rpartition(":")[0] in ("localhost", "127.0.0.1", "[::1]") or \
        host in ("localhost", "127.0.0.1", "[::1]")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host_tools.image",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--engine", choices=("docker", "podman"),
                   help="container engine (default: Docker if its daemon answers, else podman)")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base-image", help="debootstrap the offline path's bookworm base and "
                       "import it (cached)")
    b.add_argument("--force", action="store_true", help="rebuild even if it exists")
    b.add_argument("--mirror", help="Debian mirror (default: the one apt uses here)")
    w = sub.add_parser("wheelhouse", help="download the image's wheels on the host (offline "
                       "path)")
    w.add_argument("--variant", help="cpu or cuda (default TORCH_VARIANT, cpu)")
    bd = sub.add_parser("build", help="build the image, tagged with the git SHA and latest")
    bd.add_argument("--variant", help="cpu or cuda (default TORCH_VARIANT, cpu)")
    bd.add_argument("--base", help="base image (default BASE_IMAGE, pulled)")
    bd.add_argument("--offline", action="store_true", default=None,
                    help="the offline path (as OFFLINE=1)")
    bd.add_argument("--quiet", action="store_true")
    ps = sub.add_parser("push", help="push both tags")
    ps.add_argument("--dry-run", action="store_true", help="print what would be pushed")
    ps.add_argument("--tls-verify", choices=("true", "false"),
                    help="podman only: false for a plain-HTTP registry (default: false for "
                    "localhost and 127.0.0.1 only)")
    sub.add_parser("tags", help="print the tags a build gets")
    sub.add_parser("engine", help="print the engine that would be used")
    args = p.parse_args(argv)
    try:
        if args.cmd == "tags":
            print("\n".join(tags()))
            return 0
        if args.cmd == "wheelhouse":
            print(build_wheelhouse(args.variant or load(ImageSettings).TORCH_VARIANT))
            return 0
        dry = args.cmd == "push" and args.dry_run
        engine = (Engine(args.engine or "docker") if dry and args.engine
                  else detect_engine(args.engine, install=not dry))
        if args.cmd == "engine":
            print(engine.name)
        elif args.cmd == "base-image":
            print(build_base(engine, load(ImageSettings).OFFLINE_BASE_IMAGE, args.mirror,
                             args.force))
        elif args.cmd == "build":
            variant = args.variant or load(ImageSettings).TORCH_VARIANT
            print("\n".join(build(engine, variant=variant, base=args.base,
                                  quiet=args.quiet, offline=args.offline)))
        else:
            push(engine, dry_run=args.dry_run,
                 tls_verify=None if args.tls_verify is None else args.tls_verify == "true")
    except (ImageError, EngineError, SettingsError, subprocess.CalledProcessError) as exc:
        print(f"image: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
