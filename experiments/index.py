"""Writes ``experiments/RESULTS.md`` and the README's findings: every claim the experiments test, its
verdict, numbers and command.

Each experiment under the protocol (``experiments/protocol.py``) writes, beside its results file
``experiments/results/<name>.md``, a sidecar ``experiments/results/<name>.json``::

    {"title": "...", "command": "python experiments/<name>.py", "results": "results/<name>.md",
     "claims": [{"claim": "...", "verdict": "shown" | "not shown" | "contradicted", "summary": "...",
                 "sentence": "..."}]}

(``sentence``, optional: the claim as the README states it, when the claim's own text does not read as
one; a single claim may also be given flat: ``{"claim", "verdict", "summary", "command"}``; ``compute``,
optional: ``{"results", "minutes", "unrecorded_times", "processors"}``, what a script with a per-cell
cache cost, for the cost table against :data:`BUDGET_MINUTES`). This
command reads them all, one row per claim, and lists every results file without a sidecar (and the
README's demo, :data:`DEMO`) as "not under protocol", with the seeds it states. It writes the same
findings, one sentence per claim and one line per result not under the protocol, into README.md between
:data:`README_START` and :data:`README_END`. Nothing in either is written by hand::

    python experiments/index.py            # rewrite experiments/RESULTS.md and README.md's findings
    python experiments/index.py --check    # exit 1 if either is not current
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import posixpath
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol import COMPUTE_KEYS  # noqa: E402  (experiments/protocol.py)

HERE = os.path.dirname(os.path.abspath(__file__))
VERDICTS = ("shown", "not shown", "contradicted")
_COMMAND = re.compile(r"`((?:python|jaxtune) [^`]+)`")
# The README's findings sit between these two lines; the rest of README.md is never touched.
README_START = "<!-- experiment findings: written by `python experiments/index.py`; do not edit -->"
README_END = "<!-- end of experiment findings -->"
# The protocol's budget (issue #15): about 45 minutes of training per experiment on the 2-core CI machine.
BUDGET_MINUTES = 45
_RUN_MINUTES = re.compile(r"^- run: [^,]+, ([0-9.]+) min,", re.M)
_MACHINE = re.compile(r"^- machine: [^,]*, (.*), \d+ CPU cores$", re.M)
# The demo's table lives in the README, not under results/: one seed, learning rates set by hand.
DEMO = {"title": "The demo: linear probe vs full fine-tuning (LLRD) of all-MiniLM-L6-v2 on tweet sentiment, "
                 "equal steps", "seeds": "one seed", "command": "python -m jaxtune.demo --write-readme README.md",
        "results": "../README.md#quick-start"}


def _line(text: str) -> str:
    return " ".join(str(text).split())


def _cell(text: str) -> str:
    return _line(text).replace("|", "\\|")


def read_sidecar(path: str) -> dict:
    """A sidecar as ``{"title", "command", "results", "claims": [{claim, verdict, summary}]}``, checked.

    Example::

        read_sidecar("experiments/results/word_vectors.json")["claims"][0]["verdict"]   # "shown"
    """
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); rerun the experiment's command to rewrite it") from None
    if "claims" not in record:  # the flat one-claim form
        record = {"title": record.get("title", ""), "command": record.get("command"),
                  "results": record.get("results"), "claims": [record]}
    name = os.path.splitext(os.path.basename(path))[0]
    record["results"] = record.get("results") or f"results/{name}.md"
    record["title"] = record.get("title") or name
    if not record.get("command"):
        raise ValueError(f"{path} has no 'command'; a sidecar names the one command that writes its results")
    compute = record.get("compute")
    if compute is not None and not (isinstance(compute, dict) and set(COMPUTE_KEYS) <= set(compute)):
        raise ValueError(f"{path}: 'compute' must hold {list(COMPUTE_KEYS)} (runs.Cells.compute()), not "
                         f"{compute!r}; rerun the experiment's command to rewrite it")
    for i, claim in enumerate(record["claims"]):
        missing = [k for k in ("claim", "verdict", "summary") if not claim.get(k)]
        if missing:
            raise ValueError(f"{path}: claim {i} lacks {missing}")
        if "sentence" in claim and not (isinstance(claim["sentence"], str) and claim["sentence"].strip()):
            raise ValueError(f"{path}: claim {i} has an empty 'sentence'; leave it out to use the claim's text")
        if claim["verdict"] not in VERDICTS:
            raise ValueError(f"{path}: claim {i} has verdict {claim['verdict']!r}; use one of {VERDICTS}")
    return record


def legacy_entry(path: str) -> dict:
    """What a results file without a sidecar says about itself: title, seeds, command.

    Example::

        legacy_entry("experiments/results/forgetting.md")["seeds"]   # "one seed"
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), os.path.basename(path))
    several = re.search(r"[Ss]eeds:? (\d+(?:, ?\d+)+)", text)
    if several:
        seeds = f"seeds {several.group(1)}, hyperparameters not chosen on validation"
    elif re.search(r"\bone seed\b|\bseed \d+\b", text, re.IGNORECASE):
        seeds = "one seed"
    else:
        seeds = "seeds not stated"
    command = _COMMAND.search(text)
    return {"title": title, "seeds": seeds, "command": command.group(1) if command else "not stated",
            "results": f"results/{os.path.basename(path)}"}


