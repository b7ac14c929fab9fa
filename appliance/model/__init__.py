"""The chess move-prediction model: vocabulary, features, network and checkpoints.

The checkpoint file names live here, not in `checkpoint`, so that code which only looks for a
model (podcheck, the workstation tools) can name them without importing torch.
"""

BEST_MODEL = "model_best.pt"  # the best epoch's model, what inference loads
LAST_CHECKPOINT = "checkpoint_last.pt"  # the newest epoch, with training state for --resume
