"""Writes ``experiments/RESULTS.md``: every claim the experiments test, its verdict, numbers and command.

Each experiment under the protocol (``experiments/protocol.py``) writes, beside its results file
``experiments/results/<name>.md``, a sidecar ``experiments/results/<name>.json``::

    {"title": "...", "command": "python experiments/<name>.py", "results": "results/<name>.md",
     "claims": [{"claim": "...", "verdict": "shown" | "not shown" | "contradicted", "summary": "..."}]}

(a single claim may also be given flat: ``{"claim", "verdict", "summary", "command"}``). This
command reads them all, one row per claim, and lists every results file without a sidecar as "not
under protocol", with the seeds it states. Nothing in RESULTS.md is written by hand::

    python experiments/index.py            # rewrite experiments/RESULTS.md
    python experiments/index.py --check    # exit 1 if it is not current
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VERDICTS = ("shown", "not shown", "contradicted")
_COMMAND = re.compile(r"`((?:python|jaxtune) [^`]+)`")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


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
    for i, claim in enumerate(record["claims"]):
        missing = [k for k in ("claim", "verdict", "summary") if not claim.get(k)]
        if missing:
            raise ValueError(f"{path}: claim {i} lacks {missing}")
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


def render(root: str = HERE) -> str:
    """The text of ``RESULTS.md`` for the sidecars and results files under ``root/results``."""
    results = os.path.join(root, "results")
    sidecars = sorted(glob.glob(os.path.join(results, "*.json")))
    covered = {os.path.splitext(p)[0] for p in sidecars}
    legacy = [p for p in sorted(glob.glob(os.path.join(results, "*.md"))) if os.path.splitext(p)[0] not in covered]
    lines = ["# Results index", "",
             "Written by `python experiments/index.py` from the JSON sidecars in `experiments/results/`; do not edit "
             "by hand. A verdict is what the experiment's own numbers support: **shown** (the 95% interval of the "
             "paired difference excludes zero in the claimed direction, in every condition the claim covers), "
             "**contradicted** (it excludes zero in the other direction, in every condition), **not shown** "
             "(anything else). Under the protocol (`experiments/protocol.py`): at least 3 seeds varying head "
             "init, data order and dropout; hyperparameters chosen on validation only; test mean ± sample std; "
             "paired differences with 95% t-intervals.", "",
             "## Claims under the protocol", "",
             "| claim | verdict | numbers | command | results |", "|---|---|---|---|---|"]
    for path in sidecars:
        record = read_sidecar(path)
        for claim in record["claims"]:
            lines.append(f"| {_cell(claim['claim'])} | **{claim['verdict']}** | {_cell(claim['summary'])} | "
                         f"`{_cell(record['command'])}` | [{record['results']}]({record['results']}) |")
    lines += ["", "## Not under the protocol yet", "",
              "| results | what it measured | seeds | command |", "|---|---|---|---|"]
    for path in legacy:
        entry = legacy_entry(path)
        lines.append(f"| [{entry['results']}]({entry['results']}) | {_cell(entry['title'])} | "
                     f"not under protocol ({entry['seeds']}) | `{_cell(entry['command'])}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md is not current, write nothing")
    parser.add_argument("--root", default=HERE, help="the experiments folder (results/ and RESULTS.md)")
    args = parser.parse_args(argv)
    text = render(args.root)
    target = os.path.join(args.root, "RESULTS.md")
    if args.check:
        current = open(target, encoding="utf-8").read() if os.path.exists(target) else ""
        if current != text:
            print(f"{target} is not current; run: python experiments/index.py", file=sys.stderr)
            return 1
        return 0
    with open(target, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