def cost_row(record: dict, root: str) -> list[str]:
    """One row of RESULTS.md's cost table: the experiment's results, its training time and where it was
    computed, and how that compares with :data:`BUDGET_MINUTES`. From the sidecar's ``"compute"`` (the
    sum of its cached results' recorded training times) or, for a script that trains everything on
    every run, from its results file's run and machine lines.

    Example::

        cost_row(read_sidecar("experiments/results/freezing.json"), "experiments")
        # ['[Freezing ...](results/freezing.md)', '20 cached results', '77.3 min', 'AMD EPYC (...): 20', 'over: 1.7x']
    """
    link = f"[{_cell(record['title'])}]({record['results']})"
    compute = record.get("compute")
    if compute:
        minutes = compute["minutes"]
        results = f"{compute['results']} cached results"
        time = f"{minutes:.1f} min" + (f" ({compute['unrecorded_times']} results without a recorded time)"
                                        if compute["unrecorded_times"] else "")
        where = ", ".join(f"{_cell(machine)}: {count}" for machine, count in compute["processors"].items())
    else:
        path = os.path.join(root, record["results"])
        text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
        run, machine = _RUN_MINUTES.search(text), _MACHINE.search(text)
        if not run:
            return [link, "trained in full by every run", "not stated (no run line)", "not stated", "not known"]
        minutes = float(run.group(1))
        results, time = "trained in full by every run", f"{minutes:.1f} min (its last run)"
        where = _cell(machine.group(1)) if machine else "not stated"
    budget = "within" if minutes <= BUDGET_MINUTES else f"over: {minutes / BUDGET_MINUTES:.1f}x"
    return [link, results, time, where, budget]


def _sources(root: str) -> tuple[list[dict], list[dict]]:
    """The checked sidecars under ``root/results`` and the entries not under the protocol (results
    files without a sidecar, then the demo)."""
    results = os.path.join(root, "results")
    sidecars = sorted(glob.glob(os.path.join(results, "*.json")))
    covered = {os.path.splitext(p)[0] for p in sidecars}
    legacy = [p for p in sorted(glob.glob(os.path.join(results, "*.md"))) if os.path.splitext(p)[0] not in covered]
    return [read_sidecar(p) for p in sidecars], [legacy_entry(p) for p in legacy] + [DEMO]


def findings_markdown(root: str = HERE) -> str:
    """The README's findings: per experiment under the protocol one line (title, command, results
    file), then one sentence per claim with its verdict and numbers; then one line per result not
    under the protocol. Links are relative to the README (``root``'s parent).

    Example::

        findings_markdown().splitlines()[1]
        # '  - Word2Vec vectors trained on the unlabelled tweets, ...: **shown** (test accuracy ...).'
    """
    records, legacy = _sources(root)
    folder = os.path.basename(os.path.normpath(root))
    link = lambda results: re.sub(r"^README\.md#", "#", posixpath.normpath(posixpath.join(folder, results)))
    lines = []
    for record in records:
        lines.append(f"- {_line(record['title'])} (`{_line(record['command'])}`, "
                     f"[{link(record['results'])}]({link(record['results'])})):")
        for claim in record["claims"]:
            text = _line(claim.get("sentence") or claim["claim"]).rstrip(".")
            lines.append(f"  - {text}: **{claim['verdict']}** ({_line(claim['summary']).rstrip('.')}).")
    lines.append("- Not under the protocol yet (fewer than 3 seeds, or hyperparameters not chosen on validation):")
    for entry in legacy:
        lines.append(f"  - [{_line(entry['title'])}]({link(entry['results'])}): {entry['seeds']}; "
                     f"`{_line(entry['command'])}`.")
    return "\n".join(lines)


