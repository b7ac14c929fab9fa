"""A local Hugging Face Hub emulator (the protocol subset our flows use), storing to a directory;
`python -m host_tools.emulators.hubemu --dir DIR` runs it, tests start `HubEmulator` in a thread.
"""

from host_tools.emulators.hubemu.server import Fault, HubEmulator, RequestRecord

__all__ = ["Fault", "HubEmulator", "RequestRecord"]
