"""Artifact sync to the Hugging Face Hub: the upload index, one-shot sync and the inotify watcher
(`python -m appliance.sync once|watch|status`); `pending_count` is for the idle watchdog.
"""

from appliance.sync.status import pending_count, read_status

__all__ = ["pending_count", "read_status"]
