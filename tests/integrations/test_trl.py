"""The TRL adapter on CPU: a tiny Qwen2 model, 3 GRPO steps per method through TRL's own trainer loop.

The logged loss of every optimizer step must equal `entropy_rl.policy_loss` + `aggregate` recomputed on the
inputs captured inside `compute_loss` (the same mini-batch, selection seed and method values); our metric keys
must be in `trainer.state.log_history`. Run: pytest tests/integrations/test_trl.py -q
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from tiny_setup import import_extra  # noqa: E402  (tests/ is on sys.path via conftest)

import_extra("trl")

from datasets import Dataset  # noqa: E402  (TRL's dependency)
from trl import GRPOConfig  # noqa: E402

from entropy_rl import aggregate, policy_loss  # noqa: E402
from entropy_rl.core.policy_loss import get_policy_loss, run_select  # noqa: E402
from entropy_rl.core.token_stats import token_stats  # noqa: E402
from entropy_rl.core.types import PolicyInputs, StepContext, TokenWeights  # noqa: E402
from entropy_rl.integrations import trl as adapter  # noqa: E402
from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model, save_pretrained  # noqa: E402
from entropy_rl.models.build import load_pretrained  # noqa: E402
from entropy_rl.report.data import load_run  # noqa: E402
from entropy_rl.train.batch import seed_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEED, TAU, GA = 0, 0.7, 2  # 2 micro-batches of 4 per optimizer step; one generation batch per step


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                           intermediate_size=64, max_position_embeddings=128), tok, seed=0)
    out = tmp_path_factory.mktemp("trl") / "model"
    save_pretrained(model, tok, out)
    return out


def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """A reward that varies within every group (an untrained model scores 0 on arithmetic)."""
    return [c.count("1") / 6 + len(c) / 12 for c in completions]


class Capturing(adapter.EntropyRLGRPOTrainer):
    """Records, at every compute_loss, the micro-batch inputs and the update pass's own log-probs / entropies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            logp, ent, cur, _ = self.er_score(model, inputs, self.er_entry.obj.cur_features, True)
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            T = inputs["completion_ids"].shape[1]
            logits = model(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1]
            ours = token_stats(logits, inputs["completion_ids"], TAU, mask=inputs["completion_mask"])
        self.records.append({
            "train": self.model.training, "step": self.state.global_step, "logp": logp, "entropy": ent,
            "ours": ours, "mask": inputs["completion_mask"].float(), "adv": inputs["advantages"],
            "old_logp": inputs["old_per_token_logps"], "old_entropy": inputs[adapter.OLD_ENTROPY],
            "extras": {**adapter.rl_extras(inputs), **cur},
            "values": self.er_minibatch.ctx.values if self.model.training else None,
        })
        return super()._compute_loss(model, inputs)


def train(model_dir: Path, out: Path, method: str, params: dict[str, Any], **config: Any) -> Capturing:
    model, tok = load_pretrained(model_dir)
    tok.padding_side = "left"
    prompts = Dataset.from_list([{"prompt": f"{a}+{b}="} for a in range(4) for b in range(2)])
    args = GRPOConfig(output_dir=str(out), use_cpu=True, bf16=False, use_vllm=False, per_device_train_batch_size=4,
                      gradient_accumulation_steps=GA, num_generations=4, max_completion_length=6, max_steps=3,
                      logging_steps=1, report_to=[], learning_rate=1e-2, temperature=TAU, seed=SEED,
                      dataloader_num_workers=0, **config)
    trainer = Capturing(model=model, processing_class=tok, reward_funcs=reward, args=args, train_dataset=prompts,
                        eval_dataset=prompts.select(range(2)), method=method, method_params=params)
    trainer.train()
    return trainer


