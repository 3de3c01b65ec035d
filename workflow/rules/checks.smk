# Config checks beyond the JSON schema (cross references, ranges that depend on other keys): each
# raises a one-line error when this file is included, before anything is computed from the config.

import json
import math
import os
import sys
from pathlib import Path

import yaml

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def _fail(message):
    """One-line config error before Snakemake builds the DAG: the message on stderr, exit status 1, no traceback."""
    print(f"config error: {message}", file=sys.stderr)
    raise SystemExit(1)


def validate_config(cfg, schema):
    """The JSON schema (fills defaults), with jsonschema's verdict in one line: its first lines name the bad key
    and where it is; the rest is a dump of the schema."""
    try:
        validate(cfg, schema=schema)
    except WorkflowError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        what = next((line.removeprefix("ValidationError: ") for line in lines if line.startswith("ValidationError")),
                    lines[-1] if lines else str(exc))
        where = next((line.removeprefix("On instance").rstrip(":") for line in lines if line.startswith("On instance")),
                     "")
        _fail(f"{what}" + (f" (at config{where})" if where and where != "" else "") + "; see workflow/schemas/config.schema.yaml")


def chosen_jsae_lam(cfg):
    """The lambda shown as "JSAE": figures.jsae_lam, else the paper's sweet-spot range (the largest
    lambda <= 1, or the smallest one above 1 if there is none)."""
    if cfg["figures"]["jsae_lam"] is not None:
        return fmt_lam(cfg["figures"]["jsae_lam"])
    positive = sorted(float(x) for x in cfg["lambdas"] if x > 0)
    return fmt_lam(max([x for x in positive if x <= 1] or positive[:1]))


def model_section(cfg, m, section):
    """The study's `sae:` / `train:` block with the model's own keys (models[].sae / models[].train) on top."""
    return {**cfg[section], **(m.get(section) or {})}


def model_lambda_list(cfg, m):
    """The model's lambdas as path text: its own `lambdas`, else the study's."""
    return [fmt_lam(x) for x in (m.get("lambdas") or cfg["lambdas"])]


