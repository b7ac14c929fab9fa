"""localpod's network volumes: storage in the one data center that outlives pods; a pod mounts
one instead of its own volume, and it cannot be deleted while a pod uses it.
"""

from __future__ import annotations

from typing import Any

from host_tools.emulators.localpod.common import DATA_CENTER_ID, AccountBase, ApiError, new_id

MAX_NETWORK_VOLUME_GB = 4096  # RunPod's NetworkVolume maximum


class VolumesMixin(AccountBase):
    def check_pod_volume(self, volume_id: str, data_centers: list[str] | None) -> None:
        """ApiError 400 unless the network volume exists in one of the pod's data centers."""
        volume = self.volumes.get(volume_id)
        if volume is None:
            raise ApiError(400, f"network volume {volume_id!r} not found")
        if data_centers and volume["dataCenter"] not in data_centers:
            raise ApiError(400, f"network volume {volume_id!r} is in {volume['dataCenter']}, "
                           f"not in the pod's data centers {', '.join(data_centers)}")


    def create_volume(self, name: str, size: int, data_center: str, type_: str) -> dict[str, Any]:
        with self.lock:
            if data_center != DATA_CENTER_ID:
                raise ApiError(400, f"unknown data center {data_center!r}: localpod has "
                               f"{DATA_CENTER_ID} only")
            volume_id = new_id(10)
            volume = {"id": volume_id, "name": name, "size": size, "dataCenter": data_center,
                      "type": type_}
            self.volumes[volume_id] = volume
            return dict(volume)

    def get_volume(self, volume_id: str) -> dict[str, Any]:
        with self.lock:
            if volume_id not in self.volumes:
                raise ApiError(404, "resource not found")
            return dict(self.volumes[volume_id])

    def update_volume(self, volume_id: str, name: str | None, size: int | None) -> dict[str, Any]:
        """Rename, or grow (a network volume never shrinks)."""
        with self.lock:
            volume = self.volumes.get(volume_id)
            if volume is None:
                raise ApiError(404, "resource not found")
            if size is not None and size <= volume["size"]:
                raise ApiError(400, f"a network volume can only grow: {volume['size']} GB now, "
                               f"{size} GB asked")
            volume.update({k: v for k, v in (("name", name), ("size", size)) if v is not None})
            return dict(volume)

    def delete_volume(self, volume_id: str) -> None:
        """409 while a pod that is not terminated has it mounted."""
        with self.lock:
            if volume_id not in self.volumes:
                raise ApiError(404, "resource not found")
            users = sorted(p.id for p in self.pods.values()
                           if p.network_volume == volume_id and p.status != "TERMINATED")
            if users:
                raise ApiError(409, f"network volume {volume_id} is in use by pod(s) "
                               f"{', '.join(users)}: terminate them first")
            self.backend.remove_network_volume(volume_id)
            del self.volumes[volume_id]
