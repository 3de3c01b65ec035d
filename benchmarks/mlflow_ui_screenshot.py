"""A screenshot of MLflow's Compare view of one λ sweep, taken in headless Chromium driven as a user clicks.

Starts ``mlflow ui`` on a free 127.0.0.1 port over a snapshot of the study's store (sqlite's online backup:
a running study keeps writing to its own file and the UI never holds a lock on it), then, in the browser:
switches the UI to "Model training" (MLflow 3.17 opens every experiment in its GenAI view first), opens the
study's experiment, expands the parent run ``study/<study>``, ticks the child runs of one (model, layer,
control, seed) λ sweep, presses "Compare", sets the parallel-coordinates plot to ``lambda`` against the
Jacobian sparsity (``eval/jac/frac_above_0.01``) and the CE loss score (``eval/ce/score_mean``), turns
"Show diff only" on for the parameters (λ is the one that differs) and writes a PNG of the page.

    .venv/bin/python benchmarks/mlflow_ui_screenshot.py [--tracking-uri sqlite:///mlflow.db]
        [--study jsae-default] [--model tiny-neox --layer 2 --control trained --seed 0]
        [--out docs/mlflow-compare.png] [--size 1600x1200] [--timeout 300]

The default store is the default study's (``config/config.yaml``: ``sqlite:///mlflow.db`` in the working
directory, written by ``make run``); an ``http(s)://`` URI is a running tracking server, whose own UI is used.
The default sweep is the one with the most λ values among evaluated pairs (ties: the trained control, then
the lowest seed). Needs Chromium (Debian: ``apt-get install chromium``), driven over the Chrome DevTools
Protocol on a pipe (``--remote-debugging-pipe``): no websocket library, no debugging port.
``tests/test_mlflow_ui.py`` drives the same steps on a store written by jsae's tracker and asserts on the page.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import math
import os
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsae.eval.metrics import CE_SCORE_MEAN_KEY, JAC_FRAC_KEY
from jsae.tracking import DEFAULT_TRACKING_URI, PARENT_TAG, STUDY_KIND, eval_key, sqlite_path, study_run_name

#: The Jacobian sparsity (the paper's share of |J| > 0.01) and the CE loss score, as the pair's run logs them.
JAC_METRIC, CE_METRIC = eval_key(JAC_FRAC_KEY), eval_key(CE_SCORE_MEAN_KEY)
LAMBDA_PARAM = "lambda"
DEFAULT_STUDY = "jsae-default"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "mlflow-compare.png"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in containers
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str | None:
    """The first Chromium-family browser on PATH, else None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


# --------------------------------------------------------------------------------------------------
# The browser: Chrome DevTools Protocol over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated JSON)


class BrowserError(RuntimeError):
    """A DevTools command failed, the browser died, or the page never reached the awaited state."""