def with_findings(readme: str, block: str, readme_path: str = "README.md") -> str:
    """``readme``'s text with the lines between :data:`README_START` and :data:`README_END` replaced by
    ``block``; a README without exactly one such pair is an error naming the file and the markers.

    Example::

        with_findings(open("README.md").read(), findings_markdown())
    """
    pattern = re.compile(re.escape(README_START) + r"\n.*?" + re.escape(README_END), re.S)
    if readme.count(README_START) != 1 or readme.count(README_END) != 1 or not pattern.search(readme):
        raise ValueError(f"{readme_path} must hold exactly one findings block: a line {README_START!r}, later a "
                         f"line {README_END!r} (in the subsection 'The protocol and the results index')")
    return pattern.sub(lambda _: f"{README_START}\n{block}\n{README_END}", readme)


def render(root: str = HERE) -> str:
    """The text of ``RESULTS.md`` for the sidecars and results files under ``root/results``."""
    records, legacy = _sources(root)
    lines = ["# Results index", "",
             "Written by `python experiments/index.py` from the JSON sidecars in `experiments/results/`; do not edit "
             "by hand. A verdict is what the experiment's own numbers support: **shown** (the 95% interval of the "
             "paired difference excludes zero in the claimed direction, in every condition the claim covers), "
             "**contradicted** (it excludes zero in the other direction, in at least one condition the claim covers), "
             "**not shown** "
             "(anything else). Under the protocol (`experiments/protocol.py`): at least 3 seeds varying head "
             "init, data order and dropout; hyperparameters chosen on validation only; test mean ± sample std; "
             "paired differences with 95% t-intervals. Scripts that keep a result per cell (a JSON file under "
             "`experiments/results/<experiment>/`) read it instead of training; with `--verify REGEX` they train "
             "the cells whose label matches again and stop with an error unless every number equals the file's "
             "(bit for bit when the cell names this processor; within a relative 1e-4 when it names another, or "
             "none, since other vector extensions round differently).", "",
             "## Claims under the protocol", "",
             "| claim | verdict | numbers | command | results |", "|---|---|---|---|---|"]
    for record in records:
        for claim in record["claims"]:
            lines.append(f"| {_cell(claim['claim'])} | **{claim['verdict']}** | {_cell(claim['summary'])} | "
                         f"`{_cell(record['command'])}` | [{record['results']}]({record['results']}) |")
    lines += ["", "## What each experiment costs", "",
              f"Training time of each experiment under the protocol from scratch: the sum of its results' recorded "
              f"training times (each cached result keeps the seconds its training took and the processor that "
              f"computed it; times taken while other work shared the cores are longer than alone), or the last "
              f"run's time for a script that trains everything on every run. The protocol's budget is about "
              f"{BUDGET_MINUTES} min per experiment on the 2-core machine. `--verify` reproduces a result bit for "
              "bit only on the processor that computed it.", "",
              "| experiment | results | training time | computed on | budget |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(cost_row(record, root))} |" for record in records]
    lines += ["", "## Not under the protocol yet", "",
              "| results | what it measured | seeds | command |", "|---|---|---|---|"]
    for entry in legacy:
        lines.append(f"| [{entry['results']}]({entry['results']}) | {_cell(entry['title'])} | "
                     f"not under protocol ({entry['seeds']}) | `{_cell(entry['command'])}` |")
    return "\n".join(lines) + "\n"


def _stale(path: str, text: str) -> bool:
    return not os.path.exists(path) or open(path, encoding="utf-8").read() != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if RESULTS.md or the README's findings are not current, write nothing")
    parser.add_argument("--root", default=HERE, help="the experiments folder (results/ and RESULTS.md)")
    parser.add_argument("--readme", default=None,
                        help="the README that holds the findings block (default: README.md beside the root)")
    args = parser.parse_args(argv)
    target = os.path.join(args.root, "RESULTS.md")
    readme = args.readme or os.path.join(os.path.dirname(os.path.abspath(args.root)), "README.md")
    try:
        text = render(args.root)
        with open(readme, encoding="utf-8") as f:
            readme_text = with_findings(f.read(), findings_markdown(args.root), readme)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stale = [path for path, new in ((target, text), (readme, readme_text)) if _stale(path, new)]
    if args.check:
        for path in stale:
            print(f"{path} is not current; run: python experiments/index.py", file=sys.stderr)
        return 1 if stale else 0
    for path, new in ((target, text), (readme, readme_text)):
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
