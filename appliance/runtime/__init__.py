"""The pod runtime: what runs at container start (bootstrap, its settings and paths model,
rendering and placing the config files, SSH, checkout) and what reports on it (health, status,
podcheck, the env docs)."""
