"""Config overrides of the tiny test setup, shared by tests/conftest.py and tests that spawn subprocesses.

A module of its own (not `conftest`): test folders have no __init__.py, so `import conftest` can resolve to
another folder's conftest in a full run.
"""

import importlib
import os
from types import ModuleType

REQUIRE_EXTRAS_ENV = "ENTROPY_RL_REQUIRE_EXTRAS"  # comma-separated modules whose tests must run, never skip (CI)


def import_extra(name: str) -> ModuleType:
    """Import an optional extra's module for a test: skip the test without it, unless `name` is listed in
    $ENTROPY_RL_REQUIRE_EXTRAS (CI sets it for the extras it installs), where a missing module is a failure."""
    import pytest

    if name in os.environ.get(REQUIRE_EXTRAS_ENV, "").split(","):
        return importlib.import_module(name)
    return pytest.importorskip(name)

TASK = ["task.name=arithmetic", "task.params={ops: '+', max_digits: 1}"]
TINY_MODEL = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
              "model.intermediate_size=64"]
TINY = TASK + [
    "sft.enabled=false", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=6",
    "train.steps=3", "train.eval_every=0", "train.save_every=0", "train.sinks=[jsonl]", "train.threads=1",
    "optim.lr=0.01",
]

