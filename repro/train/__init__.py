"""Training: the Trainer, resume state, the tracker protocol, devices, torchrun, optimisers, accuracy."""
