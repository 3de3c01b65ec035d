"""Qualitative tables of the computations a JSAE pair finds (paper section 5.2, appendix C).

1. Over the evaluation tokens, accumulate the sparse (output latent, input latent) statistics of the
   non-zero |J| elements (:class:`jsae.eval.metrics.GlobalJacobianAccumulator`).
2. Rank output latents by the mean of their non-zero |J| elements (appendix C), among latents active
   on at least ``min_active`` tokens (a latent seen once is not a finding); for each, its top input
   latents by mean non-zero |J_ij| with the count, mean and std of those values, among inputs whose
   J_ij is non-zero on at least ``min_count`` tokens (a mean over one token, std 0, is not a ranking).
3. For every listed latent, the max-activating windows of 16 tokens ending at the token where it
   peaks (one window per context region: windows of one latent never overlap), taken from the
   cache's token ids and decoded with the tokenizer.
4. Render one self-contained HTML page (tokens shaded by the latent's activation divided by its
   maximum over the dataset, as appendix C) and a markdown version.

The activation shown is what the SAE's TopK reports (0 when the latent is not among the k largest).
"""

from __future__ import annotations

import argparse
import html
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from jsae.checks import check_positive_int
from jsae.cli import tracking_uri
from jsae.eval.inputs import (
    cache_rows,
    load_inputs,
    pair_identity,
    pair_parser,
    run_field,
    run_pair_command,
    token_count,
)
from jsae.eval.metrics import GlobalJacobianAccumulator
from jsae.io import atomic_path
from jsae.nn.pair import JSAEPair
from jsae.tracking import log_to_pair_run

log = logging.getLogger("jsae.eval.tables")

WINDOW = 16  # tokens per example (appendix C)
MIN_ACTIVE = 10  # output latents ranked only when active on >= this many evaluation tokens
MIN_COUNT = 5  # input latents ranked only when their J_ij is non-zero on >= this many tokens


@dataclass
class Example:
    """One window of tokens with the latent's activation on each (NaN where none is cached)."""

    tokens: list[str]
    activations: list[float]
    max_activation: float
    context: int
    position: int


@dataclass
class LatentTable:
    side: str  # "out" or "in"
    latent: int
    examples: list[Example] = field(default_factory=list)
    # for input latents: their connection to the output latent
    count: int | None = None
    mean: float | None = None
    std: float | None = None
    rank: int | None = None


@dataclass
class OutputEntry:
    latent: int
    mean_abs: float
    n_nonzero: int
    n_active: int
    table: LatentTable
    inputs: list[LatentTable]


@dataclass
class TablesReport:
    entries: list[OutputEntry]
    identity: dict[str, Any]  # the pair's identity; ``name``: the model's name for titles (else from ``model``)
    n_tokens: int
    min_active: int = MIN_ACTIVE  # the minimum actually applied to output latents (1 when none reached it)
    min_count: int = MIN_COUNT


# --------------------------------------------------------------------------------------------------
# Computation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def jacobian_connections(pair: JSAEPair, batches: Iterable[Tensor], *, max_entries: int | None = 20_000_000,
                         total: int | None = None, progress: bool = True) -> GlobalJacobianAccumulator:
    """The sparse (output, input) |J| statistics over the token batches (step 1)."""
    glob = GlobalJacobianAccumulator(pair.sae_out.n_latents, pair.sae_in.n_latents, max_entries=max_entries)
    device = pair.sae_in.W_enc.device
    for x in tqdm(batches, total=total, desc="jacobian", disable=not progress, leave=False):
        out = pair(x.to(device=device, dtype=pair.sae_in.W_enc.dtype))
        glob.update(out.jacobian, out.out_idx, out.in_idx, out.out_vals)
    if glob.n_tokens == 0:
        raise ValueError("the evaluation set is empty; expected at least one token")
    return glob


def _output_minimum(glob: GlobalJacobianAccumulator, min_active: int) -> int:
    """``min_active``, or 1 (every active latent) when no output latent reached it."""
    if bool((glob.out_active >= min_active).any()):
        return min_active
    log.warning("no output latent was active on >= %d tokens; ranking every active latent", min_active)
    return 1


def top_inputs(glob: GlobalJacobianAccumulator, out_latent: int, n: int, min_count: int) -> dict[str, np.ndarray]:
    """:meth:`GlobalJacobianAccumulator.top_inputs` among inputs with J_ij non-zero on >= ``min_count`` tokens."""
    ranked = glob.top_inputs(out_latent, glob.n_in)  # every input of this output latent, by mean non-zero |J_ij|
    keep = np.flatnonzero(ranked["count"] >= min_count)[:n]
    return {k: v[keep] for k, v in ranked.items()}


