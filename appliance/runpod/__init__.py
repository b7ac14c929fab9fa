"""The RunPod API client (see client.py), with its models and typed errors. The names importers
use are re-exported here; the package's modules are:

  errors.py   typed errors with actions, and `classify` (answer -> error)
  models.py   Pod, GpuType, Template, TemplateSpec, Registry, NetworkVolume, PodSpec
              (REST v2 and GraphQL answers in one vocabulary)
  clusters.py Cluster, ClusterSpec (Instant Clusters, REST v2 only)
  session.py  the one HTTP session: key in the Authorization header only, retries, scrubbing
  rest.py     REST v2 calls          graphql.py  the GraphQL fallback
  client.py   RunpodClient (REST first, GraphQL where REST is denied), API key lookup
"""

from appliance.runpod.client import RunpodClient, resolve_api_key, strip_api_key
from appliance.runpod.clusters import Cluster, ClusterSpec
from appliance.runpod.errors import (
    AccessDeniedError,
    AuthError,
    ConflictError,
    InvalidRequestError,
    NoApiKeyError,
    NoCapacityError,
    PaymentRequiredError,
    RateLimitedError,
    RunpodError,
    ServerError,
    TransportError,
)
from appliance.runpod.models import (
    Cloud,
    GpuType,
    NetworkVolume,
    Pod,
    PodSpec,
    Registry,
    Template,
    TemplateSpec,
    epoch_seconds,
)
from appliance.runpod.session import USER_AGENT

__all__ = [
    "USER_AGENT",
    "AccessDeniedError",
    "AuthError",
    "Cloud",
    "Cluster",
    "ClusterSpec",
    "ConflictError",
    "GpuType",
    "InvalidRequestError",
    "NetworkVolume",
    "NoApiKeyError",
    "NoCapacityError",
    "PaymentRequiredError",
    "Pod",
    "PodSpec",
    "RateLimitedError",
    "Registry",
    "RunpodClient",
    "RunpodError",
    "ServerError",
    "Template",
    "TemplateSpec",
    "TransportError",
    "epoch_seconds",
    "resolve_api_key",
    "strip_api_key",
]
