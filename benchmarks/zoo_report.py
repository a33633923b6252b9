#!/usr/bin/env python3
"""Model-zoo compatibility report: writes docs/compatibility.md.

Runs every model of the zoo in tests/python/test_zoo.py (every torchvision 0.14
builder except the quantized ones, and the torchaudio 0.13 models), slow ones
included, each once and each in its own child process (memory is returned
between models, and a crash is reported as that model's failure), through
``test_zoo.check_model``: eager vs lazy construction + materialize, state_dict,
RNG state, forward output.

    /usr/bin/python3 benchmarks/zoo_report.py              # all, from the repository root
    /usr/bin/python3 benchmarks/zoo_report.py --only resnet18 Tacotron2 --out c.md
    /usr/bin/python3 benchmarks/zoo_report.py --json zoo.json          # raw records too
    /usr/bin/python3 benchmarks/zoo_report.py --lazyinit-python ../head/python

``--lazyinit-python`` tests a lazyinit package built elsewhere (e.g. a clean
``git archive HEAD`` build while this checkout is being rebuilt by others); a
file ``COMMIT`` next to that ``python/`` folder names the commit in the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
TESTS_DIR = os.path.join(ROOT, "tests", "python")
PY_DIR = os.path.join(ROOT, "python")
DEFAULT_OUT = os.path.join(ROOT, "docs", "compatibility.md")


def _lazyinit_dir() -> str:
    return os.environ.get("LAZYINIT_ZOO_PYTHON") or PY_DIR


def _child(name: str, out_path: str) -> int:
    """Runs one model; writes its record as JSON."""
    # PY_DIR listed too, so test_zoo does not put it in front of _lazyinit_dir()
    sys.path[:0] = [_lazyinit_dir(), PY_DIR, TESTS_DIR]
    import warnings
    warnings.simplefilter("ignore")
    import torch
    import test_zoo

    spec = test_zoo.zoo_by_name()[name]
    rec = {"known_issue": spec.note}
    try:
        test_zoo.check_model(spec, rec)
        rec["result"] = "pass"
    except test_zoo.ZooFailure as e:
        rec["result"] = "FAIL"
        rec["error"] = str(e)
    except Exception as e:  # an exception from lazyinit (or the model) itself
        rec["result"] = "FAIL"
        rec["error"] = f"{type(e).__name__} during {rec.get('stage', 'eager build')}: {e}"
        rec["traceback"] = traceback.format_exc(limit=-6)
    rec["max_rss_mb"] = _max_rss_mb()
    rec["torch_threads"] = torch.get_num_threads()
    import lazyinit
    rec["lazyinit_file"] = lazyinit.__file__
    rec["lazyinit_version"] = _lazyinit_version()
    with open(out_path, "w") as f:
        json.dump(rec, f)
    return 0


def _max_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run_one(name: str, timeout: float) -> dict:
    fd, path = tempfile.mkstemp(suffix=".json", prefix="zoo_")
    os.close(fd)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", name, path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        rec = {}
        if os.path.getsize(path) > 0:
            with open(path) as f:
                rec = json.load(f)
        if proc.returncode != 0 or not rec:
            tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
            rec.update(name=name, result="FAIL",
                       error=f"child process exited with {proc.returncode}: {tail}")
    except subprocess.TimeoutExpired:
        wall = time.perf_counter() - t0
        rec = {"name": name, "result": "FAIL", "error": f"timed out after {timeout:.0f} s"}
    finally:
        os.unlink(path)
    rec["wall_s"] = wall
    return rec


# --------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------

def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _yes_no(v) -> str:
    if v is True:
        return "yes"
    if v is False:
        return "**no**"
    if v is None:
        return "—"
    return str(v)


def _short_error(e: str, n: int = 160) -> str:
    first = e.strip().splitlines()[0] if e.strip() else e
    more = len(e.strip().splitlines()) - 1
    s = first if len(first) <= n else first[: n - 1] + "…"
    return s + (f" (+{more} more)" if more > 0 else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _lazyinit_version() -> str:
    d = _lazyinit_dir()
    if os.path.abspath(d) != os.path.abspath(PY_DIR):
        try:
            with open(os.path.join(d, "..", "COMMIT")) as f:
                commit = f.read().strip()
        except OSError:
            commit = "unknown commit"
        return f"commit {commit} (a separate build of it)"
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no",
                                "--", "include", "src", "registration", "python"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return "commit " + out.stdout.strip() + (
            " (with uncommitted changes to the library)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def write_markdown(records, path, started, wall_s, versions, argv):
    n_pass = sum(r["result"] == "pass" for r in records)
    n_fail = len(records) - n_pass
    lines = [
        "# Model zoo compatibility",
        "",
        "Generated by `benchmarks/zoo_report.py` (do not edit by hand; rerun it:",
        "`/usr/bin/python3 benchmarks/zoo_report.py` from the repository root). The same checks run",
        "under pytest in `tests/python/test_zoo.py` (slow models with `LAZYINIT_SLOW=1`).",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} (local time)",
        f"- machine: {os.cpu_count()} cores ({_cpu_model()}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}",
        f"- torch {versions['torch']}, torchvision {versions['torchvision']}, "
        f"torchaudio {versions['torchaudio']}; lazyinit {_lazyinit_version()}",
        f"- command: `{' '.join(argv)}`; total wall time {wall_s / 60:.1f} min "
        f"(one child process per model, run one after another; torch intra-op threads: "
        f"{', '.join(sorted({str(r['torch_threads']) for r in records if 'torch_threads' in r})) or '?'})",
        f"- **{len(records)} models: {n_pass} pass, {n_fail} fail**",
        "",
        "For each model: `torch.manual_seed(0)` and eager construction on the CPU;",
        "`torch.manual_seed(0)` and construction under `lazyinit.LazyInitContext()`,",
        "`lazyinit.stats(model)`, `lazyinit.materialize(model, \"cpu\")`. Then",
        "",
        "- *state_dict equal*: same keys; every entry the same dtype and shape and",
        "  `torch.equal`; and `torch.get_rng_state()` after lazy construction +",
        "  materialize equal to its value after eager construction (a difference is",
        "  reported in *result*);",
        "- *forward equal*: `model.eval()`, `torch.no_grad()`, a small fixed input, the",
        "  same seed before each forward; every output tensor `torch.equal` to eager's",
        "  (NaNs in the same places count as equal). No model was nondeterministic",
        "  eager-against-eager on the CPU unless its row says so.",
        "- *early elements*: `lazyinit.stats(model).elements_early` before materialize",
        "  (elements whose values an op needed during construction);",
        "  *materialized during construction*: elements already real before",
        "  `materialize` (`stats().elements_materialized`, e.g. a `t.cpu()` in the",
        "  model's init code);",
        "- *lazy rate*: the fraction of all parameter/buffer elements that were",
        "  neither early nor real before `materialize` (1.0 = everything stayed lazy).",
        "",
        "No pretrained weights: torchvision builders get `weights=None` (and",
        "`weights_backbone=None` for detection/segmentation); torchvision's quantized",
        "builders are not included. torchaudio models with required arguments are",
        "built with the small arguments shown in their name (see `tests/python/test_zoo.py`",
        "for all arguments and inputs). *default test*: whether the model runs in the",
        "default pytest run or only with `LAZYINIT_SLOW=1`.",
        "",
        "| model | family | parameters | lazy rate | early elements | materialized during construction "
        "| state_dict equal | forward equal | time (s) | default test | result |",
        "|---|---|---:|---:|---:|---:|:-:|:-:|---:|:-:|---|",
    ]
    for r in records:
        params = r.get("params")
        rate = r.get("lazy_rate")
        res = "pass" if r["result"] == "pass" else f"**FAIL**: {_md(_short_error(r.get('error', '')))}"
        sd = r.get("state_dict_equal")
        if sd is True and r.get("rng_equal") is False:
            sd = "yes (RNG state **differs**)"
        lines.append("| " + " | ".join([
            _md(r["name"]),
            _md(r.get("family", "")),
            f"{params:,}" if params is not None else "—",
            f"{rate:.4f}" if rate is not None else "—",
            f"{r['elements_early']:,}" if r.get("elements_early") is not None else "—",
            f"{r['elements_real_before']:,}" if r.get("elements_real_before") is not None else "—",
            _yes_no(sd),
            _yes_no(r.get("forward_equal")),
            f"{r['wall_s']:.1f}",
            "slow" if r.get("slow") else ("yes" if "slow" in r else "—"),
            res,
        ]) + " |")

    current = _lazyinit_version()
    older = sorted({r["lazyinit_version"] for r in records
                    if r.get("lazyinit_version", current) != current})
    if older:
        lines += ["", "## Rows from another build", ""]
        for v in older:
            names = [r["name"] for r in records if r.get("lazyinit_version") == v]
            lines.append(f"- lazyinit {v}: {', '.join(names)}")

    fails = [r for r in records if r["result"] != "pass"]
    if fails:
        lines += ["", "## Failures", ""]
        for r in fails:
            lines += [f"### {r['name']}", ""]
            if r.get("known_issue"):
                lines += [f"Cause: {r['known_issue']}", ""]
            lines += ["```", r.get("error", "").strip()]
            if r.get("traceback"):
                lines += ["", r["traceback"].strip()]
            lines += ["```", ""]
    notes = [r for r in records if r.get("note")]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {r['name']}: {_md(r['note'])}" for r in notes]
    # Results from machines this script does not run on, kept by hand.
    extra = os.path.join(os.path.dirname(os.path.abspath(path)), "compatibility_accelerator.md")
    if os.path.exists(extra):
        with open(extra) as f:
            lines += ["", f.read().rstrip()]
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="model names (default: the whole zoo)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="markdown file to write")
    ap.add_argument("--json", help="also write the raw records here")
    ap.add_argument("--resume", action="store_true",
                    help="keep the records already in --json and run only the missing models")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per model")
    ap.add_argument("--lazyinit-python", help="the folder holding the lazyinit package to test "
                    "(default: this checkout's python/)")
    ap.add_argument("--fill-from", help="records (JSON) of an earlier run, used for the models "
                    "this run has no record of; the report names their build")
    ap.add_argument("--child", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(*args.child)

    if args.lazyinit_python:
        os.environ["LAZYINIT_ZOO_PYTHON"] = os.path.abspath(args.lazyinit_python)
    sys.path[:0] = [_lazyinit_dir(), PY_DIR, TESTS_DIR]
    import torch
    import torchaudio
    import torchvision
    import test_zoo
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "torchaudio": torchaudio.__version__}
    names = args.only or [m.name for m in test_zoo.zoo()]
    started = datetime.datetime.now()
    t0 = time.perf_counter()
    records = []
    if args.resume and args.json and os.path.exists(args.json):
        with open(args.json) as f:
            records = [r for r in json.load(f) if r["name"] in names]
        print(f"resuming: {len(records)} records from {args.json}", flush=True)
    done = {r["name"] for r in records}
    for i, name in enumerate(names, 1):
        if name in done:
            continue
        rec = _run_one(name, args.timeout)
        records.append(rec)
        status = rec["result"] if rec["result"] == "pass" else "FAIL: " + _short_error(rec.get("error", ""), 120)
        print(f"[{i}/{len(names)}] {name}: {status} ({rec['wall_s']:.1f} s)", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(records, f, indent=1)
    wall = time.perf_counter() - t0
    if args.fill_from:
        with open(args.fill_from) as f:
            have = {r["name"] for r in records}
            records += [r for r in json.load(f) if r["name"] in names and r["name"] not in have]
    order = [m.name for m in test_zoo.zoo()]  # the table in zoo order, whatever --only said
    records.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    if args.resume:  # the models' own wall times, summed over the sessions
        wall = sum(r["wall_s"] for r in records)
    write_markdown(records, args.out, started, wall, versions,
                   ["/usr/bin/python3", "benchmarks/zoo_report.py"] + sys.argv[1:])
    n_pass = sum(r["result"] == "pass" for r in records)
    print(f"{len(records)} models: {n_pass} pass, {len(records) - n_pass} fail; "
          f"{wall / 60:.1f} min; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
