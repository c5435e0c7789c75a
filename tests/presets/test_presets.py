"""Method variants: shipped as package data, valid, listed by `entropy-rl methods` from any directory, and read
safely (no path names, no YAML aliases, no oversized files)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from entropy_rl.cli import main
from entropy_rl.presets import REGISTRY_SOURCE, check_name, packaged_files, packaged_variants, parse_variant, resolve
from entropy_rl.train.compare import deep_merge
from entropy_rl.train.config import Config, ConfigError, from_dict, to_dict, validate

ROOT = Path(__file__).resolve().parents[2]


def test_every_packaged_variant_is_a_valid_config_with_a_description() -> None:
    variants = packaged_variants()
    assert len(variants) >= 26 and {"clip_higher", "clip_cov", "steer_linear", "kl_cov_32b"} <= {v.name for v in variants}
    for v in variants:
        assert v.description, f"{v.name}.yaml: first line should be a '# what it is' comment"
        validate(from_dict(Config, deep_merge(to_dict(Config()), v.overrides)))


def test_package_data_ships_every_variant_file() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["entropy_rl"]
    files = [p.relative_to(ROOT / "entropy_rl").as_posix() for p in (ROOT / "entropy_rl" / "presets").rglob("*")
             if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), files
    assert sorted(packaged_files()) == sorted(Path(f).stem for f in files)


def test_methods_lists_the_variants_from_any_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "Method variants" in out and "clip_higher" in out and "algorithm.method_params.eps_high=0.28" in out
    assert resolve("clip_cov").overrides["algorithm"]["method_params"] == {"eps_low": 1.0, "eps_high": 1.0}


def test_a_name_that_is_no_variant_is_a_registry_key() -> None:
    v = resolve("ppo_clip_typo")
    assert (v.source, v.overrides) == (REGISTRY_SOURCE, {"algorithm": {"method": "ppo_clip_typo"}})


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "a\\b", ".x", "x.yaml", "", "x" * 65, "_sft"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not a variant or registry name"):
        check_name(name)


def test_bad_variant_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="v.yaml: YAML aliases"):
        parse_variant("a: &a [1, 2]\nb: [*a, *a]\n", "v.yaml")
    with pytest.raises(ConfigError, match="v.yaml: top level must be a mapping"):
        parse_variant("- 1\n", "v.yaml")
    with pytest.raises(ConfigError, match="v.yaml: invalid YAML"):
        parse_variant("a: [1,\n", "v.yaml")
    (tmp_path / "big.yaml").write_text("# " + "x" * 70000 + "\n")
    with pytest.raises(ConfigError, match="big.yaml: 65537 characters"):
        resolve("big", tmp_path)
    (tmp_path / "latin.yaml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="latin.yaml: cannot read"):
        resolve("latin", tmp_path)
