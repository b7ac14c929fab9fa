"""Local stand-ins for the services this machine cannot reach: RunPod (localpod) and the HF Hub
(hubemu)."""
