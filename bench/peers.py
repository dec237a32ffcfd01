"""Peers for ``overhead.py --peers``: other OpenAI instrumentations, each in its own venv.

Each peer is installed from PyPI into a virtual environment of its own, created
on first use under ``$WFLO_BENCH_PEERS_DIR`` (default ``/tmp/wflo-bench-peers``)
with the main venv's ``openai`` and ``opentelemetry-sdk`` versions. If the peer
does not work with that openai, a second venv gets the newest openai of the
previous major (``openai<3`` beside openai 3.x) and the table says so; if that
fails too, the peer is skipped with the reason. Nothing is ever estimated.

In the peer's venv, ``_peer_runner.py`` first checks the peer (``--method
check``: spans, attributes, metrics, content capture, whether it asks for a
usage chunk on streams, whether ``uninstrument()`` really restores the client),
then measures:

* in one process, A/B rounds exactly like ``overhead.py``, with the floor
  measured in the same process, when ``uninstrument()`` works;
* in separate processes when it does not (OpenLLMetry's leaves its wrappers
  in place): uninstrumented "A" processes (which also measure the floor A/B
  in-process) alternate with instrumented "B" processes, order flipped every
  pair; the overhead is the median over pairs of median(B) - median(A).

The cross-venv comparison is on µs (same machine, same canned client; the
openai version may differ, see the table) and on the ratio to each side's own
floor, which cancels most of what differs between the venvs' pipelines.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import openai

from _harness import MODES, Result, callgrind_command

CACHE_DIR = Path(os.environ.get("WFLO_BENCH_PEERS_DIR", "/tmp/wflo-bench-peers"))
RUNNER = Path(__file__).resolve().with_name("_peer_runner.py")
CALLGRIND_DIR = "/tmp/wflo-bench-callgrind"  # dumps, each read and deleted by the measured process
STAMP = ".wflo-bench-stamp.json"


@dataclass
class PeerSpec:
    key: str  # what --peers selects
    runner_name: str  # _peer_runner.py --peer
    label: str
    requirements: list[str]
    fallback_openai: bool = True  # try the newest openai of the previous major if the main one fails
    alias_httpx: bool = False
    install_note: str = ""


PEERS: dict[str, PeerSpec] = {
    spec.key: spec
    for spec in (
        PeerSpec(
            "otel-v2",
            "otel-v2",
            "OTel openai-v2",
            # 2.4b0 imports opentelemetry.util.genai.instruments, gone since util-genai 1.2b0,
            # while it accepts any util-genai >= 0.4b0: cap it below 1.2b0 (the bounds name
            # pre-releases, which lets pip pick them: util-genai has only pre-releases).
            ["opentelemetry-instrumentation-openai-v2>=2.0b0", "opentelemetry-util-genai>=0.4b0,<1.2b0"],
            install_note="opentelemetry-util-genai capped <1.2b0 (1.2b0+ dropped the "
            "opentelemetry.util.genai.instruments module the instrumentation imports)",
        ),
        PeerSpec("openinference", "openinference", "OpenInference", ["openinference-instrumentation-openai"]),
        PeerSpec("openllmetry", "openllmetry", "OpenLLMetry", ["opentelemetry-instrumentation-openai"]),
        # Not in the default set: openai-v2 on openai 3.x, made importable by httpx2's own
        # migration shim (httpx2.alias_httpx(), so its `from httpx import URL` gets httpx2's).
        PeerSpec(
            "otel-v2-alias",
            "otel-v2",
            "OTel openai-v2 +alias",
            ["opentelemetry-instrumentation-openai-v2>=2.0b0", "opentelemetry-util-genai>=0.4b0,<1.2b0"],
            fallback_openai=False,
            alias_httpx=True,
            install_note="httpx2.alias_httpx() called before import",
        ),
    )
}
DEFAULT_PEERS = ("otel-v2", "openinference", "openllmetry")


@dataclass
class PeerOutcome:
    spec: PeerSpec
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    check: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    openai_version: str = ""
    version: str = ""
    results: dict[str, Result] = field(default_factory=dict)  # "peer/mode", "floor/mode"
    pair_diffs: dict[str, list[float]] = field(default_factory=dict)  # separate-process method
    seconds: float = 0.0


# --------------------------------------------------------------------------- venvs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text.replace("<", "lt").replace("==", "")).strip("-")


def _tail(text: str, lines: int = 4) -> str:
    kept = [line for line in text.splitlines() if line.strip() and not line.startswith("WARNING: Location")]
    return " | ".join(kept[-lines:])


def ensure_venv(spec: PeerSpec, openai_req: str, log) -> tuple[Path | None, str]:
    """The venv's python for ``spec`` with ``openai_req``, created and installed on first use."""
    sdk = metadata.version("opentelemetry-sdk")
    requirements = [*spec.requirements, openai_req, f"opentelemetry-sdk=={sdk}", "wrapt"]
    venv = CACHE_DIR / f"{spec.runner_name}-{_slug(openai_req)}"
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    try:
        if python.exists() and json.loads(stamp.read_text()) == requirements:
            return python, ""
    except (OSError, ValueError):
        pass
    log(f"  creating {venv} and installing {' '.join(requirements)} ...")
    started = time.perf_counter()
    if venv.exists():
        import shutil

        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        return None, f"venv creation failed: {_tail(made.stderr)}"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, *requirements], capture_output=True, text=True)
    note = ""
    if done.returncode != 0:  # the peer may need another OTel SDK than ours: let pip choose
        requirements = [r for r in requirements if not r.startswith("opentelemetry-sdk")] + ["opentelemetry-sdk"]
        done = subprocess.run([*pip, *requirements], capture_output=True, text=True)
        note = f"opentelemetry-sdk=={sdk} did not resolve; pip chose the SDK"
        if done.returncode != 0:
            return None, f"pip install {' '.join(requirements)} failed: {_tail(done.stderr)}"
    stamp.write_text(json.dumps(requirements))
    log(f"  installed in {time.perf_counter() - started:.0f} s")
    return python, note