def select_latents(glob: GlobalJacobianAccumulator, *, n_output_latents: int = 10, n_inputs: int = 10,
                   min_active: int = MIN_ACTIVE,
                   min_count: int = MIN_COUNT) -> list[tuple[int, float, int, int, dict[str, np.ndarray]]]:
    """Top output latents by mean non-zero |J| and, for each, its top inputs (step 2).

    Returns ``(latent, mean_abs, n_nonzero, n_active, top_inputs)`` per output latent.
    """
    for name, v in (("n_output_latents", n_output_latents), ("n_inputs", n_inputs), ("min_active", min_active),
                    ("min_count", min_count)):
        check_positive_int(name, v)
    mean, nnz = glob.output_mean_abs()
    eligible = glob.out_active >= _output_minimum(glob, min_active)
    score = torch.where(eligible & (nnz > 0), mean, torch.full_like(mean, -1.0))
    order = torch.argsort(score, descending=True)[:n_output_latents]
    order = order[score[order] >= 0]
    return [(int(i), float(mean[i]), int(nnz[i]), int(glob.out_active[i]),
             top_inputs(glob, int(i), n_inputs, min_count)) for i in order]


class _TopTokens:
    """Per latent, the ``m`` largest activations seen so far and their rows (merged batch by batch)."""

    def __init__(self, n_latents: int, m: int) -> None:
        self.vals = torch.full((n_latents, m), -1.0, dtype=torch.float64)
        self.rows = torch.full((n_latents, m), -1, dtype=torch.long)

    def update(self, acts: Tensor, row0: int) -> None:  # acts [T, n_latents]
        acts = acts.detach().double().cpu().t()
        rows = torch.arange(row0, row0 + acts.shape[1]).expand_as(acts)
        v = torch.cat([self.vals, acts], 1)
        r = torch.cat([self.rows, rows], 1)
        top = v.topk(self.vals.shape[1], dim=1)
        self.vals, self.rows = top.values, r.gather(1, top.indices)


def latent_activations(vals: Tensor, idx: Tensor, latents: Tensor) -> Tensor:
    """``[T, len(latents)]``: each latent's TopK value on each token (0 if not selected)."""
    if latents.numel() == 0:
        return vals.new_zeros(vals.shape[0], 0)
    return (vals[:, :, None] * (idx[:, :, None] == latents[None, None, :])).sum(1)


@torch.no_grad()
def top_activating_rows(pair: JSAEPair, batches: Iterable[Tensor], out_latents: list[int], in_latents: list[int], *,
                        n_candidates: int, total: int | None = None,
                        progress: bool = True) -> dict[tuple[str, int], list[tuple[float, int]]]:
    """For each listed latent, its ``n_candidates`` largest activations and their rows (step 3)."""
    device = pair.sae_in.W_enc.device
    o = torch.tensor(out_latents, dtype=torch.long, device=device)
    i = torch.tensor(in_latents, dtype=torch.long, device=device)
    top_o, top_i = _TopTokens(len(out_latents), n_candidates), _TopTokens(len(in_latents), n_candidates)
    row = 0
    for x in tqdm(batches, total=total, desc="max-activating", disable=not progress, leave=False):
        out = pair(x.to(device=device, dtype=pair.sae_in.W_enc.dtype), with_jacobian=False)
        top_o.update(latent_activations(out.out_vals, out.out_idx, o), row)
        top_i.update(latent_activations(out.in_vals, out.in_idx, i), row)
        row += x.shape[0]
    result: dict[tuple[str, int], list[tuple[float, int]]] = {}
    for side, lat, top in (("out", out_latents, top_o), ("in", in_latents, top_i)):
        for n, latent in enumerate(lat):
            result[(side, latent)] = [(float(v), int(r)) for v, r in zip(top.vals[n], top.rows[n]) if v > 0 and r >= 0]
    return result


def distinct_windows(candidates: list[tuple[float, int]], context_index: np.ndarray, position: np.ndarray,
                     n_examples: int, window: int = WINDOW) -> list[tuple[float, int]]:
    """Greedy by activation: keep a row unless a kept row of the same context is within ``window`` positions."""
    kept: list[tuple[float, int]] = []
    for value, row in sorted(candidates, key=lambda vr: -vr[0]):
        c, p = int(context_index[row]), int(position[row])
        if any(int(context_index[r]) == c and abs(int(position[r]) - p) < window for _, r in kept):
            continue
        kept.append((value, row))
        if len(kept) == n_examples:
            break
    return kept


