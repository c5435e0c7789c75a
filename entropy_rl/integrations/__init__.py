"""Adapters that carry entropy-rl's methods, entropy metrics and report into other trainers.

Each adapter is its own module, imported on demand (`entropy_rl.integrations.trl`, `...verl`); importing this
package imports none of those trainers. Install the matching extra first, e.g. `pip install 'entropy-rl[trl]'`.
See docs/integrations.md for what runs where.
"""
