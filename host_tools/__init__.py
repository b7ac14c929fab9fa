"""Workstation tools: thin CLIs over the appliance modules (datasets, provisioning, smoke tests)."""
