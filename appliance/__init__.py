"""chess-bot pod appliance: everything that runs inside the pod."""

__version__ = "0.1.0"
