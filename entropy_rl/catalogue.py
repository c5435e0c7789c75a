"""The method catalogue as text: what `entropy-rl methods` prints and what docs/methods.md holds (generated)."""

from __future__ import annotations

import dataclasses
import re
import sys

ARXIV = re.compile(r"arXiv:(\d{4}\.\d{4,5})")


def describe_params(params_cls: type) -> str:
    """'name=default, ...' of a Params dataclass."""
    parts = []
    for f in dataclasses.fields(params_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        parts.append(f"{f.name}={default!r}")
    return ", ".join(parts)


def papers(text: str) -> list[str]:
    """arXiv ids cited in a text, in order, without duplicates."""
    return list(dict.fromkeys(ARXIV.findall(text or "")))


def paper_links(text: str) -> str:
    """Markdown links to the arXiv abstracts cited in `text`, or '-'."""
    ids = papers(text)
    return ", ".join(f"[{i}](https://arxiv.org/abs/{i})" for i in ids) if ids else "-"


def module_doc(obj: object) -> str:
    """The docstring of the module defining `obj`."""
    return sys.modules[obj.__module__].__doc__ or ""


def method_needs(m) -> str:
    """What a policy-loss method needs beyond log-probs: its declared inputs, trainer metrics, state, selection."""
    from entropy_rl.core.policy_loss import TOKEN_INPUTS

    needs = [text for name, text in TOKEN_INPUTS.items() if name in m.inputs]
    needs += [f"feature `{n}` (pre-update pass)" for n, _ in m.old_features]
    needs += [f"feature `{n}` (update pass)" for n, _ in m.cur_features]
    needs += [f"trainer metric `{k}` every step" for k in m.requires]
    if m.make_state is not None:
        needs.append("state (checkpointed)")
    if m.select is not None:
        needs.append("mini-batch selection")
    return "; ".join(needs) or "log-probs only"


def render_markdown() -> str:
    """docs/methods.md: the packaged method variants, then every registered method, estimator, rollout strategy and
    task with stage, needs, papers and defaults."""
    import entropy_rl.advantages  # noqa: F401
    import entropy_rl.methods  # noqa: F401
    from entropy_rl.core.advantage import ADVANTAGES
    from entropy_rl.core.policy_loss import POLICY_LOSSES
    from entropy_rl.presets import packaged_variants, settings
    from entropy_rl.rollout.strategies import STRATEGIES
    from entropy_rl.tasks import TASKS

    out = [
        "# Methods",
        "",
        "Generated from the registries by `entropy-rl methods --markdown > docs/methods.md` (a test fails when it is",
        "stale). Each method's module docstring states how it departs from the official code; the specification is",
        "shared/methods.md. Methods that change how rollouts are sampled are rollout strategies (`rollout.strategy`, below).",
        "",
        "## Method variants (`entropy-rl compare --methods NAME`)",
        "",
        "Partial configs with each method's paper settings, shipped in the package (`entropy_rl/presets/methods/`),",
        "so a name means the same thing in every directory. A variant name wins over a registry key of the same name;",
        "`--methods-dir DIR` adds your own `DIR/<name>.yaml`, which win over these.",
        "",
        "| variant | what | sets |",
        "|---|---|---|",
    ]
    out += [f"| `{v.name}` | {v.description} | {', '.join(f'`{x}`' for x in settings(v.overrides))} |"
            for v in packaged_variants()]
    out += [
        "",
        "## Policy-loss methods (`algorithm.method`)",
        "",
        "| method | stage | summary | needs | papers | neutral (= ppo_clip) |",
        "|---|---|---|---|---|---|",
    ]
    for name in POLICY_LOSSES.names():
        e = POLICY_LOSSES.get(name)
        neutral = "-" if e.obj.neutral is None else (", ".join(f"{k}={v!r}" for k, v in e.obj.neutral) or "defaults")
        out.append(f"| `{name}` | {e.obj.stage} | {e.doc} | {method_needs(e.obj)} | "
                   f"{paper_links(e.obj.paper + ' ' + module_doc(e.obj.loss))} | {neutral} |")
    out += ["", "### Parameters (defaults)", ""]
    out += [f"- `{n}`: {describe_params(POLICY_LOSSES.get(n).params_cls)}" for n in POLICY_LOSSES.names()]
    out += ["", "## Advantage estimators (`algorithm.advantage`)", "", "| estimator | summary | papers | parameters (defaults) |",
            "|---|---|---|---|"]
    for name in ADVANTAGES.names():
        e = ADVANTAGES.get(name)
        out.append(f"| `{name}` | {e.doc} | {paper_links(module_doc(e.obj))} | {describe_params(e.params_cls)} |")
    out += ["", "## Rollout strategies (`rollout.strategy`)", "",
            ("How a step's rollouts are sampled; each reports `rollout/tokens_generated` and `rollout/branches`. "
             "Parameters go in `rollout.strategy_params`."), "",
            "| strategy | summary | papers | parameters (defaults) |", "|---|---|---|---|"]
    for name in STRATEGIES.names():
        e = STRATEGIES.get(name)
        out.append(f"| `{name}` | {e.doc} | {paper_links(module_doc(e.obj))} | {describe_params(e.params_cls) or '-'} |")
    out += ["", "## Tasks (`task.name`)", "", "| task | summary | parameters (defaults) |", "|---|---|---|"]
    for name in TASKS.names():
        e = TASKS.get(name)
        out.append(f"| `{name}` | {e.doc} | {describe_params(e.params_cls)} |")
    return "\n".join(out) + "\n"