def check_logged_loss(trainer: Capturing, method: str, params: dict[str, Any]) -> None:
    """Each step's logged loss == policy_loss + aggregate over the step's GA captured micro-batches."""
    rows = [r for r in trainer.state.log_history if "loss" in r]
    records = [r for r in trainer.records if r["train"]]
    assert len(rows) == 3 and len(records) == 3 * GA
    for step, row in enumerate(rows):
        mb = records[step * GA:(step + 1) * GA]
        assert all(r["step"] == step for r in mb)
        cat = {k: torch.cat([r[k] for r in mb]) for k in ("logp", "entropy", "mask", "adv", "old_logp", "old_entropy")}
        mask = cat["mask"]
        extras = {k: torch.cat([r["extras"][k] for r in mb]) for k in mb[0]["extras"]}
        gen = torch.Generator().manual_seed(seed_for("select", SEED, step + 1))
        out = policy_loss(method, cat["logp"], cat["old_logp"], cat["adv"].unsqueeze(1) * mask, mask,
                          entropy=cat["entropy"], old_entropy=cat["old_entropy"], extras=extras, generator=gen,
                          values=mb[0]["values"], **params)
        expected = float(aggregate(out.per_token, mask, "token-mean"))
        assert row["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7), (step, row["loss"], expected)
        assert row["policy/loss"] == pytest.approx(row["loss"], rel=1e-6, abs=1e-8)
        # entropy/token_mean is our definition: the pre-update pass's H over the whole generation batch
        h = (cat["old_entropy"] * mask).sum() / mask.sum()
        assert row["entropy/token_mean"] == pytest.approx(float(h), rel=1e-5)


def check_temperature(trainer: Capturing) -> None:
    """TRL's fused log-probs and entropies are ours at the sampling temperature (logits / tau, fp32)."""
    for r in trainer.records:
        m = r["mask"].bool()
        torch.testing.assert_close(r["logp"][m], r["ours"].logp[m], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r["entropy"][m], r["ours"].entropy[m], rtol=1e-5, atol=1e-5)


OUR_KEYS = ["entropy/token_mean", "entropy/p10", "entropy/p50", "entropy/p90", "entropy/p99", "entropy/adv_pos",
            "entropy/adv_neg", "dynamics/cov_logp_adv", "policy/loss", "policy/clipfrac"]


def test_clip_cov_loss_selection_metrics_and_eval(model_dir: Path, tmp_path: Path) -> None:
    params = {"clip_ratio": 0.3, "cov_lb": -10.0, "cov_ub": 10.0}  # detach 30% of the tokens, drawn at random
    trainer = train(model_dir, tmp_path / "out", "clip_cov", params, eval_strategy="steps", eval_steps=3,
                    per_device_eval_batch_size=4, num_generations_eval=2, save_strategy="no")
    check_logged_loss(trainer, "clip_cov", params)
    check_temperature(trainer)
    rows = [r for r in trainer.state.log_history if "loss" in r]
    for key in OUR_KEYS + ["method/clip_cov/n_selected", "method/clip_cov/detached_frac"]:
        assert all(key in r for r in rows), key
    assert all(r["method/clip_cov/n_selected"] > 0 for r in rows)  # the selection mattered
    evals = [r for r in trainer.state.log_history if "eval_loss" in r]
    assert len(evals) == 1 and "eval_entropy/token_mean" in evals[0]


def test_adaptive_entropy_bonus_state_and_checkpoint(model_dir: Path, tmp_path: Path) -> None:
    params = {"coef": 0.01, "adaptive": True, "target_entropy": 5.0, "delta": 0.002}  # H < 5: c grows each step
    trainer = train(model_dir, tmp_path / "out", "entropy_bonus", params, save_strategy="steps", save_steps=3)
    check_logged_loss(trainer, "entropy_bonus", params)
    coefs = [r["values"].coef for r in trainer.records if r["train"]][::GA]
    assert coefs == pytest.approx([0.01, 0.012, 0.014])
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert trainer.er_state.last_entropy == pytest.approx(rows[-1]["entropy/token_mean"])  # after_update read ours
    assert [r["method/entropy_bonus/coef"] for r in rows] == pytest.approx(coefs)
    saved = tmp_path / "out" / "checkpoint-3" / adapter.STATE_FILE
    assert json.loads(saved.read_text()) == trainer.er_state.state_dict()
    fresh = trainer.er_entry.obj.make_state(trainer.er_params)
    trainer.er_state = fresh
    trainer._load_optimizer_and_scheduler(str(saved.parent))
    assert fresh.state_dict() == json.loads(saved.read_text())
    assert trainer.er_ctx.values.coef == pytest.approx(0.016)  # the next step's values come from the restored state
    saved.unlink()
    with pytest.raises(FileNotFoundError, match="no state of method 'entropy_bonus'"):
        trainer._load_optimizer_and_scheduler(str(saved.parent))


def test_lp_reg_features_through_the_logits_path(model_dir: Path, tmp_path: Path) -> None:
    """A method with a pre-update feature (lp_proxy) and a selection: full logits + token_stats in every pass."""
    params = {"rho_neg": 0.5, "rho_pos": 0.5}
    trainer = train(model_dir, tmp_path / "out", "lp_reg", params, save_strategy="no")
    assert trainer.er_use_logits
    check_logged_loss(trainer, "lp_reg", params)
    check_temperature(trainer)
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert sum(r["method/lp_reg/n_candidates"] for r in rows) > 0


def config(**kw: Any) -> GRPOConfig:
    return GRPOConfig(output_dir="unused", use_cpu=True, report_to=[], per_device_train_batch_size=4,
                      num_generations=4, **kw)


@pytest.mark.parametrize(("method", "kw", "match"), [
    ("entropy_controller", {}, "dynamics/dH_pred"),
    ("ppo_clip", {"loss_type": "cispo"}, "loss_type='cispo'"),
    ("ppo_clip", {"top_entropy_quantile": 0.2}, "use method 'top_entropy'"),
    ("ppo_clip", {"epsilon": 0.28}, "eps_low / eps_high in method_params"),
    ("ppo_clip", {"steps_per_generation": 3, "gradient_accumulation_steps": 2}, "multiple of gradient_accumulation"),
    ("ppo_clip", {"generation_kwargs": {"temperature": 0.5}}, "set one temperature"),
])
def test_refused_with_a_clear_error(method: str, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        adapter.check_trl_config(config(**kw), get_policy_loss(method))


def test_loss_type_picks_the_aggregation_and_every_other_method_runs() -> None:
    for name in ("ppo_clip", "clip_cov", "lp_reg", "siren", "entropy_bonus"):
        adapter.check_trl_config(config(loss_type="dr_grpo"), get_policy_loss(name))
    assert adapter.method_tier("entropy_controller")[0] == "refused"
    assert adapter.method_tier("lp_reg")[0] == "full" and "full logits" in adapter.method_tier("lp_reg")[1]


def test_trl_terms_add_kl_and_importance_ratio_as_trl_does() -> None:
    g = torch.Generator().manual_seed(0)
    logp, old, ref = (torch.randn(3, 5, generator=g) - 2 for _ in range(3))
    per_token = torch.randn(3, 5, generator=g)
    ratio = torch.rand(3, 1, generator=g)
    batch = {"ref_per_token_logps": ref, "importance_sampling_ratio": ratio}
    out, extra = adapter.trl_terms(per_token, logp, old, batch,
                                   beta=0.1, bias_correction=True)
    k3 = torch.exp(ref - logp) - (ref - logp) - 1  # TRL's per_token_kl
    # TRL 1.16 `_compute_loss`: per_token_loss * importance_sampling_ratio, then + beta * per_token_kl (unweighted)
    torch.testing.assert_close(out, per_token * ratio + 0.1 * k3 * torch.exp(logp - old))
    torch.testing.assert_close(extra["kl"], k3 * torch.exp(logp - old))
    plain, none = adapter.trl_terms(per_token, logp, old, {}, beta=0.0, bias_correction=True)
    assert plain is per_token and none == {}


def trl_high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """TRL's own `GRPOTrainer.get_high_entropy_mask` (trl 1.16), called as GRPOTrainer calls it (quantile 1 - rho),
    on one process: the only attribute it reads is a real (single-process) accelerate.Accelerator."""
    from accelerate import Accelerator
    from trl import GRPOTrainer

    holder = types.SimpleNamespace(accelerator=Accelerator(cpu=True))
    return GRPOTrainer.get_high_entropy_mask(holder, entropy, mask, 1 - rho)


def our_top_entropy(entropy: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """Our `top_entropy` selection (the official rule: the k = ceil(rho N_valid) highest by topk)."""
    entry = get_policy_loss("top_entropy")
    x = PolicyInputs(torch.zeros_like(entropy), torch.zeros_like(entropy), torch.zeros_like(entropy), mask,
                     old_entropy=entropy)
    return run_select(entry, entry.make_params(rho=rho), x, StepContext(), None)["keep"]


def test_trls_quantile_mask_keeps_one_token_fewer_than_the_official_rule_except_with_ties() -> None:
    h = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.3, 0.8, 0.2, 4.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])  # N_valid = 7 (4.0 is padding)
    # rho 0.3: official k = ceil(2.1) = 3 -> {0.9, 0.8, 0.7}. TRL: quantile 0.7 of the sorted valid values
    # [0.1 0.2 0.3 0.5 0.7 0.8 0.9] at position 0.7 * 6 = 4.2 -> 0.7 + 0.2 * (0.8 - 0.7) = 0.72 -> {0.9, 0.8}
    ours, trl = our_top_entropy(h, mask, 0.3), trl_high_entropy_mask(h, mask, 0.3)
    assert h[ours].tolist() == pytest.approx([0.9, 0.7, 0.8]) and h[trl].tolist() == pytest.approx([0.9, 0.8])
    # rho 0.2 (= 1/5): both keep ceil(1.4) = 2 = 1 + floor(0.2 * 6)
    assert torch.equal(our_top_entropy(h, mask, 0.2), trl_high_entropy_mask(h, mask, 0.2))
    # ties at the threshold: TRL keeps all 4 tied tokens, the official rule exactly k = ceil(0.2 * 10) = 2
    tied = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0, 1.0]])  # quantile 0.8 at 7.2: 1.0
    ones = torch.ones_like(tied)
    assert int(trl_high_entropy_mask(tied, ones, 0.2).sum()) == 4 and int(our_top_entropy(tied, ones, 0.2).sum()) == 2