class RowLookup:
    """Row of x for (context, position); -1 where the cache holds none (position 0, truncated tail)."""

    def __init__(self, context_index: np.ndarray, position: np.ndarray, n_contexts: int, context_length: int) -> None:
        dtype = np.int32 if len(context_index) < 2**31 else np.int64
        self.table = np.full((n_contexts, context_length), -1, dtype=dtype)
        self.table[context_index, position] = np.arange(len(context_index), dtype=dtype)

    def rows(self, context: int, positions: np.ndarray) -> np.ndarray:
        return self.table[context, positions].astype(np.int64)


def read_rows(read: Callable[[int, int], Tensor], rows: np.ndarray) -> Tensor:
    """x for arbitrary rows, reading each contiguous run once."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise ValueError("no rows to read")
    out = []
    start = 0
    for k in range(1, len(rows) + 1):
        if k == len(rows) or rows[k] != rows[k - 1] + 1:
            out.append(read(int(rows[start]), int(rows[k - 1]) + 1))
            start = k
    return torch.cat(out)


@dataclass
class _Window:
    side: str
    latent: int
    context: int
    position: int
    positions: np.ndarray  # context positions shown (position 0, the BOS, is left out as appendix C does)
    rows: np.ndarray  # cache row of each shown position (-1 where none)


@torch.no_grad()
def window_examples(pair: JSAEPair, requests: list[tuple[str, int, int]], *, read: Callable[[int, int], Tensor],
                    lookup: RowLookup, contexts: np.ndarray, context_index: np.ndarray, position: np.ndarray,
                    decode: Callable[[int], str], window: int = WINDOW, batch_size: int = 4096) -> list[Example]:
    """For each ``(side, latent, row)``: the ``window`` tokens ending at ``row``'s token (BOS excluded)
    with the latent's activation on each. All windows' rows are read once and encoded together."""
    wins = []
    for side, latent, row in requests:
        c, p = int(context_index[row]), int(position[row])
        positions = np.arange(max(1, p - window + 1), p + 1)
        wins.append(_Window(side, latent, c, p, positions, lookup.rows(c, positions)))
    all_rows = np.concatenate([w.rows for w in wins]) if wins else np.zeros(0, dtype=np.int64)
    uniq = np.unique(all_rows[all_rows >= 0])
    vals = {"in": [], "out": []}
    idxs = {"in": [], "out": []}
    device = pair.sae_in.W_enc.device
    for s0 in range(0, len(uniq), batch_size):
        x = read_rows(read, uniq[s0 : s0 + batch_size]).to(device=device, dtype=pair.sae_in.W_enc.dtype)
        out = pair(x, with_jacobian=False)
        for side, v, i in (("in", out.in_vals, out.in_idx), ("out", out.out_vals, out.out_idx)):
            vals[side].append(v.double().cpu())
            idxs[side].append(i.cpu())
    cat = {side: (torch.cat(vals[side]), torch.cat(idxs[side])) if vals[side] else None for side in vals}
    examples = []
    for w in wins:
        acts = np.full(len(w.positions), np.nan)
        have = w.rows >= 0
        if have.any():
            v, i = cat[w.side]
            at = torch.from_numpy(np.searchsorted(uniq, w.rows[have]))
            acts[have] = (v[at] * (i[at] == w.latent)).sum(-1).numpy()
        tokens = [decode(int(t)) for t in contexts[w.context, w.positions]]
        examples.append(Example(tokens=tokens, activations=acts.tolist(),
                                max_activation=float(np.nanmax(acts)) if have.any() else 0.0,
                                context=w.context, position=w.position))
    return examples


def make_tables(
    pair: JSAEPair,
    cache: Any,
    decode: Callable[[int], str],
    *,
    n_tokens: int | None = None,
    batch_size: int = 2048,
    n_output_latents: int = 10,
    n_inputs: int = 10,
    n_examples: int = 8,
    min_active: int = MIN_ACTIVE,
    min_count: int = MIN_COUNT,
    identity: dict[str, Any] | None = None,
    progress: bool = True,
) -> TablesReport:
    """Everything the page shows, from a pair and a cache (``read``, ``n_tokens``, ``contexts()``,
    ``context_index``, ``position``, ``context_length``)."""
    check_positive_int("n_examples", n_examples)
    n = token_count(cache, n_tokens)
    n_batches = -(-n // batch_size)
    glob = jacobian_connections(pair, cache_rows(cache, n, batch_size), total=n_batches, progress=progress)
    chosen = select_latents(glob, n_output_latents=n_output_latents, n_inputs=n_inputs, min_active=min_active,
                            min_count=min_count)
    out_latents = [c[0] for c in chosen]
    in_latents = sorted({int(j) for c in chosen for j in c[4]["in_latent"]})
    log.info("top %d output latents; %d distinct input latents", len(out_latents), len(in_latents))
    tops = top_activating_rows(pair, cache_rows(cache, n, batch_size), out_latents, in_latents,
                               n_candidates=8 * n_examples, total=n_batches, progress=progress)
    context_index, position = np.asarray(cache.context_index), np.asarray(cache.position)
    contexts = np.asarray(cache.contexts())
    lookup = RowLookup(context_index, position, contexts.shape[0], contexts.shape[1])
    decoded: dict[int, str] = {}

    def dec(t: int) -> str:
        if t not in decoded:
            decoded[t] = decode(t)
        return decoded[t]

    # every (side, latent) listed and its distinct max-activating rows, then all windows at once
    tables: dict[tuple[str, int], list[int]] = {}
    for latent, *_rest, inputs in chosen:
        tables[("out", latent)] = []
        for j in inputs["in_latent"]:
            tables[("in", int(j))] = []
    for key in tables:
        tables[key] = [r for _, r in distinct_windows(tops[key], context_index, position, n_examples)]
    requests = [(side, latent, r) for (side, latent), rows in tables.items() for r in rows]
    log.info("rendering %d windows of %d tokens", len(requests), WINDOW)
    examples = window_examples(pair, requests, read=cache.read, lookup=lookup, contexts=contexts,
                               context_index=context_index, position=position, decode=dec, batch_size=batch_size)
    by_key: dict[tuple[str, int], list[Example]] = {key: [] for key in tables}
    for (side, latent, _), ex in zip(requests, examples):
        by_key[(side, latent)].append(ex)

    entries = []
    for latent, mean_abs, nnz, n_active, inputs in chosen:
        in_tables = [
            LatentTable("in", int(j), by_key[("in", int(j))], count=int(c), mean=float(m), std=float(s), rank=r)
            for r, (j, c, m, s) in enumerate(zip(inputs["in_latent"], inputs["count"], inputs["mean"], inputs["std"]))
        ]
        out_table = LatentTable("out", latent, by_key[("out", latent)])
        entries.append(OutputEntry(latent, mean_abs, nnz, n_active, out_table, in_tables))
    return TablesReport(entries, identity or {}, n, min_active=_output_minimum(glob, min_active), min_count=min_count)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-top: 1px solid #ccc; padding-top: 1em; }
h3 { font-size: 1em; margin: 1.2em 0 0.3em; font-weight: 600; }
table { border-collapse: collapse; margin: 0.3em 0 1em; }
td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.tokens span { white-space: pre; font-family: ui-monospace, monospace; font-size: 0.9em; border-radius: 2px; }
.meta { color: #555; font-size: 0.9em; }
.nocache { color: #999; }
"""
_COLOURS = {"out": (230, 60, 130), "in": (40, 110, 230)}  # output latents pink, input latents blue


