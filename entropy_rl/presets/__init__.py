"""Method variants: named partial configs with a method's paper settings, shipped as package data.

A variant is a YAML file `<name>.yaml` holding a partial config (`algorithm.method`, `method_params`, and any
other setting the method needs, e.g. `train.dynamics_every: 1` for the controller), whose first comment line
says what it is. The packaged ones live in `entropy_rl/presets/methods/` and are read with importlib.resources,
so a name means the same thing whatever the current directory is; they are the one source of paper settings
(method modules keep only their defaults). `entropy-rl compare --methods NAME` resolves NAME, in this order, to
a user variant in `--methods-dir`, a packaged variant, or a policy-loss registry key with default parameters.
`entropy-rl methods` lists the packaged variants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from entropy_rl.train.config import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # what a method name may be: no path separators, no dots
REGISTRY_SOURCE = "registry key (default parameters)"  # the source of a name that is no variant
MAX_VARIANT_BYTES = 65536  # a variant is a few lines; refuse anything that is plainly not one


@dataclass(frozen=True)
class Variant:
    """What a method name resolved to.

    Attributes:
        name: the name as given (`--methods`), also the run directory's name.
        source: where it came from, for logs and summaries: a file path, `packaged variant <file>`, or
            REGISTRY_SOURCE.
        overrides: the partial config merged over the base config.
        description: the variant file's first comment line ('' for a registry key).
    """

    name: str
    source: str
    overrides: dict[str, Any]
    description: str


def check_name(name: str) -> None:
    """Raise ConfigError unless `name` is a safe method name (letters, digits, '_', '-'; not a path)."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"method name '{name}' is not a variant or registry name "
                           "(letters, digits, '_' and '-' only; `entropy-rl methods` lists them)")


def parse_variant(text: str, where: str) -> tuple[dict[str, Any], str]:
    """(partial config, first comment line) of a variant file's text; ConfigError names `where` on bad input."""
    if len(text) > MAX_VARIANT_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters, more than a variant's {MAX_VARIANT_BYTES}")
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise ConfigError(f"{where}: YAML aliases (*name) are not allowed in a variant")
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    return data, first[1:].strip() if first.startswith("#") else ""


def packaged_files() -> dict[str, Any]:
    """{name: importlib.resources Traversable} of the packaged variant files, sorted by name."""
    root = resources.files(__name__) / "methods"
    files = {f.name[: -len(".yaml")]: f for f in root.iterdir() if f.name.endswith(".yaml")}
    return dict(sorted(files.items()))


def packaged_variants() -> list[Variant]:
    """Every packaged variant, by name."""
    return [_packaged(name, f) for name, f in packaged_files().items()]


def _packaged(name: str, file: Any) -> Variant:
    where = f"packaged variant {name}.yaml"
    overrides, description = parse_variant(file.read_text(encoding="utf-8"), where)
    return Variant(name, where, overrides, description)


def resolve(name: str, user_dir: Path | None = None) -> Variant:
    """A method name as `<user_dir>/<name>.yaml`, else a packaged variant, else `algorithm.method=<name>`.

    The registry fallback is not checked here: config validation names an unknown key with suggestions.

    Args:
        name: the method name; must pass `check_name`.
        user_dir: a directory of user variants (`--methods-dir`), or None.

    Raises:
        ConfigError: an unsafe name, or a variant file that cannot be read or is not a mapping.
    """
    check_name(name)
    if user_dir is not None:
        path = user_dir / f"{name}.yaml"
        if path.is_file():
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read(MAX_VARIANT_BYTES + 1)
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path}: cannot read: {e}") from None
            overrides, description = parse_variant(text, str(path))
            return Variant(name, str(path), overrides, description)
    files = packaged_files()
    if name in files:
        return _packaged(name, files[name])
    return Variant(name, REGISTRY_SOURCE, {"algorithm": {"method": name}}, "")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted.path: leaf value}, depth first; lists are leaves, empty dicts contribute nothing
    (merged over a config, they change nothing)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings(overrides: dict[str, Any]) -> list[str]:
    """A partial config as `dotted.key=value` strings (the override syntax): what a variant sets."""
    return [f"{k}={v}" for k, v in flatten(overrides).items()]
