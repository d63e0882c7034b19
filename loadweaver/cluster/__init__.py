"""Cluster state: the stores behind API changes. The only package that may import redis."""
