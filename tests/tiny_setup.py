"""Config overrides of the tiny test setup, shared by tests/conftest.py and tests that spawn subprocesses.

A module of its own (not `conftest`): test folders have no __init__.py, so `import conftest` can resolve to
another folder's conftest in a full run.
"""

TASK = ["task.name=arithmetic", "task.params={ops: '+', max_digits: 1}"]
TINY_MODEL = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
              "model.intermediate_size=64"]
TINY = TASK + [
    "sft.enabled=false", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=6",
    "train.steps=3", "train.eval_every=0", "train.save_every=0", "train.sinks=[jsonl]", "train.threads=1",
    "optim.lr=0.01",
]

