"""Balancing strategies behind one interface: pick(ctx, avoid) plus host and connection events."""

from loadweaver.balancing.base import Backend, NoBackend, PickContext, Strategy
from loadweaver.balancing.registry import create_strategy

__all__ = ["Backend", "NoBackend", "PickContext", "Strategy", "create_strategy"]
