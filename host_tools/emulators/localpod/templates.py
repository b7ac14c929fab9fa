"""localpod's templates: the shape of one (REST v2's Template) and those a new account has."""

from __future__ import annotations

from typing import Any

from appliance.settings import pod_ports


def template(tid: str, name: str, image: str) -> dict[str, Any]:
    """A template as REST v2's Template: every field the document requires."""
    return {"id": tid, "name": name, "image": image, "args": "", "disk": 30,
            "mounts": {"persistent": {"size": 20, "path": "/workspace"}},
            "ports": list(pod_ports()), "env": {}, "registry": None,
            "serverless": False, "public": False, "category": "NVIDIA", "startSsh": True,
            "startJupyter": False, "allowedCudaVersions": []}


def default_templates(image: str) -> list[dict[str, Any]]:
    return [template("chessbotappl1", "chessbot-appliance", image),
            template("chessbotdev01", "chessbot-appliance-dev", image),
            template("torchbase0001", "pytorch-base", "runpod/pytorch:1.0.2-cu1281-torch280")]
