"""Adversarial attacks as pure functions of (model, x, y)."""
