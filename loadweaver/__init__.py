"""loadweaver: a clustered Layer 7 (HTTP) load balancer."""

__version__ = "0.1.0"