def _token_html(token: str, act: float, scale: float, colour: tuple[int, int, int]) -> str:
    text = html.escape(token.replace("\n", "\\n"))
    if act != act:  # NaN: no cached activation (position 0)
        return f'<span class="nocache" title="not cached">{text}</span>'
    alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, act / scale))
    r, g, b = colour
    return f'<span style="background: rgba({r},{g},{b},{alpha:.3f})" title="{act:.4g}">{text}</span>'


def _examples_html(t: LatentTable, scale: float) -> str:
    if not t.examples:
        return '<p class="meta">no activating examples in the evaluation tokens</p>'
    rows = []
    for ex in t.examples:
        toks = "".join(_token_html(tok, a, scale, _COLOURS[t.side]) for tok, a in zip(ex.tokens, ex.activations))
        rows.append(f'<tr><td class="tokens">{toks}</td><td class="num">{ex.max_activation:.4g}</td></tr>')
    return "<table><tr><th>Example tokens</th><th class=\"num\">Max. activation</th></tr>" + "".join(rows) + "</table>"


def _scale(t: LatentTable) -> float:
    return max((ex.max_activation for ex in t.examples), default=0.0)


def model_name(identity: dict[str, Any]) -> str:
    """The model's name for a title: ``identity['name']``, else the last part of its spec (never a path)."""
    if identity.get("name"):
        return str(identity["name"])
    spec = str(identity.get("model") or "")
    return spec.rstrip("/").rsplit("/", 1)[-1] or "model"


