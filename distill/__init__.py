"""Distillation from the full teacher: the loss, the accelerate training loop, promotion and finalize CLIs."""