def run_runner(
    python: Path, spec: PeerSpec, method: str, extra: list[str], timeout: float = 900, counted: bool = False
) -> dict[str, Any]:
    """Run the peer's runner in its venv; ``counted``: under callgrind (``--clock instructions``)."""
    cmd = [str(python), str(RUNNER), "--peer", spec.runner_name, "--method", method, *extra]
    if spec.alias_httpx:
        cmd.append("--alias-httpx")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if counted:
        cmd, env = callgrind_command(cmd, CALLGRIND_DIR, env)
        timeout *= 8  # callgrind runs the interpreter some 50x slower
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"{method} run timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"ok": False, "reason": f"{method} run exited {done.returncode} without a result: {_tail(done.stderr)}"}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- measuring


def measure_peer(
    spec: PeerSpec, rounds: int, calls: int, warmup: int, clock: str, content: str, procs: int, log
) -> PeerOutcome:
    out = PeerOutcome(spec)
    if spec.install_note:
        out.notes.append(spec.install_note)
    main_openai = openai.__version__
    attempts = [f"openai=={main_openai}"]
    if spec.fallback_openai:
        attempts.append(f"openai<{main_openai.split('.')[0]}")
    common = ["--clock", clock, "--content", content]
    counted = clock == "instructions"  # the measured runs go under callgrind, the check does not
    python = None
    reasons = []
    for openai_req in attempts:
        python, note = ensure_venv(spec, openai_req, log)
        if python is None:
            reasons.append(f"{openai_req}: {note}")
            log(f"  {spec.key} does not work with {reasons[-1]}")
            continue
        if note:
            out.notes.append(note)
        check = run_runner(python, spec, "check", common, timeout=300)
        if check.get("ok"):
            out.check = check
            break
        reasons.append(f"{openai_req}: {check.get('reason')}")
        log(f"  {spec.key} does not work with {reasons[-1]}")
        python = None
    if python is None:
        out.skipped = "; ".join(reasons)
        return out
    versions = out.check["versions"]
    out.openai_version = versions["openai"]
    out.version = versions.get(_dist(spec), "?")
    if reasons:
        out.notes.append(f"fell back to openai {out.openai_version}: {reasons[0]}")

    started = time.perf_counter()
    sizes = ["--rounds", str(rounds), "--calls", str(calls), "--warmup", str(warmup)]
    if out.check.get("uninstrument_ok"):
        out.method = "1 process"
        log(f"  measuring {spec.key} in one process ({rounds} A/B pairs x {calls} calls) ...")
        got = run_runner(python, spec, "inprocess", [*common, *sizes], counted=counted)
        if not got.get("ok"):
            out.skipped = f"in-process run failed: {got.get('reason')}"
            return out
        for key, r in got["results"].items():
            name, mode = key.split("/")
            out.results[f"{'floor' if name == 'floor' else 'peer'}/{mode}"] = Result(r["baseline"], r["instrumented"])
    else:
        out.method = "A|B procs"
        per = max(3, rounds // 4)
        sizes = ["--rounds", str(per), "--calls", str(calls), "--warmup", str(warmup)]
        log(
            f"  {spec.key}: uninstrument() does not restore the client; measuring in separate processes "
            f"({procs} A|B pairs x {per} rounds x {calls} calls) ..."
        )
        floors = {mode: Result([], []) for mode in MODES}
        base_rounds: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
        instr_rounds: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
        for k in range(procs):
            order = ("baseline", "instrumented") if k % 2 == 0 else ("instrumented", "baseline")
            for method in order:
                got = run_runner(python, spec, method, [*common, *sizes], counted=counted)
                if not got.get("ok"):
                    out.skipped = f"{method} process failed: {got.get('reason')}"
                    return out
                for mode in MODES:
                    if method == "baseline":
                        r = got["results"][f"floor/{mode}"]
                        floors[mode].baseline.extend(r["baseline"])
                        floors[mode].instrumented.extend(r["instrumented"])
                        base_rounds[mode].append(r["baseline"])
                    else:
                        instr_rounds[mode].append(got["rounds"][mode])
        for mode in MODES:
            out.results[f"floor/{mode}"] = floors[mode]
            # One "pair" per process pair: medians of its rounds; Result's median/IQR of (B - A).
            a = [statistics.median(x) for x in base_rounds[mode]]
            b = [statistics.median(x) for x in instr_rounds[mode]]
            out.results[f"peer/{mode}"] = Result(a, b)
    out.seconds = time.perf_counter() - started
    return out


def _dist(spec: PeerSpec) -> str:
    return {
        "otel-v2": "opentelemetry-instrumentation-openai-v2",
        "openinference": "openinference-instrumentation-openai",
        "openllmetry": "opentelemetry-instrumentation-openai",
    }[spec.runner_name]


# --------------------------------------------------------------------------- report


MODE_LABEL = {"call": "non-stream", "stream": "stream"}


def report(
    wflo_results: dict[tuple[str, str], Result],
    outcomes: list[PeerOutcome],
    rounds: int,
    calls: int,
    procs: int,
    unit: str = "µs",
) -> None:
    wflo_version = _version("wflo-otel")
    print("\n" + "=" * 30 + " wflo and its peers " + "=" * 30)
    print(
        f"overhead = {unit} per call over the uninstrumented client (median of A/B pair differences, IQR in brackets);\n"
        "floor = one CLIENT span per call, measured in the SAME process/venv as the row; x floor = overhead / floor;\n"
        f"wflo÷ = wflo's overhead / the row's ({unit}, and normalised: wflo's x floor / the row's x floor).\n"
        f"1 process = {rounds} A/B pairs x {calls} calls in one process; A|B procs = {procs} pairs of separate "
        f"processes (uninstrumented A, instrumented B), {max(3, rounds // 4)} rounds each."
    )
    header = (
        f"{'mode':<11}{'instrumentation':<22}{'version':<9}{'openai':<8}{'method':<11}"
        f"{'base ' + unit:>11}{'floor ' + unit:>12}{'overhead ' + unit:>15}{'IQR':>17}{'x floor':>9}{'wflo÷ ' + unit:>12}{'wflo÷ norm':>11}"
    )
    print(header)
    print("-" * len(header))
    best: dict[str, tuple[float, float, str]] = {}
    for mode in MODES:
        wflo, wfloor = wflo_results[("wflo", mode)], wflo_results[("floor", mode)]
        w_ratio = wflo.overhead_us / wfloor.overhead_us
        rows = [("wflo", wflo_version, openai.__version__, "1 process", wflo, wfloor)]
        for o in outcomes:
            if o.skipped is None:
                rows.append((o.spec.label, o.version, o.openai_version, o.method, o.results[f"peer/{mode}"], o.results[f"floor/{mode}"]))
        for label, version, oa, method, r, floor in rows:
            lo, hi = r.spread_us
            ratio = r.overhead_us / floor.overhead_us if floor.overhead_us > 0 else float("nan")
            vs = wflo.overhead_us / r.overhead_us if r.overhead_us > 0 else float("nan")
            vs_norm = w_ratio / ratio if ratio > 0 else float("nan")
            print(
                f"{MODE_LABEL[mode]:<11}{label:<22}{version:<9}{oa:<8}{method:<11}"
                f"{r.base_us:>11.0f}{floor.overhead_us:>12.1f}{r.overhead_us:>15.1f}   [{lo:>5.0f}, {hi:>5.0f}]"
                f"{ratio:>8.2f}x{vs:>12.2f}{vs_norm:>11.2f}"
            )
            if label != "wflo" and (mode not in best or r.overhead_us < best[mode][0]):
                best[mode] = (r.overhead_us, ratio, label)
        print()
    for o in outcomes:
        if o.skipped is not None:
            print(f"skipped {o.spec.label}: {o.skipped}")
    if any(o.skipped for o in outcomes):
        print()

    for mode in MODES:
        if mode in best:
            wflo, wfloor = wflo_results[("wflo", mode)], wflo_results[("floor", mode)]
            us, ratio, label = best[mode]
            print(
                f"{MODE_LABEL[mode]}: wflo / best peer ({label}) = {wflo.overhead_us / us:.2f}x in {unit} "
                f"({wflo.overhead_us:.0f} vs {us:.0f}), {wflo.overhead_us / wfloor.overhead_us / ratio:.2f}x floor-normalised"
            )

    usage_us = None
    if ("floor+usage", "stream") in wflo_results and "stream" in best:
        # What asking for (and hiding) the usage chunk costs on a span-only wrapper: the SDK parses one
        # more SSE event into a ChatCompletionChunk. wflo pays it to cost streamed calls; no peer asks.
        usage_us = wflo_results[("floor+usage", "stream")].overhead_us - wflo_results[("floor", "stream")].overhead_us
        wflo_stream = wflo_results[("wflo", "stream")].overhead_us
        us, _ratio, label = best["stream"]
        # wflo drops that event before the SDK builds a model from it, so it pays less than this:
        # the difference is a lower bound for wflo's stream cost without the usage chunk.
        print(
            f"stream, less a fully parsed usage chunk ({usage_us:.0f} {unit} = floor+usage - floor, in wflo's "
            f"process; wflo skips most of that parse, so this is a lower bound): wflo >= {wflo_stream - usage_us:.0f} "
            f"{unit}, / best peer ({label}) >= {(wflo_stream - usage_us) / us:.2f}x"
        )

    print("\nwhat each one does per call (from a checked call and stream in its venv; wflo: its defaults):")
    usage_text = f" (~{usage_us:.0f} {unit} measured above)" if usage_us is not None else ""
    print(
        f"  {'wflo':<22} 1 CLIENT span; SDK metrics: yes (wflo's instruments); content: off; "
        "stream: ADDS stream_options.include_usage and hides the usage chunk, so its stream overhead includes "
        f"the SDK parsing that extra chunk{usage_text}; token counts on the stream span: yes; "
        "plus pricing and the budget reservation"
    )
    for o in outcomes:
        if o.skipped is not None or not o.check:
            continue
        c = o.check
        metrics = f"yes ({len(c['metrics'])}: {', '.join(c['metrics'])})" if c["metrics"] else "no"
        print(
            f"  {o.spec.label:<22} {c['spans_per_call']:g} {'/'.join(c['span_kinds'])} span "
            f"({'/'.join(map(str, c['attributes']))} attributes call/stream); SDK metrics: {metrics}; "
            f"content: {'CAPTURED' if c['content_captured'] else 'off'}"
            f"{' (--peer-content off)' if c.get('content') == 'off' else ' (its default)'}; "
            f"stream: usage chunk {'requested' if c['stream_usage_requested'] else 'not requested'}, "
            f"token counts on the stream span: {'yes' if c['stream_tokens'] else 'NO'}; "
            f"uninstrument(): {'works' if c['uninstrument_ok'] else 'does NOT restore the client'}"
        )
        for note in o.notes:
            print(f"  {'':<22} note: {note}")
        v = c["versions"]
        print(
            f"  {'':<22} versions: {_dist(o.spec)} {o.version}, openai {v['openai']} ({c.get('http')}), "
            f"opentelemetry-sdk {v['opentelemetry-sdk']}, wrapt {v['wrapt']}"
        )
    print(
        "  pipelines: wflo and its floor run inside wflo_otel.workflow() (BudgetSpanProcessor + BatchSpanProcessor);\n"
        "  a peer and its floor run under a plain parent span (BatchSpanProcessor only); both drop exported spans and\n"
        f"  keep metrics in an InMemoryMetricReader. Compare across venvs on 'x floor'; {unit} are the same machine."
    )


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def run_peers(
    keys: list[str], rounds: int, calls: int, warmup: int, clock: str, content: str, procs: int
) -> list[PeerOutcome]:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    outcomes = []
    for key in keys:
        spec = PEERS[key]
        log(f"peer {key}:")
        outcome = measure_peer(spec, rounds, calls, warmup, clock, content, procs, log)
        if outcome.skipped:
            log(f"  SKIPPED: {outcome.skipped}")
        else:
            log(f"  done in {outcome.seconds:.0f} s")
        outcomes.append(outcome)
    return outcomes
