"""Shared library of the bundle collection."""