class Chromium:
    """One headless Chromium with one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, profile: Path, size: tuple[int, int] = (1600, 1000), timeout: float = 60.0):
        self.timeout = timeout
        self.size = size
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire() -> None:  # in the child: the pipes as fds 3 (commands) and 4 (replies)
            hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)  # either may be fd 3 or 4 already
            hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(hi_r, 3)  # inheritable: Chromium gets them, nothing else of ours
            os.dup2(hi_w, 4)

        self._log = open(profile.with_suffix(".log"), "w")  # Chromium's own messages, beside its profile
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            preexec_fn=wire, close_fds=False, start_new_session=True,  # its renderers and zygotes: one group
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"}, session=None)["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                     session=None)["sessionId"]
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    # -- protocol
    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None | bool = True,
             timeout: float | None = None) -> dict[str, Any]:
        """Send one command (to the page's session unless ``session=None``) and return its result."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        sid = self.session if session is True else session
        if sid:
            msg["sessionId"] = sid
        self._write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}")
                return reply.get("result", {})

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._to_child, view):]

    def _read(self, deadline: float, what: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no reply to {what} within {self.timeout:.0f} s")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium exited (code {self.proc.poll()}) while waiting for {what}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        """Browser.close, then the process group's SIGTERM / SIGKILL if it does not exit."""
        with contextlib.suppress(OSError):
            self._write(json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        _stop_group(self.proc)  # also any helper it left behind (crashpad, a renderer)
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- page
    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def js(self, expression: str, *, timeout: float | None = None) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True,
                                             "userGesture": True}, timeout=timeout)
        if "exceptionDetails" in res:
            details = res["exceptionDetails"]
            raise BrowserError(f"JavaScript failed: {details.get('exception', {}).get('description') or details}")
        return res.get("result", {}).get("value")

    def wait(self, expression: str, what: str, timeout: float | None = None, poll: float = 0.25) -> Any:
        """Poll until the expression is truthy; returns its value. ``what`` names the awaited state."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout or self.timeout:.0f} s waiting for {what}")
            time.sleep(poll)

    def click_at(self, x: float, y: float) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": x, "y": y, "button": "left" if kind != "mouseMoved" else "none",
                       "clickCount": 1 if kind != "mouseMoved" else 0})

    def click(self, element_js: str, what: str, at: float = 0.5) -> None:
        """Click the element ``element_js`` evaluates to (scrolled into view first), at its vertical middle and
        the fraction ``at`` of its width (0.5: the centre), once it has stopped moving (rows slide in when a
        parent run is expanded; on a loaded machine for a while)."""
        where = f"""(() => {{ const el = {element_js}; if (!el) return null;
            el.scrollIntoView({{block: 'center', inline: 'center'}}); const r = el.getBoundingClientRect();
            return r.width > 0 && r.height > 0 ? [r.x + r.width * {at}, r.y + r.height / 2] : null; }})()"""
        deadline = time.monotonic() + self.timeout
        box = self.wait(where, what)
        while time.monotonic() < deadline:
            time.sleep(0.2)
            again = self.wait(where, what)
            if again == box:
                break
            box = again
        self.click_at(*box)

    def click_until(self, element_js: str, done_js: str, what: str, settle: float = 10.0, at: float = 0.5) -> None:
        """Click the element until ``done_js`` holds (``settle`` seconds after each click), within the timeout:
        a click that lands while the page re-renders is lost, not an error."""
        deadline = time.monotonic() + self.timeout
        while True:
            self.click(element_js, what, at)
            try:
                self.wait(done_js, what, timeout=min(settle, max(deadline - time.monotonic(), 1.0)))
                return
            except BrowserError:
                if time.monotonic() >= deadline:
                    raise BrowserError(f"timed out after {self.timeout:.0f} s clicking {what}") from None

    def type_text(self, text: str) -> None:
        self.send("Input.insertText", {"text": text})

    def press(self, key: str, code: int) -> None:
        base = {"key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}
        self.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", **base})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **base})

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


# --------------------------------------------------------------------------------------------------
# The UI, step by step as a user clicks through it (MLflow 3.17's DOM: ag-grid rows keyed by run id)


def _q(text: str) -> str:
    """A JavaScript string literal."""
    return json.dumps(text)


def _by_text(selector: str, text: str) -> str:
    """JavaScript for the last element matching ``selector`` whose whole text is ``text``."""
    return f"[...document.querySelectorAll({_q(selector)})].filter(e => e.textContent.trim() === {_q(text)}).pop()"


def close_assistant(page: Chromium) -> None:
    """Close MLflow's "Assistant" side panel if it is open (it takes a third of the window)."""
    page.js("document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')?.click()")


def open_runs_table(page: Chromium, base: str, experiment_id: str) -> None:
    """Open the experiment and switch the UI to "Model training": MLflow 3.17 opens every experiment in its
    GenAI view (traces) until the user picks the classic runs table with that switch (kept in localStorage)."""
    page.goto(f"{base}/#/experiments/{experiment_id}")
    page.click_until(_by_text("[role=button], button", "Model training"),
                     "location.hash.includes('/runs') && !!document.querySelector('.ag-row[row-id]')",
                     "the GenAI / Model training switch (to the runs table)", settle=30)
    close_assistant(page)


