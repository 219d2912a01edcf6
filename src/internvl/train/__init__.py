"""Supervised fine-tuning: data, packing, loss, and the training loop. Spec section 5."""
