"""Worker of `test_trl.py::test_two_processes_select_and_normalise_over_the_gathered_minibatch`.

Run by `torchrun --nproc_per_node 2` (CPU, gloo): 2 optimizer steps of Clip-Cov through the adapter, each
process recording at every compute_loss its micro-batch inputs and the update pass's log-probs; every process
writes them to OUT/rank<r>.json, process 0 also TRL's log history to OUT/log_history.json (JSON only).

Usage: python trl_two_process_worker.py MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from entropy_rl.integrations import trl as adapter  # noqa: E402
from entropy_rl.models.build import load_pretrained  # noqa: E402

PARAMS = {"clip_ratio": 0.3, "cov_lb": -10.0, "cov_ub": 10.0}
SEED = 0


def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    return [c.count("1") / 6 + len(c) / 12 for c in completions]


class Recording(adapter.EntropyRLGRPOTrainer):
    """Records every micro-batch's inputs and the update pass's own log-probs and entropies (no grad)."""

    records: list[dict[str, Any]]

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            logp, ent, _, _ = self.er_score(model, inputs, (), True)
        rec = {"step": self.state.global_step, "logp": logp, "entropy": ent, "mask": inputs["completion_mask"].float(),
               "adv": inputs["advantages"], "old_logp": inputs["old_per_token_logps"],
               "old_entropy": inputs[adapter.OLD_ENTROPY]}
        self.records.append({k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in rec.items()})
        return super()._compute_loss(model, inputs)


def main(model_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    model, tok = load_pretrained(model_dir)
    tok.padding_side = "left"
    prompts = Dataset.from_list([{"prompt": f"{a}+{b}="} for a in range(4) for b in range(4)])
    args = GRPOConfig(output_dir=out, use_cpu=True, bf16=False, use_vllm=False, per_device_train_batch_size=4,
                      gradient_accumulation_steps=2, num_generations=4, max_completion_length=6, max_steps=2,
                      logging_steps=1, report_to=[], learning_rate=1e-2, seed=SEED, save_strategy="no",
                      dataloader_num_workers=0)
    trainer = Recording(model=model, processing_class=tok, reward_funcs=reward, args=args, train_dataset=prompts,
                        method="clip_cov", method_params=PARAMS)
    trainer.records = []
    trainer.train()
    rank = trainer.accelerator.process_index
    Path(out, f"rank{rank}.json").write_text(json.dumps(trainer.records))
    if rank == 0:
        Path(out, "log_history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
