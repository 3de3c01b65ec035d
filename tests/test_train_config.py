"""The training settings are declared once: the schema's sae:/train: keys, the dataclasses' fields and
the CLI's options agree (names, defaults, choices), and what the Snakemake rule hands over round-trips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from jsae.train import RunOptions, TrainConfig
from jsae.train.cli import build_parser, configs_from_args, option_name, parse_args

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
MICRO = REPO / ".test" / "config" / "config.yaml"
#: TrainConfig fields the study config gives outside sae:/train: (per pair from `lambdas`; the top-level seed).
ELSEWHERE = {"lam": "lambdas", "seed": "seed"}
REQUIRED = ["--model", "m", "--layer", "0", "--cache", "c.h5", "--out", "run"]


def schema_sections() -> dict[str, dict]:
    props = yaml.safe_load(SCHEMA.read_text())["properties"]
    return {name: props[name]["properties"] for name in ("sae", "train")}


def fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for cls in (TrainConfig, RunOptions) for f in dataclasses.fields(cls)}


def test_schema_keys_are_the_dataclass_fields():
    sae, train = schema_sections().values()
    assert not set(sae) & set(train)
    assert set(sae) | set(train) == set(fields()) - set(ELSEWHERE)
    top = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert all(key in top for key in ELSEWHERE.values())


def test_schema_defaults_and_choices_are_the_dataclass_ones():
    for section in schema_sections().values():
        for name, spec in section.items():
            f = fields()[name]
            if f.default is None:  # absent from the study config = the field's None
                assert "default" not in spec and "null" in spec["type"], name
            else:
                assert spec["default"] == f.default and type(spec["default"]) in (int, float, str), name
            if "choices" in f.metadata:
                assert tuple(spec["enum"]) == tuple(f.metadata["choices"]), name


def test_cli_options_are_the_dataclass_fields():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for name, f in fields().items():
        action = actions[name]
        assert action.option_strings == [option_name(name)], name
        expected = None if f.default is dataclasses.MISSING else f.default
        assert action.default == expected and f.metadata["help"] in action.help, name
        assert action.choices == f.metadata.get("choices"), name


def test_cli_round_trip_gives_the_same_config():
    config = TrainConfig(lam=0.3, n_tokens=5000, batch_size=100, k=4, expansion=2.5, k_out=3, n_latents_out=40,
                         lr=1e-3, lr_warmup_frac=0.05, lr_decay_frac=0.3, lam_warmup_frac=0.1, adam_beta1=0.8,
                         adam_beta2=0.99, adam_eps=1e-6, grad_clip=1.5, seed=7, dead_window_tokens=1000,
                         auxk_coef=0.03125, auxk_k=5, dtype="float64", normalize_activations="expected_norm")
    options = RunOptions(checkpoint_every=7, log_every=3)
    values = {**dataclasses.asdict(config), **dataclasses.asdict(options)}
    argv = [arg for name, value in values.items() if value is not None for arg in (option_name(name), str(value))]
    assert configs_from_args(parse_args([*REQUIRED, *argv])) == (config, options)
    # --config-json carries the same; options given explicitly override it
    from_json = configs_from_args(parse_args([*REQUIRED, "--config-json", json.dumps(values)]))
    assert from_json == (config, options)
    cfg, _ = configs_from_args(parse_args([*REQUIRED, "--config-json", json.dumps(values), "--k", "5"]))
    assert cfg == dataclasses.replace(config, k=5)
    # the defaults: only lam is required
    assert configs_from_args(parse_args([*REQUIRED, "--lam", "1"])) == (TrainConfig(lam=1.0), RunOptions())
    assert configs_from_args(parse_args([*REQUIRED, "--lam", "1", "--grad-clip", "none"]))[0].grad_clip is None


def test_what_the_rule_passes_gives_the_study_settings():
    """train.smk's params: the study's sae: and train: sections, lam from the wildcard, the top-level seed."""
    from snakemake.utils import validate

    study = yaml.safe_load(MICRO.read_text())
    validate(study, str(SCHEMA))  # fills the schema's defaults, as the workflow does
    handed = {**study["sae"], **study["train"], "lam": float("1"), "seed": study["seed"]}
    config, options = configs_from_args(parse_args([*REQUIRED, "--config-json", json.dumps(handed, sort_keys=True)]))
    for name, value in handed.items():
        got = getattr(config, name) if hasattr(config, name) else getattr(options, name)
        assert got == value, name
    assert isinstance(config.expansion, float)  # JSON's 4 becomes 4.0, as --expansion 4 gives


@pytest.mark.parametrize(("text", "message"), [
    ('{"tokens": 10}', "unknown keys tokens; expected some of lam, n_tokens"),
    ("[1, 2]", "holds a list; expected a JSON object"),
    ("{lam: 1}", "is not valid JSON"),
])
def test_bad_config_json_is_a_usage_error(text, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([*REQUIRED, "--config-json", text])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_lam_is_required_and_values_are_checked():
    with pytest.raises(ValueError, match=r"lam is not set; expected --lam"):
        configs_from_args(parse_args(REQUIRED))
    with pytest.raises(ValueError, match=r"log_every=0 is invalid; expected a positive integer"):
        configs_from_args(parse_args([*REQUIRED, "--lam", "1", "--log-every", "0"]))
    with pytest.raises(ValueError, match=r"lr_decay_frac=1.5 is invalid; expected a fraction in \[0, 1\]"):
        configs_from_args(parse_args([*REQUIRED, "--config-json", '{"lam": 1, "lr_decay_frac": 1.5}']))


def test_n_latents_overrides_expansion():
    config = TrainConfig(lam=1.0, n_latents=64)
    assert config.expansion is None and config.dims(8, 8)["n_latents_in"] == 64
    assert TrainConfig(**dataclasses.asdict(config)) == config


def test_auxk_k_defaults_to_half_the_width_within_the_latents():
    dims = TrainConfig(lam=1.0, auxk_coef=1 / 32, k=4, expansion=4).dims(128, 64)
    assert (dims["k_aux_in"], dims["k_aux_out"]) == (64, 32)  # Gao et al.: d / 2
    dims = TrainConfig(lam=1.0, k=1, n_latents=10, n_latents_out=3).dims(128, 1)
    assert (dims["k_aux_in"], dims["k_aux_out"]) == (10, 1)  # at most the latents, at least 1
    dims = TrainConfig(lam=1.0, auxk_k=7).dims(128, 64)
    assert (dims["k_aux_in"], dims["k_aux_out"]) == (7, 7)