def test_trim_rows_takes_this_process_rows_and_width() -> None:
    sel = TokenWeights({"detach": torch.arange(24).view(4, 6), "scale": torch.arange(4.0).view(4, 1)}, {"m": 1})
    mine = adapter.trim_rows(sel, slice(2, 4), width=3, gathered_width=6)
    assert mine["detach"].tolist() == [[12, 13, 14], [18, 19, 20]]
    assert mine["scale"].tolist() == [[2.0], [3.0]] and mine.metrics == {"m": 1}


def test_save_state_refuses_non_json_values(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not plain JSON data"):
        adapter.save_state({"anchor": torch.ones(2)}, str(tmp_path / "s.json"))


def test_docs_tables_are_generated() -> None:
    doc = (ROOT / "docs" / "integrations.md").read_text()
    hint = "regenerate the TRL tables of docs/integrations.md: python -m entropy_rl.integrations.trl"
    assert adapter.tier_table_markdown() in doc and adapter.variants_table_markdown() in doc, hint


def test_variants_map_onto_trl_settings() -> None:
    tier, how = adapter.variant_in_trl({"algorithm": {"method": "siren", "advantage": "dr_grpo",
                                                      "loss_agg_mode": "seq-mean-token-sum-norm"}})
    assert tier == "full" and how == 'method="siren"; loss_type="dr_grpo"; scale_rewards="none"'
    tier, how = adapter.variant_in_trl({"algorithm": {"advantage": "rloo"}, "optim": {"mini_batches": 2},
                                        "rollout": {"top_p": 0.9}})
    assert tier == "approximate" and "advantage 'rloo' has no TRL equivalent" in how
    assert "steps_per_generation = 2 x gradient_accumulation_steps" in how and "rollout.top_p=0.9 not carried" in how
    assert adapter.variant_in_trl({"algorithm": {"method": "entropy_controller"}})[0] == "refused"


def example_module():
    spec = importlib.util.spec_from_file_location("trl_example", ROOT / "examples" / "trl" / "train_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_reward_reads_the_last_boxed_answer() -> None:
    ex = example_module()
    assert ex.last_boxed("so \\boxed{1} then \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert ex.last_boxed("\\boxed{3") is None and ex.last_boxed("no box") is None
    reward = ex.make_reward(use_math_verify=False)
    completions = ["x \\boxed{2.50}", [{"role": "assistant", "content": "\\boxed{7}"}], "2.5"]
    assert reward(completions, answer=["2.5", "8", "2.5"]) == [1.0, 0.0, 0.0]


def test_example_script_trains_on_cpu_and_the_report_reads_it(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = example_module().main([
        "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "run"), "--cpu", "--steps", "1",
        "--per-device-batch", "4", "--grad-accum", "1", "--num-generations", "4", "--max-completion-length", "6",
        "--method", "steer", "--save-steps", "10"])
    run = load_run(out, "trl")
    assert run.config["algorithm"]["method"] == "steer" and len(run.rows) == 1
    assert {"entropy/token_mean", "reward/mean", "policy/loss", "trl/entropy"} <= set(run.rows[0])


def pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    """[B, T] -> [B, width] zero-padded on the right; [B] unchanged."""
    return torch.nn.functional.pad(t, (0, width - t.shape[1])) if t.dim() == 2 else t


@pytest.mark.slow
def test_two_processes_select_and_normalise_over_the_gathered_minibatch(model_dir: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes (gloo): each step's logged loss is policy_loss + aggregate over the micro-batches of
    both processes (process 0 first, token columns zero-padded to the wider one), with the same selection seed;
    entropy/token_mean is the token mean over both processes' generation batches."""
    worker = Path(__file__).with_name("trl_two_process_worker.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(model_dir), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    rows = [r for r in json.loads((tmp_path / "log_history.json").read_text()) if "loss" in r]
    params = {"clip_ratio": 0.3, "cov_lb": -10.0, "cov_ub": 10.0}
    assert len(rows) == 2
    for step, row in enumerate(rows):
        per_rank = []
        for records in ranks:
            mine = [r for r in records if r["step"] == step]
            assert len(mine) == GA
            per_rank.append({k: torch.cat([torch.tensor(r[k]) for r in mine]) for k in mine[0] if k != "step"})
        width = max(p["mask"].shape[1] for p in per_rank)
        cat = {k: torch.cat([pad_columns(p[k], width) for p in per_rank]) for k in per_rank[0]}
        assert not torch.equal(per_rank[0]["adv"], per_rank[1]["adv"])  # the processes trained on different data
        mask = cat["mask"]
        gen = torch.Generator().manual_seed(seed_for("select", SEED, step + 1))
        out = policy_loss("clip_cov", cat["logp"], cat["old_logp"], cat["adv"].unsqueeze(1) * mask, mask,
                          generator=gen, **params)
        assert row["loss"] == pytest.approx(float(aggregate(out.per_token, mask, "token-mean")), rel=1e-5, abs=1e-7)
        h = (cat["old_entropy"] * mask).sum() / mask.sum()
        assert row["entropy/token_mean"] == pytest.approx(float(h), rel=1e-5)
        assert row["method/clip_cov/n_selected"] == math.floor(0.3 * int(mask.sum()))  # drawn over all 16 sequences
