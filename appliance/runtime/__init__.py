"""The pod runtime: what runs at container start (bootstrap, rendering, SSH, checkout) and
what reports on it (health, status, podcheck, the env docs)."""
