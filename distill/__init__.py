"""Distillation from the full teacher (loss: `vlm.distillation`): the accelerate loop, promotion, finalize CLIs."""
