"""Lifecycle tier: the pod image run by localpod's container backend, end to end. The engine,
the image (built once per run, layer cache) and the SSH client key are the container tier's."""

from tests.container.conftest import client_key, engine, image

__all__ = ["client_key", "engine", "image"]
