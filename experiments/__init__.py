"""Measurements that run the library end to end (see each module's docstring)."""
