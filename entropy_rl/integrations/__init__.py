"""Adapters that carry entropy-rl's methods, entropy metrics and report into other trainers.

<<<<<<< HEAD
Each adapter is its own module and imports its trainer only when imported itself; this package imports
nothing. See docs/integrations.md for what runs where.
=======
Each adapter is its own module, imported on demand (`entropy_rl.integrations.trl`, ...); importing this
package imports none of those trainers. Install the matching extra first, e.g. `pip install 'entropy-rl[trl]'`.
>>>>>>> wt-trl
"""