def select_runs_and_compare(page: Chromium, parent_id: str, run_ids: Sequence[str]) -> list[str]:
    """Expand the parent run, tick exactly ``run_ids`` and press "Compare"; returns the run ids of the compare
    page (its URL), in its column order."""
    row = f".ag-row[row-id={_q(parent_id)}]"
    page.wait(f"!!document.querySelector({_q(row)})", f"the parent run {parent_id} in the runs table")
    child = f"!!document.querySelector({_q(f'.ag-row[row-id={_q(run_ids[0])}]')})"
    if not page.js(child):  # collapsed (the UI remembers it per browser profile)
        page.click_until(f"document.querySelector({_q(row + ' button')})", child, "the parent run's expand button")
    checkbox = ".ag-pinned-left-cols-container .ag-row[row-id={}] input.ag-checkbox-input"
    ticked = ("[...document.querySelectorAll('.ag-pinned-left-cols-container .ag-row[row-id]')]"
              ".filter(r => r.querySelector('input.ag-checkbox-input')?.checked).map(r => r.getAttribute('row-id'))")
    for _ in range(3):  # the table may re-render while rows load: toggle what is wrong, then look again
        now = set(page.js(ticked))
        for rid in [r for r in run_ids if r not in now] + sorted(now - set(run_ids)):
            box = checkbox.format(_q(rid))
            want = rid in run_ids
            page.click_until(f"document.querySelector({_q(box)})",
                             f"document.querySelector({_q(box)})?.checked === {json.dumps(want)}",
                             f"the checkbox of run {rid} ({'tick' if want else 'untick'})")
        time.sleep(0.5)
        if sorted(page.js(ticked)) == sorted(run_ids):
            break
    else:
        raise BrowserError(f"the runs table has {sorted(page.js(ticked))} ticked; expected {sorted(run_ids)}")
    page.click_until(_by_text("button", "Compare"), "location.hash.startsWith('#/compare-runs')",
                     "the Compare button", settle=30)
    page.wait("document.body.innerText.includes('Run details')", "the compare page's run details")
    close_assistant(page)
    return list(page.js("JSON.parse(new URLSearchParams(location.hash.split('?')[1]).get('runs'))"))


PCP_PANEL = "[role=tabpanel][id$=parallel-coordinates-plot]"


def _choose(page: Chromium, nth: int, values: Sequence[str], what: str) -> None:
    """Pick ``values`` in the parallel-coordinates plot's ``nth`` multi-select (0: parameters, 1: metrics)
    by typing each and pressing Enter, as a user does."""
    select = f"document.querySelectorAll({_q(PCP_PANEL + ' .du-bois-light-select')})[{nth}]"
    for value in values:
        # Right of the centre: the chips already chosen (and their remove icons) sit on the left.
        page.click_until(f"{select}?.querySelector('.du-bois-light-select-selector')",
                         f"{select}?.classList.contains('du-bois-light-select-open')", f"the {what} box", at=0.85)
        page.type_text(value)
        option = f".du-bois-light-select-dropdown:not(.du-bois-light-select-dropdown-hidden) [title={_q(value)}]"
        page.wait(f"!!document.querySelector({_q(option)})", f"{value!r} among the {what} offered")
        page.press("Enter", 13)
        page.wait(f"[...{select}.querySelectorAll('.du-bois-light-select-selection-item-content')]"
                  f".some(e => e.textContent.trim() === {_q(value)})", f"{value!r} chosen as one of the {what}")
        page.press("Escape", 27)


