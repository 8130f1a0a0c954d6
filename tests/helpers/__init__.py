"""Helpers shared by tests of several packages (import as ``from helpers.<module> import ...``)."""
