"""Update guard: a non-finite optimizer step is rolled back, so NaN/inf never reaches the weights or a checkpoint.

The trainer already skips a mini-batch whose loss or gradient norm is non-finite. That is not enough: a finite
gradient can still give non-finite weights (`optim.lr` = inf or 1e30, a corrupted Adam second moment), and a
checkpoint of them makes every resume crash. So around each `optimizer.step()`:

    guard.snapshot()                 # copy parameters + optimizer state into preallocated flat buffers
    optimizer.step()
    reason = guard.check(...)        # parameters, optimizer state and the logits of one sequence all finite?
    if reason: guard.rollback()      # copy both back: the step never happened

The logits check catches weights that are finite but so large that the next forward pass overflows
(`lr=1e30`: parameters ~1e30, logits NaN, sampling would crash). Such weights come from a step that blows them
up, so the check (a no-grad forward of one sequence) runs only when the step more than doubled the largest
magnitude of some parameter tensor (`GROWTH`, plus `GROWTH_SLACK` for tensors near zero); a normal step skips it.

Cost per optimizer step: one copy of the parameters and of the optimizer state (AdamW: 2 moments + a step
counter per tensor, so ~3x the parameter bytes) and a max-|x| reduction over the same tensors, plus the forward
when it runs. Memory: the buffers, ~3x the parameter bytes for AdamW (allocated once, reused). On the tiny CPU
model (19k parameters) that is ~0.2 ms for the copy and ~0.5 ms for the reductions per optimizer step (the
forward, when it runs, ~1.5 ms); for a 7B model in fp32 it is ~84 GB of extra memory and one device-memory copy
per step, so a large-model trainer would want it optional or on a sharded copy. `non_finite_parameters` is the
save-path check (`checkpoint.save_checkpoint` refuses to write them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from entropy_rl.train.forward import response_logits

GROWTH = 2.0  # the logits are checked after a step that multiplies some tensor's largest |weight| by more than this
GROWTH_SLACK = 1e-3  # ... plus this much (absolute), so tensors that start at zero do not trigger it every step

class NonFiniteWeightsError(RuntimeError):
    """Refused to write a checkpoint whose weights hold NaN or inf."""


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters of `model` that hold a NaN or inf (empty when all are finite)."""
    with torch.no_grad():
        named = list(model.named_parameters())
        if not named:
            return []
        finite = torch.stack([torch.isfinite(p).all().cpu() for _, p in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


def _max_abs(tensors: list[Tensor]) -> Tensor:
    """[n] largest |x| of each tensor (NaN or inf when it holds one; finite values cannot overflow), on the first
    tensor's device; one kernel per tensor, no host sync."""
    device = tensors[0].device
    return torch.stack([torch.linalg.vector_norm(t.detach(), float("inf")).float().to(device) if t.numel()
                        else torch.zeros((), device=device) for t in tensors])


def _all_finite(tensors: list[Tensor]) -> bool:
    """Whether every element of every floating-point tensor is finite (one host sync)."""
    tensors = [t for t in tensors if t.is_floating_point()]
    return not tensors or bool(torch.isfinite(_max_abs(tensors)).all())


class UpdateGuard:
    """Snapshot before `optimizer.step()`, check after, roll back parameters and optimizer state if non-finite.

    Args:
        model: the policy; its logits on one sequence are checked after the step.
        optimizer: the optimizer whose parameters and per-parameter state are guarded (any torch optimizer that
            keeps its state in `optimizer.state[p]`, e.g. AdamW).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.params: list[Tensor] = [p for group in optimizer.param_groups for p in group["params"]]
        # What one snapshot holds: refs (param index, state key, or None for the parameter itself), grouped by
        # (dtype, device), each group packed in that order into one preallocated flat buffer.
        self._refs: list[tuple[int, str | None]] = []
        self._groups: dict[tuple[torch.dtype, torch.device], list[tuple[int, str | None]]] = {}
        self._buffers: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self._fresh: list[int] = []  # params without optimizer state at snapshot time (it is created by the step)
        self._extras: dict[int, dict[str, Any]] = {}  # non-tensor state values (e.g. a float step count)
        self._scale: Tensor | None = None  # [n params] largest |weight| per parameter tensor at snapshot time

    def _tensor(self, ref: tuple[int, str | None]) -> Tensor:
        i, key = ref
        return self.params[i] if key is None else self.optimizer.state[self.params[i]][key]

    def _state_refs(self) -> list[tuple[int, str | None]]:
        return [(i, key) for i, p in enumerate(self.params)
                for key, value in self.optimizer.state.get(p, {}).items() if isinstance(value, Tensor)]

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the parameters and the optimizer state into the flat buffers (reallocated only when the set of
        state tensors changes, i.e. after the first step)."""
        refs = [(i, None) for i in range(len(self.params))] + self._state_refs()
        if refs != self._refs:
            self._refs, self._groups = refs, {}
            for ref in refs:
                t = self._tensor(ref)
                self._groups.setdefault((t.dtype, t.device), []).append(ref)
            self._buffers = {key: torch.empty(sum(self._tensor(r).numel() for r in group), dtype=key[0], device=key[1])
                             for key, group in self._groups.items()}
        for key, group in self._groups.items():
            torch.cat([self._tensor(r).reshape(-1) for r in group], out=self._buffers[key])
        self._scale = _max_abs(self.params)
        self._fresh = [i for i, p in enumerate(self.params) if not self.optimizer.state.get(p)]
        self._extras = {i: {k: v for k, v in self.optimizer.state[p].items() if not isinstance(v, Tensor)}
                        for i, p in enumerate(self.params) if self.optimizer.state.get(p)}

    @torch.no_grad()
    def check(self, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> str | None:
        """After the step: why it must be rolled back, or None when parameters, state and logits are finite.

        Args:
            input_ids: [1, P + T] one sequence of the mini-batch (prompt + response) for the logits check.
            attention_mask: [1, P + T] its mask.
            prompt_len: P.

        Returns:
            None, or a short reason ("non-finite parameters after the optimizer step ...").
        """
        assert self._scale is not None, "check() needs a snapshot() before the step"
        scale = _max_abs(self.params)
        finite, grew = torch.stack([torch.isfinite(scale).all(), (scale > GROWTH * self._scale + GROWTH_SLACK).any()]).tolist()
        if not finite:
            return "non-finite parameters after the optimizer step (is optim.lr too large?)"
        if not _all_finite([self._tensor(r) for r in self._state_refs()]):
            return "non-finite optimizer state after the optimizer step"
        if not grew:  # no tensor blew up: skip the forward (module docstring)
            return None
        was_training = self.model.training
        self.model.eval()
        try:
            logits = response_logits(self.model, input_ids, attention_mask, prompt_len)  # [1, T, V]
        finally:
            self.model.train(was_training)
        if not bool(torch.isfinite(logits).all()):
            return "non-finite logits after the optimizer step (is optim.lr too large?)"
        return None

    @torch.no_grad()
    def rollback(self) -> bool:
        """Restore the parameters and the optimizer state of the last `snapshot()`: the step never happened.

        Returns:
            Whether the restored optimizer state is finite. False means it was already non-finite before the
            step (e.g. a corrupted checkpoint), so every later step will fail the same way.
        """
        state_finite = True
        for key, group in self._groups.items():
            offset = 0
            for ref in group:
                t = self._tensor(ref)
                saved = self._buffers[key][offset : offset + t.numel()]
                t.copy_(saved.view_as(t))
                offset += t.numel()
                if ref[1] is not None and saved.is_floating_point():
                    state_finite = state_finite and bool(torch.isfinite(saved).all())
        for i in self._fresh:  # the step created their state: drop it, as before the step
            self.optimizer.state.pop(self.params[i], None)
        for i, extras in self._extras.items():
            self.optimizer.state[self.params[i]].update(extras)
        return state_finite