def name_from_output(out: str | Path) -> str | None:
    """The model's name from a workflow output path ``.../<model>/L<layer>/<control>/lam<lam>/<file>``."""
    from jsae.report.results import PATH_PATTERN  # the result layout's one parser

    m = PATH_PATTERN.search(Path(out).as_posix())
    return m["model"] if m else None


def title(report: TablesReport) -> str:
    ident = report.identity
    if not ident:
        return "JSAE qualitative tables"
    control = {"trained": "trained LM", "reinit": "re-initialised LM"}.get(str(ident.get("control")), "")
    lam = f"λ = {float(ident['lam']):g}" if ident.get("lam") is not None else ""
    detail = ", ".join(x for x in (control, lam) if x)
    return (f"JSAE qualitative tables: {model_name(ident)} layer {ident.get('layer', '?')}"
            + (f" ({detail})" if detail else ""))


def ranking_text(report: TablesReport) -> str:
    """How the latents were chosen, with the minimum counts (the page's and the markdown's header)."""
    return (f"Output latents ranked by the mean of their non-zero |J| elements, among those active on "
            f"≥ {report.min_active} evaluation tokens; input latents by mean non-zero |J_ij|, among those whose "
            f"J_ij is non-zero on ≥ {report.min_count} tokens (a mean over fewer tokens is not ranked).")