def _check_models(cfg):
    names = [m["name"] for m in cfg["models"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        _fail(f"model names must be unique; repeated: {', '.join(dupes)}")
    for m in cfg["models"]:
        name = m["name"]
        if name.endswith(REINIT_SUFFIX):
            _fail(f"model name {name!r} must not end in {REINIT_SUFFIX!r} (reserved for the re-initialised control)")
        for section in ("sae", "train"):
            unknown = sorted(set(m.get(section) or {}) - set(_SCHEMA_KEYS[section]))
            if unknown:
                _fail(f"model {name!r}: {section}.{unknown[0]} is not a `{section}:` key; expected one of "
                      f"{', '.join(_SCHEMA_KEYS[section])}")
        if "revision" in m and m["source"] != "pretrained":
            _fail(f"model {name!r}: `revision` is only for source 'pretrained' with a Hugging Face id `spec` "
                  f"(this model's source is {m['source']!r})")
        if m["source"] == "pretrained":  # a revision only with a hub id: the package's own check (jsae.data.models)
            from jsae.data.models import check_revision, split_revision

            try:
                check_revision(*split_revision(m["spec"], m.get("revision")))
            except ValueError as exc:
                _fail(f"model {name!r}: {exc}")
        if m["source"] == "planted":
            _check_planted(m)
            continue
        if "planted" in m:
            _fail(f"model {name!r}: `planted` is only for source 'planted' (this model's source is {m['source']!r})")
        n_layers = m["pretrain"]["layers"] if m["source"] == "pretrain" else m.get("n_layers")
        if m["source"] == "pretrain" and m.get("n_layers") not in (None, n_layers):
            _fail(f"model {name!r}: n_layers={m['n_layers']} contradicts pretrain.layers={n_layers}")
        if m["source"] == "pretrain" and "spec" in m:
            _fail(f"model {name!r}: `spec` is only for source 'pretrained' (this model is pretrained by the workflow)")
        if n_layers is not None:
            bad = [layer for layer in m["layers"] if layer >= n_layers]
            if bad:
                _fail(f"model {name!r}: layer {bad[0]} is out of range; expected 0..{n_layers - 1} ({n_layers} layers)")


def _check_planted(m):
    """A planted model: one MLP (layer 0), no spec, and a `planted:` block the package's PlantedConfig accepts."""
    from jsae.data.planted import PlantedConfig

    name = m["name"]
    if "spec" in m:
        _fail(f"model {name!r}: `spec` is only for source 'pretrained' (this model is planted by the workflow)")
    bad = [layer for layer in m["layers"] if layer != 0]
    if bad:
        _fail(f"model {name!r}: layer {bad[0]} is out of range; expected layers: [0] (a planted model is one MLP)")
    if m.get("n_layers") not in (None, 1):
        _fail(f"model {name!r}: n_layers={m['n_layers']} is invalid; expected 1 (a planted model is one MLP)")
    try:
        PlantedConfig.from_dict(m.get("planted") or {})
    except (TypeError, ValueError) as exc:
        _fail(f"model {name!r} planted: {exc}")


def _check_lambdas(cfg):
    lams = {fmt_lam(x) for x in cfg["lambdas"]}
    if len(lams) != len(cfg["lambdas"]):
        _fail(f"lambdas {cfg['lambdas']} contain duplicates after formatting")
    if len(lams - {"0"}) == 0:
        _fail(f"lambdas {cfg['lambdas']} need at least one value > 0 (the JSAEs)")
    if "0" not in lams:
        _fail(f"lambdas {cfg['lambdas']} must include 0 (the traditional-SAE baseline every figure compares with)")
    jsae = chosen_jsae_lam(cfg)
    for m in cfg["models"]:
        own = set(model_lambda_list(cfg, m))
        if "lambdas" in m and len(own) != len(m["lambdas"]):
            _fail(f"model {m['name']!r}: lambdas {m['lambdas']} contain duplicates after formatting")
        missing = [lam for lam in ("0", jsae) if lam not in own]
        if missing:
            _fail(f"model {m['name']!r}: lambdas [{', '.join(sorted(own, key=float))}] lack {missing[0]}; expected 0 (the traditional "
                  f"SAEs) and the JSAE lambda {jsae} (figures.jsae_lam) that the claims compare")
        lams = lams | own
    for key in ("probes.lambdas", "tables.lambdas", "reinit.lambdas", "seeds.lambdas"):
        section = key.split(".")[0]
        extra = [x for x in cfg[section]["lambdas"] or [] if fmt_lam(x) not in lams]
        if extra:
            _fail(f"{key} value {extra[0]} is not in `lambdas` {cfg['lambdas']}")
    jsae_lam = cfg["figures"]["jsae_lam"]
    if jsae_lam is not None:
        if fmt_lam(jsae_lam) not in lams:
            _fail(f"figures.jsae_lam={jsae_lam} is not in `lambdas` {cfg['lambdas']}")
        if jsae_lam == 0:
            _fail("figures.jsae_lam must be > 0 (lambda = 0 is the traditional baseline it is compared with)")


def _check_figure_pairs(cfg):
    """fig7 and fig8 compare lambda 0 with the JSAE lambda: both must be trained / probed."""
    jsae_lam, names = chosen_jsae_lam(cfg), cfg["figures"]["names"]
    probe_lams = cfg["probes"]["lambdas"]
    if "fig8" in names and cfg["probes"]["enabled"] and probe_lams is not None:
        missing = [lam for lam in ("0", jsae_lam) if lam not in {fmt_lam(x) for x in probe_lams}]
        if missing:
            _fail(f"fig8 compares probes at lambda 0 and {jsae_lam}; add {missing[0]} to probes.lambdas")
    reinit_lams = cfg["reinit"]["lambdas"]
    if "fig7" in names and cfg["reinit"]["enabled"] and reinit_lams is not None:
        missing = [lam for lam in ("0", jsae_lam) if lam not in {fmt_lam(x) for x in reinit_lams}]
        if missing:
            _fail(
                f"fig7 compares trained and re-initialised pairs at lambda 0 and {jsae_lam}; "
                f"add {missing[0]} to reinit.lambdas"
            )


def _local_model_config(spec):
    """config.json of a local save_pretrained directory, or None (a hub id: not derivable without loading)."""
    path = Path(os.path.expanduser(str(spec)))
    if path.is_dir() and (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())
    return None


def _model_dims(m):
    """(d_model, max context) of a configured model where the config determines them, else (None, None)."""
    if m["source"] == "pretrain":
        return m["pretrain"]["hidden"], m["pretrain"]["context_length"]
    if m["source"] == "planted":  # no context: its rows are sampled one by one
        return (m.get("planted") or {}).get("d", 32), None
    hf = _local_model_config(m["spec"]) or {}
    width = next((hf[k] for k in ("hidden_size", "n_embd", "d_model") if isinstance(hf.get(k), int)), None)
    context = next((hf[k] for k in ("max_position_embeddings", "n_positions", "n_ctx") if isinstance(hf.get(k), int)),
                   None)
    return width, context


def _check_derived(cfg):
    """What the jobs would only find out after heavy compute: each pair's training config (the package's own
    TrainConfig, so its checks are the same ones), SAE sizes against the model's width, the pretrained model's
    architecture, contexts and token budgets."""
    from jsae.data.pretrain import PretrainConfig
    from jsae.train.config import configs_from_values

    for lam in [*cfg["lambdas"], *(x for m in cfg["models"] for x in m.get("lambdas") or [])]:
        if not math.isfinite(float(lam)):
            _fail(f"lambdas value {lam} is invalid; expected finite numbers >= 0")
    for m in cfg["models"]:
        own = m.get("sae") or m.get("train")
        try:
            train, _ = configs_from_values({**model_section(cfg, m, "sae"), **model_section(cfg, m, "train"),
                                            "lam": max(float(x) for x in model_lambda_list(cfg, m)),
                                            "seed": cfg["seed"]})
        except (TypeError, ValueError) as exc:
            _fail(f"model {m['name']!r} sae/train: {exc}" if own else f"sae/train: {exc}")
        width, context = _model_dims(m)
        if m["source"] == "pretrain":
            p = m["pretrain"]
            try:
                PretrainConfig(hidden=p["hidden"], layers=p["layers"], vocab_size=p["vocab_size"],
                               context_length=p["context_length"], minutes=p["minutes"],
                               max_steps=p.get("max_steps")).validate()
            except ValueError as exc:
                _fail(f"model {m['name']!r} pretrain: {exc}")
        if width is not None:
            try:
                train.dims(width, width)
            except ValueError as exc:
                _fail(f"model {m['name']!r} (width {width}): {exc}")
        if context is not None and cfg["cache"]["context_length"] > context:
            _fail(f"cache.context_length={cfg['cache']['context_length']} exceeds model {m['name']!r}'s context of "
                  f"{context} tokens; expected <= {context}")
    ev, cache = cfg["evaluate"], cfg["cache"]
    for key in ("n_tokens", "ce_tokens"):
        if ev[key] > cache["eval_tokens"]:
            _fail(f"evaluate.{key}={ev[key]} exceeds cache.eval_tokens={cache['eval_tokens']} (the validation "
                  f"tokens cached); expected <= {cache['eval_tokens']}")
    planted = [m["name"] for m in cfg["models"] if m["source"] == "planted"]
    if "fig7" in cfg["figures"]["names"] and len(planted) == len(cfg["models"]):  # enabling reinit would not help
        _fail(f"figures.names has fig7 (trained vs re-initialised model) but every model is planted "
              f"({', '.join(planted)}), and a planted model has no re-init control; remove fig7")
    if "fig7" in cfg["figures"]["names"] and not cfg["reinit"]["enabled"]:
        _fail("figures.names has fig7 (trained vs re-initialised model) but reinit.enabled is false; "
              "enable the control or remove fig7")
    if "fig_recovery" in cfg["figures"]["names"] and not planted:
        _fail("figures.names has fig_recovery (recovery of a planted ground truth) but no model has source "
              "'planted'; add a planted model or remove fig_recovery")


_SCHEMA_PATH = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
# the keys a model may override in its own `sae:` / `train:` block: the study-level blocks' keys
_SCHEMA_KEYS = {section: list(yaml.safe_load(_SCHEMA_PATH.read_text())["properties"][section]["properties"])
                for section in ("sae", "train")}


def check_config(cfg):
    validate_config(cfg, "../schemas/config.schema.yaml")
    corpora = cfg.get("corpora") or {}
    # a study of planted models alone reads no text (the schema requires corpora otherwise)
    if any(m["source"] != "planted" for m in cfg["models"]):
        for key in ("train_corpus", "eval_corpus"):
            if cfg[key] not in corpora:
                _fail(f"{key}={cfg[key]!r} is not a corpus in `corpora` (have: {', '.join(sorted(corpora))})")
    _check_models(cfg)
    _check_lambdas(cfg)
    _check_figure_pairs(cfg)
    _check_derived(cfg)


check_config(config)
