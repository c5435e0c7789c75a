"""The entropy-method catalogue: one module per method, registered on import (file name = registry key)."""

from entropy_rl.methods import entropy_bonus, ppo_clip  # noqa: F401