def render_html(report: TablesReport) -> str:
    """One self-contained page (inline CSS, no scripts or external resources)."""
    ident = report.identity
    head = title(report)
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(head)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(head)}</h1>"]
    desc = ", ".join(f"{k}={v}" for k, v in ident.items() if k in ("control", "lam", "k", "n_latents"))
    parts.append(f'<p class="meta">{html.escape(desc)}; {report.n_tokens} evaluation tokens. '
                 f"{html.escape(ranking_text(report))} "
                 "Token shading: the latent's activation divided by its maximum over the evaluation tokens.</p>")
    if not report.entries:
        parts.append("<p>No output latent was active on the evaluation tokens.</p>")
    for rank, e in enumerate(report.entries):
        parts.append(f"<h2>#{rank + 1}: output latent {e.latent}</h2>"
                     f"<p class=\"meta\">mean non-zero |J| = {e.mean_abs:.4g} "
                     f"over {e.n_nonzero} elements; active on {e.n_active} tokens</p>")
        parts.append(_examples_html(e.table, _scale(e.table)))
        if not e.inputs:
            parts.append(f'<p class="meta">no input latent has J non-zero on ≥ {report.min_count} tokens</p>')
        for t in e.inputs:
            parts.append(f"<h3>input latent {t.latent}</h3>"
                         f"<p class=\"meta\">rank {t.rank} for output latent {e.latent}: "
                         f"J non-zero on {t.count} tokens, mean {t.mean:.4g}, std {t.std:.4g}</p>")
            parts.append(_examples_html(t, _scale(t)))
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_escape(text: str) -> str:
    """Markdown table cell text: HTML entities for ``&<>`` (renderers pass raw HTML through), escaped markup."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char, escaped in (("\\", "\\\\"), ("|", "\\|"), ("\n", "\\n"), ("`", "\\`"), ("*", "\\*"), ("_", "\\_")):
        text = text.replace(char, escaped)
    return text


def _examples_md(t: LatentTable) -> list[str]:
    if not t.examples:
        return ["_no activating examples in the evaluation tokens_", ""]
    lines = ["| Example tokens (peak in bold, other active tokens in italics) | Max. activation |", "|---|---:|"]
    for ex in t.examples:
        toks = []
        for tok, a in zip(ex.tokens, ex.activations):
            s = _md_escape(tok)
            body = s.lstrip()
            if a == a and a > 0 and body:
                lead = s[: len(s) - len(body)]  # emphasis markers must touch the text, not a space
                s = f"{lead}**{body}**" if a == ex.max_activation else f"{lead}*{body}*"
            toks.append(s)
        lines.append(f"| {''.join(toks)} | {ex.max_activation:.4g} |")
    return [*lines, ""]


def render_markdown(report: TablesReport) -> str:
    ident = report.identity
    lines = [f"# {title(report)}", "",
             f"{', '.join(f'{k}={v}' for k, v in ident.items() if k in ('control', 'lam', 'k', 'n_latents'))}; "
             f"{report.n_tokens} evaluation tokens. {_md_escape(ranking_text(report))}", ""]
    for rank, e in enumerate(report.entries):
        lines += [f"## #{rank + 1}: output latent {e.latent}", "",
                  f"mean non-zero |J| = {e.mean_abs:.4g} over {e.n_nonzero} elements; "
                  f"active on {e.n_active} tokens", ""]
        lines += _examples_md(e.table)
        if not e.inputs:
            lines += [f"_no input latent has J non-zero on ≥ {report.min_count} tokens_", ""]
        lines += ["| rank | input latent | count | mean | std |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {t.rank} | {t.latent} | {t.count} | {t.mean:.4g} | {t.std:.4g} |" for t in e.inputs]
        lines.append("")
        for t in e.inputs:
            lines += [f"### input latent {t.latent} (rank {t.rank}: count {t.count}, mean {t.mean:.4g}, std "
                      f"{t.std:.4g})", ""]
            lines += _examples_md(t)
    return "\n".join(lines) + "\n"


def write_tables(out_html: str | Path, report: TablesReport) -> Path:
    """``tables.html`` and ``tables.md`` next to it, written atomically."""
    out_html = Path(out_html)
    md = out_html.with_suffix(".md")
    with atomic_path(md) as tmp:
        tmp.write_text(render_markdown(report), encoding="utf-8")
    with atomic_path(out_html) as tmp:
        tmp.write_text(render_html(report), encoding="utf-8")
    return md


def token_decoder(tokenizer: Any) -> Callable[[int], str]:
    """``id -> text`` of one token (its surface form, so words keep their leading space)."""
    if tokenizer is None:
        return lambda t: f"<{t}>"
    return lambda t: tokenizer.decode([t], clean_up_tokenization_spaces=False)


def cli(argv: list[str]) -> int:
    p = pair_parser(
        "python -m jsae tables",
        "Qualitative tables (paper section 5.2, appendix C): the top output latents by mean |J|, their "
        "top input latents, and max-activating 16-token windows. Writes tables.html and tables.md.",
    )
    p.add_argument("--out", required=True, help="output path of tables.html (tables.md goes next to it)")
    p.add_argument("--n-output-latents", type=int, default=10, help="output latents to show")
    p.add_argument("--n-inputs", type=int, default=10, help="input latents per output latent")
    p.add_argument("--n-examples", type=int, default=8, help="max-activating windows per latent")
    p.add_argument("--min-active", type=int, default=MIN_ACTIVE,
                   help="rank only output latents active on >= this many tokens")
    p.add_argument("--min-count", type=int, default=MIN_COUNT,
                   help="rank only input latents whose J_ij is non-zero on >= this many tokens")
    p.add_argument("--n-tokens", type=int, default=None, help="evaluation tokens (default: the whole cache)")
    p.add_argument("--batch-size", type=int, default=2048, help="tokens per pair forward")
    return run_pair_command(p, argv, _tables_cli)


def _tables_cli(args: argparse.Namespace) -> int:
    from jsae.data.planted import is_planted_dir

    if is_planted_dir(args.model):  # its cached rows are sampled, not text: there are no windows to show
        raise ValueError(f"--model {args.model} is a planted model; expected a language model (tables show text "
                         "windows, and a planted model's rows have none)")
    inputs = load_inputs(args.model, args.layer, args.run, args.cache, device=args.device)
    identity = pair_identity(inputs.run, inputs.pair)
    identity["name"] = name_from_output(args.out) or model_name(identity)  # titles name the model, not its path
    report = make_tables(inputs.pair, inputs.cache, token_decoder(inputs.tokenizer), n_tokens=args.n_tokens,
                         batch_size=args.batch_size, n_output_latents=args.n_output_latents, n_inputs=args.n_inputs,
                         n_examples=args.n_examples, min_active=args.min_active, min_count=args.min_count,
                         identity=identity,
                         progress=not args.no_progress)
    md = write_tables(args.out, report)
    log.info("wrote %s and %s (%d output latents)", args.out, md, len(report.entries))
    log_to_pair_run(tracking_uri(args.mlflow_uri), run_field(inputs.run, "mlflow_run_id"), {}, [args.out, md],
                    step=run_field(inputs.run, "n_steps"))
    return 0
