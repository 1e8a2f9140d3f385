"""Structural slimming: removing the channels, neurons and heads that masks removed, so that
the model is physically smaller and faster and computes the same function."""
