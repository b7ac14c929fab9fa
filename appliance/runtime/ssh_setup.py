"""The SSH side of the bootstrap: the login account, its authorized_keys, persistent host keys.

Keys come from env text (one per line); a malformed line is reported by number and skipped so the
good keys still work. Host keys are made once on the volume and copied in at every start.
"""

from __future__ import annotations

import base64
import binascii
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from appliance.runtime.config import LOGIN_SHELL

# Key type -> how many length-prefixed strings its key data holds (RFC 4253 6.6, RFC 5656,
# PROTOCOL.u2f); a truncated paste rarely still adds up.
KEY_FIELDS = {
    "ssh-ed25519": 2, "ssh-rsa": 3, "ecdsa-sha2-nistp256": 3, "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3, "sk-ssh-ed25519@openssh.com": 3,
    "sk-ecdsa-sha2-nistp256@openssh.com": 4,
}
KEY_TYPES = tuple(KEY_FIELDS)
_KEY_RE = re.compile(r"(?:^|\s)(\S+)\s+([A-Za-z0-9+/]+={0,3})(?:\s+(.*))?$")


class SetupError(RuntimeError):
    """An account or key step that failed, with the command's message."""


@dataclass
class KeyReport:
    keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _check_key(line: str) -> str | None:
    """None when `line` is a usable authorized_keys line, else why not (never the line itself)."""
    if "PRIVATE KEY" in line:
        return "a private key: give the line of the .pub file instead"
    m = _KEY_RE.search(line)
    if m is None or m.group(1) not in KEY_TYPES:
        known = [t for t in line.split() if t in KEY_TYPES]
        if known:
            return f"key data after {known[0]} is not base64"
        return ("not a public key: expected '<type> <base64 data> [comment]' with a type such "
                "as ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp256")
    key_type, data = m.group(1), m.group(2)
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return "key data is not valid base64"
    fields = _ssh_strings(blob)
    if fields is None or len(fields) != KEY_FIELDS[key_type] or fields[0] != key_type.encode():
        return f"key data is not a complete {key_type} key (truncated or pasted wrongly?)"
    return None


def _ssh_strings(blob: bytes) -> list[bytes] | None:
    """The length-prefixed strings `blob` consists of, or None if it does not add up."""
    out, i = [], 0
    while i < len(blob):
        if i + 4 > len(blob):
            return None
        n = int.from_bytes(blob[i:i + 4], "big")
        if i + 4 + n > len(blob):
            return None
        out.append(blob[i + 4:i + 4 + n])
        i += 4 + n
    return out


def parse_keys(sources: list[tuple[str, str]]) -> KeyReport:
    """`sources`: (variable name, text) pairs; each non-blank, non-# line is one key."""
    report = KeyReport()
    for var, text in sources:
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            problem = _check_key(line)
            if problem:
                report.problems.append(f"{var} line {number}: {problem}; skipped")
            elif line not in report.keys:
                report.keys.append(line)
    return report


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SetupError(f"{what}: {cmd[0]} not found; install it in the image") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip() or "no message"
        raise SetupError(f"{what}: {' '.join(cmd[:2])} failed (exit {proc.returncode}): {msg}")
    return proc


# -- the account -------------------------------------------------------------------------------

def shadow_password(user: str, shadow: Path = Path("/etc/shadow")) -> str | None:
    for line in shadow.read_text(encoding="utf-8").splitlines():
        parts = line.split(":")
        if parts[0] == user and len(parts) > 1:
            return parts[1]
    return None


def ensure_account(user: str, home: Path, shadow: Path = Path("/etc/shadow")) -> list[str]:
    """The account exists with a home and bash, and can log in with a key (not a password)."""
    notes = []
    try:
        pw = pwd.getpwnam(user)
        notes.append(f"{user} exists (uid {pw.pw_uid})")
    except KeyError:
        _run(["useradd", "--home-dir", str(home), "--create-home", "--shell", LOGIN_SHELL,
              "--user-group", user], f"creating account {user}")
        pw = pwd.getpwnam(user)
        notes.append(f"{user} created (uid {pw.pw_uid})")
    # useradd leaves '!' (locked): without PAM, sshd then refuses even a good key.
    # '*' is "no password can match": key login works, password login cannot.
    password = shadow_password(user, shadow)
    if password is None or password == "" or password.startswith("!"):
        _run(["usermod", "-p", "*", user], f"unlocking {user}")
        notes.append("unlocked for key login")
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    # Other accounts have no business in it (Jupyter keeps its runtime files there).
    home.chmod(0o750)
    return notes


def write_authorized_keys(path: Path, keys: list[str], user: str) -> None:
    pw = pwd.getpwnam(user)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chown(path.parent, pw.pw_uid, pw.pw_gid)
    path.parent.chmod(0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keys), encoding="utf-8")
    os.chown(tmp, pw.pw_uid, pw.pw_gid)
    tmp.chmod(0o600)
    tmp.replace(path)


# -- host keys ---------------------------------------------------------------------------------

def ensure_host_keys(store: Path, dest: dict[str, Path],
                     keygen: str = "ssh-keygen") -> tuple[list[str], list[str]]:
    """Make missing host keys in `store` (the volume), copy each to `dest[type]` with mode 0600.

    Returns (types generated now, fingerprint lines).
    """
    store.mkdir(parents=True, exist_ok=True)
    store.chmod(0o700)
    made, prints = [], []
    for key_type, target in dest.items():
        key = store / f"ssh_host_{key_type}_key"
        pub = key.with_name(key.name + ".pub")
        if not (key.is_file() and pub.is_file()):
            key.unlink(missing_ok=True)
            pub.unlink(missing_ok=True)
            _run([keygen, "-q", "-t", key_type, "-N", "", "-C", f"appliance-{key_type}",
                  "-f", str(key)], f"generating the {key_type} host key")
            made.append(key_type)
        target.parent.mkdir(parents=True, exist_ok=True)
        # The volume may not keep 0600 (sshd refuses such a key): copy, then set modes here.
        shutil.copyfile(key, target)
        target.chmod(0o600)
        target_pub = target.with_name(target.name + ".pub")
        shutil.copyfile(pub, target_pub)
        target_pub.chmod(0o644)
        prints.append(_run([keygen, "-l", "-f", str(target_pub)],
                           "reading a host key fingerprint").stdout.strip())
    return made, prints