def plot_sweep(page: Chromium, params: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Set the parallel-coordinates plot to ``params`` against ``metrics``; returns its axes as drawn, left to
    right: ``{"title", "top", "bottom"}`` (the axis' range labels, as text)."""
    page.click_until(f"document.querySelector({_q(PCP_PANEL + ' [data-testid=clear-button]')})",
                     f"!document.querySelector({_q(PCP_PANEL + ' .du-bois-light-select-selection-item')})",
                     "Clear All (the plot's choices)")
    _choose(page, 0, params, "parameters")
    _choose(page, 1, metrics, "metrics")
    axes = f"""[...document.querySelectorAll({_q(PCP_PANEL + ' .pcp-plot g.y-axis')})].map(a => ({{
        title: a.querySelector('.axis-title')?.textContent,
        top: a.querySelector('.axis-extent-top-text')?.textContent,
        bottom: a.querySelector('.axis-extent-bottom-text')?.textContent}}))"""
    want = json.dumps(list(params) + list(metrics), separators=(",", ":"))  # as JSON.stringify writes it
    page.wait(f"JSON.stringify({axes}.map(a => a.title)) === {_q(want)}", f"the plot's axes to read {want}")
    page.js("document.activeElement?.blur()")
    return page.js(axes)


def _section(title: str) -> str:
    """JavaScript for the compare page's collapsible section titled ``title`` (Parameters, Metrics, Tags)."""
    return (f"[...document.querySelectorAll('.du-bois-light-collapse-item')].find(s => "
            f"s.querySelector('.du-bois-light-collapse-header')?.textContent.trim() === {_q(title)})")


def show_diff_only(page: Chromium, title: str) -> None:
    """Switch the section's "Show diff only" on (rows whose value is the same in every run are hidden)."""
    switch = f"{_section(title)}?.querySelector('button[role=switch]')"
    on = f"{switch}?.getAttribute('aria-checked') === 'true'"
    if not page.js(on):
        page.click_until(switch, on, f"{title}' Show diff only")


def read_compare_page(page: Chromium) -> dict[str, Any]:
    """What the compare page shows, as text: ``title``; ``runs``: the Run details rows (``"Run ID:"``,
    ``"Run Name:"``, ...) as lists over the run columns; ``params`` and ``metrics``: ``{name: [value per run]}``.

    The metrics section is a virtualised grid (a names column beside a values grid, cells placed by their
    ``top`` and ``left``): only the rows it has rendered are read, so a store with many metrics shows its first
    rows only (the first ~17 at the default size).
    """
    return page.js(f"""(() => {{
        const text = e => e.textContent.trim();
        const table = t => Object.fromEntries([...(t?.querySelectorAll('tr') || [])].map(
            tr => [text(tr.cells[0]), [...tr.cells].slice(1).map(text)]));  // the row's name, then one per run
        const metrics = {{}};
        const grids = {_section('Metrics')}?.querySelectorAll('.ReactVirtualized__Grid') || [];
        if (grids.length >= 2) {{
            const names = {{}};
            for (const c of grids[0].querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > div'))
                names[c.style.top] = text(c);
            const cells = [...grids[1].querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > div')];
            for (const [top, name] of Object.entries(names))
                metrics[name] = cells.filter(c => c.style.top === top)
                    .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left)).map(text);
        }}
        return {{
            title: [...document.querySelectorAll('h2')].map(text).find(h => h.startsWith('Comparing')),
            runs: table([...document.querySelectorAll('table')].find(
                t => t.rows[0] && text(t.rows[0].cells[0]) === 'Run ID:')),
            params: table({_section('Parameters')}?.querySelector('table')),
            metrics,
        }};
    }})()""")


# --------------------------------------------------------------------------------------------------
# The store: the study's parent run and one λ sweep among its children; `mlflow ui` over a snapshot of it


@dataclass(frozen=True)
class Sweep:
    """One (model, layer, control, seed) λ sweep under a study's parent run; ``runs``: ``(run_id, λ, name)``
    in ascending λ."""

    experiment_id: str
    parent_id: str
    model: str
    layer: str
    control: str
    seed: str
    runs: tuple[tuple[str, float, str], ...]

    @property
    def run_ids(self) -> list[str]:
        return [r[0] for r in self.runs]

    @property
    def lambdas(self) -> list[float]:
        return [r[1] for r in self.runs]

    def describe(self) -> str:
        lams = ", ".join(f"{lam:g}" for lam in self.lambdas)
        return f"{self.model}/L{self.layer}/{self.control} seed {self.seed}: λ = {lams}"


def find_sweep(uri: str, study: str, *, model: str | None = None, layer: int | None = None,
               control: str | None = None, seed: int | None = None,
               metrics: Sequence[str] = (JAC_METRIC, CE_METRIC), label: str | None = None) -> Sweep:
    """The λ sweep to compare: the study's parent run (``study/<study>``) and its child runs that have the
    ``lambda`` param and every one of ``metrics`` (evaluated pairs), grouped by their ``model``, ``layer``,
    ``control`` tags and ``seed`` param and filtered by the given ones; the group with the most λ values
    (ties: the trained control, then the lowest seed). A one-line ``ValueError`` when there is none, naming
    the store as ``label`` (default: ``uri``)."""
    from mlflow.tracking import MlflowClient

    where = label or uri

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise ValueError(f"study {study!r} has no experiment in {where}; expected one of {names}")
    parents = client.search_runs([exp.experiment_id], f"tags.kind = '{STUDY_KIND}' and "
                                 f"attributes.run_name = '{study_run_name(study)}'", max_results=1,
                                 order_by=["attributes.start_time ASC"])
    if not parents:
        raise ValueError(f"experiment {study!r} in {where} has no parent run {study_run_name(study)!r}; "
                         "expected a study initialised by the workflow (rule init_tracking)")
    parent = parents[0].info.run_id
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'", max_results=5000)
    wanted = {"model": model, "layer": layer, "control": control, "seed": seed}
    groups: dict[tuple[str, str, str, str], dict[float, tuple[str, float, str]]] = {}
    for run in children:
        tags, params = run.data.tags, run.data.params
        key = (tags.get("model", "?"), tags.get("layer", "?"), tags.get("control", "?"), params.get("seed", "?"))
        if LAMBDA_PARAM not in params or any(m not in run.data.metrics for m in metrics):
            continue
        if any(v is not None and str(v) != k for v, k in zip(wanted.values(), key)):
            continue
        lam = float(params[LAMBDA_PARAM])
        groups.setdefault(key, {}).setdefault(lam, (run.info.run_id, lam, run.info.run_name))
    if not groups:
        given = ", ".join(f"{k}={v}" for k, v in wanted.items() if v is not None) or "any"
        raise ValueError(f"no child run of {study_run_name(study)!r} in {where} ({given}) has the param "
                         f"{LAMBDA_PARAM!r} and the metrics {', '.join(metrics)}; expected evaluated pairs")
    key = max(groups, key=lambda k: (len(groups[k]), k[2] == "trained", -_as_number(k[3])))
    return Sweep(exp.experiment_id, parent, *key, runs=tuple(sorted(groups[key].values(), key=lambda r: r[1])))


def _as_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


@contextlib.contextmanager
def store_snapshot(uri: str, workdir: Path) -> Iterator[str]:
    """A ``sqlite:`` store as a consistent copy in ``workdir`` (sqlite's online backup: a running study may be
    writing to it), so the UI's server reads the copy and never locks the study's file; other URIs as they are."""
    db = sqlite_path(uri)
    if db is None:
        yield uri
        return
    if not db.is_file():
        raise FileNotFoundError(f"tracking store {db} does not exist; expected a study's store (run `make run`, "
                                "or pass --tracking-uri)")
    copy = workdir / "mlflow.db"
    with contextlib.closing(sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True)) as src, \
            contextlib.closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    yield f"sqlite:///{copy}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def mlflow_ui(uri: str, workdir: Path, timeout: float = 300.0) -> Iterator[str]:
    """``mlflow ui`` for ``uri`` on a free 127.0.0.1 port, one worker, without MLflow's job runner (seven
    background processes the UI does not need); yields its base URL. Stopped with its whole process group.
    A tracking server (``http(s)://``) is already a UI: it is yielded as it is."""
    if uri.startswith(("http://", "https://")):
        yield uri.rstrip("/")
        return
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(workdir / "mlflow-ui.log", "w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_http(f"{base}/health", timeout, proc)
            except (TimeoutError, RuntimeError) as exc:
                tail = (workdir / "mlflow-ui.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"{exc}; the server's last log lines: {' | '.join(tail) or '(none)'}") from None
            yield base
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group ``proc`` leads (started in its own session), SIGKILL after 20 s; the
    group's other members get the signals even when ``proc`` itself has exited."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------------------------------


@dataclass
class CompareView:
    """What the browser saw: the compare page's run ids (its URL), the plot's axes and the page's tables."""

    run_ids: list[str]
    axes: list[dict[str, Any]]
    page: dict[str, Any]


def compare_sweep(page: Chromium, base: str, sweep: Sweep, metrics: Sequence[str] = (JAC_METRIC, CE_METRIC),
                  screenshot: Path | None = None, on_failure: Path | None = None) -> CompareView:
    """The user's path from the experiment to the Compare view of ``sweep``, ``lambda`` plotted against
    ``metrics``, the parameters shown where they differ; a PNG of the page to ``screenshot`` if given.
    A step that fails raises :class:`BrowserError`, after a PNG of the page as it was to ``on_failure``."""
    try:
        open_runs_table(page, base, sweep.experiment_id)
        run_ids = select_runs_and_compare(page, sweep.parent_id, sweep.run_ids)
        axes = plot_sweep(page, [LAMBDA_PARAM], metrics)
        show_diff_only(page, "Parameters")
    except BrowserError as exc:
        if on_failure is None:
            raise
        with contextlib.suppress(BrowserError):
            page.screenshot(on_failure)
        raise BrowserError(f"{exc} (the page then: {on_failure})") from None
    view = CompareView(run_ids, axes, read_compare_page(page))
    if screenshot is not None:
        page.js("document.activeElement?.blur(); for (const e of document.querySelectorAll('*')) "
                "if (e.scrollTop > 0) e.scrollTop = 0")  # back to the page's top (its panes scroll, not the window)
        page.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 0, "y": page.size[1] - 1})
        time.sleep(0.5)  # tooltips close, the plot settles
        page.screenshot(screenshot)
    return view


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                   help="the study's store (default: %(default)s, the default study's, in the working directory)")
    p.add_argument("--study", default=DEFAULT_STUDY, help="the study (its experiment; default: %(default)s)")
    p.add_argument("--model", default=None, help="the sweep's model (its short name, the run's `model` tag)")
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--control", default=None, help="trained or reinit")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the PNG (default: docs/mlflow-compare.png)")
    p.add_argument("--size", default="1600x1200", help="the browser window, WIDTHxHEIGHT (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds for the server to start and for each page state awaited (default: %(default)s)")
    args = p.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        p.error(f"no Chromium on PATH; expected one of {', '.join(CHROMIUM_NAMES)} (Debian: apt-get install chromium)")
    parts = args.size.lower().split("x")
    if len(parts) != 2 or not all(v.isdigit() and int(v) >= 400 for v in parts):
        p.error(f"--size {args.size!r} is invalid; expected WIDTHxHEIGHT, each >= 400, e.g. 1600x1200")
    size = (int(parts[0]), int(parts[1]))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jsae-mlflow-ui-") as tmp:
        work = Path(tmp)
        try:
            with store_snapshot(args.tracking_uri, work) as uri:
                sweep = find_sweep(uri, args.study, model=args.model, layer=args.layer, control=args.control,
                                   seed=args.seed, label=args.tracking_uri)
                print(f"sweep {sweep.describe()} ({len(sweep.runs)} runs under {sweep.parent_id})")
                with mlflow_ui(uri, work, args.timeout) as base, \
                        Chromium(binary, work / "chromium", size, args.timeout) as page:
                    view = compare_sweep(page, base, sweep, screenshot=args.out,
                                         on_failure=Path(tempfile.gettempdir()) / "jsae-mlflow-ui-failed.png")
        except (ValueError, FileNotFoundError, BrowserError, TimeoutError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if sorted(view.run_ids) != sorted(sweep.run_ids):
        print(f"error: the compare page shows runs {view.run_ids}; expected {sweep.run_ids}", file=sys.stderr)
        return 2
    for axis in view.axes:
        print(f"axis {axis['title']}: {axis['bottom']} .. {axis['top']}")
    print(f"{view.page.get('title')}; wrote {args.out} in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
