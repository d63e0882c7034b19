"""Route table: exact host before wildcard before catch-all, then the longest path prefix."""

from loadweaver.routing.table import CompiledRoute, RouteTable

__all__ = ["CompiledRoute", "RouteTable"]
