"""Adapters that carry entropy-rl's methods, entropy metrics and report into other trainers.

Each adapter is its own module and imports its trainer only when imported itself; this package imports
nothing. See docs/integrations.md for what runs where.
"""
