"""The chess move-prediction model: vocabulary, features, network and checkpoints."""
