"""Implicit process reward model: step scoring, online training from outcome labels, and their phases."""
