"""Trusted proxies and, later, IP filters and DDoS defences."""
