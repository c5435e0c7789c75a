"""Advantage estimators, one module each, registered on import (file name = registry key)."""

from entropy_rl.advantages import dr_grpo, grpo, rloo  # noqa: F401
