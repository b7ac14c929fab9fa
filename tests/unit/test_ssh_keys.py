"""authorized_keys lines: good keys pass, each malformed line is named by number and skipped."""

from __future__ import annotations

import base64

from appliance.runtime.ssh_setup import parse_keys


def _blob(*fields: bytes) -> str:
    return base64.b64encode(b"".join(len(f).to_bytes(4, "big") + f for f in fields)).decode()


ED25519 = f"ssh-ed25519 {_blob(b'ssh-ed25519', bytes(32))} me@laptop"
RSA = "ssh-rsa " + _blob(b"ssh-rsa", bytes([1, 0, 1]), bytes(257))
ECDSA = f"ecdsa-sha2-nistp256 {_blob(b'ecdsa-sha2-nistp256', b'nistp256', bytes(65))} x"


def test_good_keys_with_options_comments_and_blank_lines():
    text = f"# my keys\n\n{ED25519}\n  {RSA}  \nno-pty,command=\"echo hi\" {ECDSA}\n{ED25519}\n"
    report = parse_keys([("PUBLIC_KEY", text)])
    assert report.keys == [ED25519, RSA, f'no-pty,command="echo hi" {ECDSA}']
    assert report.problems == []


def test_each_malformed_line_is_named_and_the_rest_still_count():
    kind, data, _ = ED25519.split()
    lines = [
        "hello world",
        ED25519,
        f"{kind} {data[:-8]}",
        "ssh-ed25519 ####",
        f"ssh-rsa {data}",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        RSA,
    ]
    report = parse_keys([("PUBLIC_KEY", ECDSA), ("AUTHORIZED_KEYS", "\n".join(lines))])
    assert report.keys == [ECDSA, ED25519, RSA]
    assert report.problems == [
        "AUTHORIZED_KEYS line 1: not a public key: expected '<type> <base64 data> [comment]' "
        "with a type such as ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp256; skipped",
        "AUTHORIZED_KEYS line 3: key data is not a complete ssh-ed25519 key (truncated or pasted "
        "wrongly?); skipped",
        "AUTHORIZED_KEYS line 4: key data after ssh-ed25519 is not base64; skipped",
        "AUTHORIZED_KEYS line 5: key data is not a complete ssh-rsa key (truncated or pasted "
        "wrongly?); skipped",
        "AUTHORIZED_KEYS line 6: a private key: give the line of the .pub file instead; skipped",
    ]


def test_a_problem_never_repeats_the_line():
    secretish = "-----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXktdjEAAAAA"
    report = parse_keys([("PUBLIC_KEY", secretish)])
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in report.problems[0]
