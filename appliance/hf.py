"""The project's one Hugging Face Hub client: commits, listings and downloads over huggingface_hub,
with retries, token lookup and errors that name the request but never contain the token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from appliance.credentials import HF_TOKEN_ENTRY
from appliance.redact import Redactor
from appliance.retry import parse_retry_after, retry_delay

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
TOKEN_HELP = (
    "set HF_TOKEN (or HF_TOKEN_PATH), pass --token where the command has it, or store it with "
    f"`{HF_TOKEN_ENTRY.set_command}`"
)

log = logging.getLogger("appliance.hf")
T = TypeVar("T")


class HubError(RuntimeError):
    """A Hub request that failed; the message names the request and never holds a secret."""

    def __init__(self, message: str, *, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class HubAuthError(HubError):
    """The Hub refused the token, or a token is needed and none was found."""


class HubNotFoundError(HubError):
    """A repo, revision or file that does not exist (or is private to this token)."""


def keyring_token() -> str | None:
    """The write token stored in the system keyring, or None when there is none (or no keyring)."""
    return HF_TOKEN_ENTRY.lookup()


def resolve_token(
    explicit: str | None, env_token: str | None, token_file: Path | None = None,
    keyring_lookup: Callable[[], str | None] | None = None,
) -> tuple[str | None, str]:
    """The token and where it came from: --token, then HF_TOKEN, then the HF_TOKEN_PATH file,
    then the keyring. An unreadable token file is an error, not a silent fallback."""
    if explicit:
        return explicit, "--token"
    if env_token:
        return env_token, "HF_TOKEN"
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise HubAuthError(f"HF_TOKEN_PATH={token_file}: cannot read the token file: "
                               f"{reason}") from None
        if text:
            return text, "HF_TOKEN_PATH"
    found = (keyring_lookup or keyring_token)()
    if found:
        return found, "keyring"
    return None, "none"


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # known for LFS files; regular files only have a git blob oid


@dataclass(frozen=True)
class CommitResult:
    oid: str
    url: str


def _status_and_retry_after(exc: BaseException) -> tuple[int | None, float | None]:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    retry_after = None
    if response is not None:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return status, retry_after


class HubClient:
    """Calls to one Hub endpoint with one token. Transient failures (HTTP 408/429/5xx, network
    errors) are retried with exponential backoff, honouring Retry-After."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        token: str | None = None,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        progress: bool = False,
    ) -> None:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.attempts = max(1, attempts)
        self.backoff_s = DEFAULT_BACKOFF_S if backoff_s is None else backoff_s
        self.sleep = sleep
        self.redact = Redactor([token])
        if self.endpoint != DEFAULT_ENDPOINT:
            # Xet uploads need Hugging Face's CAS servers; any other endpoint only speaks LFS.
            constants.HF_HUB_DISABLE_XET = True
        if constants.ENDPOINT.rstrip("/") != self.endpoint:
            # The library's own probes (agent registry) go to the endpoint it read at import:
            # never let them reach a host this client was not pointed at.
            constants.HF_HUB_DISABLE_TELEMETRY = True
        (enable_progress_bars if progress else disable_progress_bars)()
        # token=False: never fall back to a token huggingface_hub finds on its own.
        self._api = huggingface_hub.HfApi(endpoint=self.endpoint, token=token or False)

    # -- error handling --

    def _error(self, what: str, exc: BaseException) -> HubError:
        from huggingface_hub import errors

        status, retry_after = _status_and_retry_after(exc)
        detail = self.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else
                             type(exc).__name__)
        if isinstance(exc, errors.RepositoryNotFoundError):
            return HubNotFoundError(
                f"{what}: repository not found at {self.endpoint} (or it is private and "
                "the token cannot read it)")
        if isinstance(exc, errors.RevisionNotFoundError):
            return HubNotFoundError(f"{what}: revision not found")
        if isinstance(exc, errors.RemoteEntryNotFoundError):
            return HubNotFoundError(f"{what}: not found on the Hub")
        if status in (401, 403):
            which = "no token was given" if not self.token else "the Hub refused the token"
            return HubAuthError(f"{what}: HTTP {status}, {which}: {TOKEN_HELP}")
        if status in RETRY_STATUSES:
            return HubError(f"{what}: HTTP {status} from {self.endpoint}", retryable=True,
                            retry_after=retry_after)
        if status is not None:
            return HubError(f"{what}: HTTP {status}: {detail}")
        if isinstance(exc, OSError) and not _is_network_error(exc):
            return HubError(f"{what}: {detail}")
        if _is_network_error(exc):
            return HubError(f"{what}: cannot reach {self.endpoint}: {detail}", retryable=True)
        return HubError(f"{what}: {type(exc).__name__}: {detail}")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except HubError:
                raise
            except Exception as exc:
                err = self._error(what, exc)
                if not err.retryable or attempt == self.attempts:
                    if err.retryable:
                        err = HubError(f"{err} (gave up after {attempt} attempts)")
                    raise err from None
                delay = retry_delay(attempt - 1, self.backoff_s, MAX_BACKOFF_S, err.retry_after)
                log.warning("%s; retry %d/%d in %.1f s", err, attempt, self.attempts - 1, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def require_token(self, what: str) -> None:
        if not self.token:
            raise HubAuthError(f"{what}: no HF token found: {TOKEN_HELP}")

    # -- operations --

    def ensure_repo(self, repo_id: str, repo_type: str, private: bool = True) -> None:
        """Create the repo if it does not exist (private by default)."""
        self._call(f"create {repo_type} repo {repo_id}", lambda: self._api.create_repo(
            repo_id, repo_type=repo_type, private=private, exist_ok=True))

    def head(self, repo_id: str, repo_type: str, revision: str = "main") -> str:
        """The commit sha `revision` points at."""
        info = self._call(f"read {repo_type} repo {repo_id}", lambda: self._api.repo_info(
            repo_id, repo_type=repo_type, revision=revision))
        if not info.sha:
            raise HubError(f"read {repo_type} repo {repo_id}: the Hub sent no commit sha")
        return str(info.sha)

    def list_files(self, repo_id: str, repo_type: str, folder: str = "",
                   revision: str = "main") -> list[RemoteFile]:
        """Every file under `folder` (recursively); [] when the folder does not exist."""
        from huggingface_hub import errors
        from huggingface_hub.hf_api import RepoFile

        def listing() -> list[RemoteFile]:
            try:
                entries = list(self._api.list_repo_tree(
                    repo_id, path_in_repo=folder or None, recursive=True, repo_type=repo_type,
                    revision=revision))
            except errors.RemoteEntryNotFoundError:
                return []
            return [RemoteFile(e.path, e.size, e.lfs.sha256 if e.lfs else None)
                    for e in entries if isinstance(e, RepoFile)]

        return self._call(f"list {repo_id}/{folder}", listing)

    def upload(self, repo_id: str, repo_type: str, files: Sequence[tuple[Path, str]],
               message: str, revision: str = "main") -> CommitResult:
        """Upload (local file, path in repo) pairs as one commit: all of them appear, or none."""
        from huggingface_hub import CommitOperationAdd

        self.require_token(f"upload to {repo_id}")

        def commit() -> CommitResult:
            ops = [CommitOperationAdd(path_in_repo=dest, path_or_fileobj=str(src))
                   for src, dest in files]
            info: Any = self._api.create_commit(repo_id, ops, commit_message=message,
                                                repo_type=repo_type, revision=revision)
            return CommitResult(str(info.oid), str(info.commit_url))

        return self._call(f"commit {len(files)} file(s) to {repo_id}", commit)

    def download(self, repo_id: str, repo_type: str, path: str, dest_dir: Path,
                 revision: str = "main") -> Path:
        """Download one file to `dest_dir`/`path` (no shared cache, so no second copy)."""
        def fetch() -> Path:
            return Path(self._api.hf_hub_download(
                repo_id, path, repo_type=repo_type, revision=revision, local_dir=dest_dir))

        return self._call(f"download {repo_id}/{path}", fetch)


def _is_network_error(exc: BaseException) -> bool:
    try:
        import httpx2 as httpx_mod
    except ImportError:  # huggingface_hub 1.x uses httpx
        import httpx as httpx_mod  # type: ignore[no-redef]
    return isinstance(exc, httpx_mod.TransportError | ConnectionError | TimeoutError)
