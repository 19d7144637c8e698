"""Training and evaluation (datasets, losses, trainer, metrics). Not needed at inference."""
