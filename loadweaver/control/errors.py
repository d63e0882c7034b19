"""Errors of the control plane that several layers need to name."""


class NodeStartError(Exception):
    """A config cannot be put into service (start or change); the message is for the operator."""
