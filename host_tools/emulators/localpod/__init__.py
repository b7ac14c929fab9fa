"""localpod: a local RunPod-compatible control plane (REST v2 and a GraphQL subset) on 127.0.0.1
whose pods are records only or real local containers; used by the tests and for rehearsal.
"""

from host_tools.emulators.localpod.common import Fault
from host_tools.emulators.localpod.pods import PodBackend, RecordsBackend
from host_tools.emulators.localpod.server import LocalPodServer
from host_tools.emulators.localpod.state import Account

__all__ = ["Account", "Fault", "LocalPodServer", "PodBackend", "RecordsBackend"]
