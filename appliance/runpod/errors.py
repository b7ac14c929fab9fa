"""RunPod's typed errors, each with the action that fixes it, and `classify`: which one an answer
(HTTP status and the server's message) is.
"""

from __future__ import annotations

from appliance.credentials import RUNPOD_KEY_ENTRY

NO_CAPACITY_MARKERS = (
    "no longer any instances available",
    "does not have the resources to deploy",
    "not enough free gpus",
    "no capacity",
)


class RunpodError(Exception):
    """A failed RunPod call: which call, what the server said, and what to do about it."""

    default_action = "check the RunPod status page and try again"

    def __init__(self, call: str, message: str, *, status: int | None = None,
                 action: str | None = None) -> None:
        self.call, self.message, self.status = call, message, status
        self.action = action or self.default_action
        super().__init__(f"{call}: {message} ({'HTTP ' + str(status) if status else 'no answer'})"
                         f"; {self.action}")


class NoApiKeyError(RunpodError):
    default_action = ("set RUNPOD_API_KEY, or store it with "
                      f"`{RUNPOD_KEY_ENTRY.set_command}`, or pass it explicitly")


class AuthError(RunpodError):
    default_action = "the API key was refused: create a new key in the RunPod console"


class AccessDeniedError(RunpodError):
    default_action = "this key may not make this call: use a key with full access"


class PaymentRequiredError(RunpodError):
    default_action = "add credit to the RunPod account (a pod needs at least one hour of credit)"


class NoCapacityError(RunpodError):
    default_action = "try another GPU type, cloud or data center"


class InvalidRequestError(RunpodError):
    default_action = "fix the request; retrying it unchanged will fail the same way"


class NotFoundError(RunpodError):
    default_action = "list pods with `provision.py pods` to see which exist"


class ConflictError(RunpodError):
    """The action is not allowed in the pod's current state (`state`, when known)."""

    def __init__(self, call: str, message: str, *, status: int | None = 409,
                 action: str | None = None, state: str | None = None) -> None:
        self.state = state
        if action is None:
            action = (f"the pod is {state}; wait for it to settle or pick an action allowed now"
                      if state else "check the pod's state with `provision.py status POD`")
        super().__init__(call, message, status=status, action=action)


class RateLimitedError(RunpodError):
    default_action = "too many requests: wait a minute and try again"


class ServerError(RunpodError):
    default_action = "RunPod failed on its side; try again later"


class TransportError(RunpodError):
    default_action = "check the network and RUNPOD_REST_URL / RUNPOD_GRAPHQL_URL"


def classify(call: str, status: int, message: str) -> RunpodError:
    """The typed error for an answer; the message decides where RunPod's status codes are vague."""
    lowered = message.lower()
    if any(m in lowered for m in NO_CAPACITY_MARKERS):
        return NoCapacityError(call, message, status=status)
    if status == 401 or "unauthorized" in lowered:
        return AuthError(call, message, status=status)
    if status == 402 or "balance" in lowered:
        return PaymentRequiredError(call, message, status=status)
    if status == 403:
        return AccessDeniedError(call, message, status=status)
    if status == 404 or "not found" in lowered:
        return NotFoundError(call, message, status=status)
    if status == 409:
        return ConflictError(call, message, status=status)
    if status == 429:
        return RateLimitedError(call, message, status=status)
    if status >= 500 or "something went wrong" in lowered:
        return ServerError(call, message, status=status)
    if status in (400, 422):
        return InvalidRequestError(call, message, status=status)
    return RunpodError(call, message, status=status)
