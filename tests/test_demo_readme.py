"""The README tells the truth: its demo block has exactly the format the demo prints, its install and
TensorBoard promises exist (no model, no data: milliseconds)."""
import os
import re
import tomllib

import pytest

from jaxtune import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

ROW = re.compile(r"\| (?P<model>[^|]+) \| (?P<accuracy>\**[01]\.\d{3}\**) \| (?P<macro_f1>\**[01]\.\d{3}\**) \| "
                 r"(?P<trained>[\d,]+) \| (?P<steps>[\d,]+|-) \| (?P<best_step>[\d,]+|-) \| (?P<seconds>[\d,]+|-) \|")
NOTE = re.compile(r"(?P<train>[\d,]+) training tweets, .*? the same (?P<steps>\d+) steps .*? on (?P<date>[\d-]+) "
                  r"\(jax (?P<jax>[\w.]+), (?P<cores>\d+) CPU cores, load average (?P<load>[\d.]+) at the start, "
                  r"code fingerprint (?P<fingerprint>[0-9a-f]{8})\): "
                  r"the whole demo took (?P<min>\d+) min (?P<sec>\d+) s\.")


def readme_block(text: str) -> str:
    """The text between the demo markers of the README."""
    start, end = text.index(demo.README_START) + len(demo.README_START) + 1, text.index(demo.README_END)
    assert text.count(demo.README_START) == 1 and text.count(demo.README_END) == 1
    return text[start:end].rstrip("\n")


def parse_block(block: str) -> tuple[list[dict], dict]:
    """The rows and the meta of a results block (the inverse of demo.results_markdown)."""
    table, note = block.split("\n\n")
    lines = table.splitlines()
    header = re.fullmatch(r"\| model \(test: ([\d,]+) tweets\) \|.*", lines[0])
    number = lambda v: None if v == "-" else int(v.replace(",", ""))
    rows = []
    for line in lines[2:]:
        m = ROW.fullmatch(line)
        assert m, f"README demo row not in the demo's format: {line!r}; {REGENERATE}"
        rows.append({"model": m["model"], "accuracy": float(m["accuracy"].strip("*")),
                     "macro_f1": float(m["macro_f1"].strip("*")), "trained": number(m["trained"]),
                     **{k: number(m[k]) for k in ("steps", "best_step", "seconds") if m[k] != "-"}})
    n = NOTE.fullmatch(note)
    assert header and n, f"README demo header or note not in the demo's format ({REGENERATE}):\n{block}"
    meta = {"test": int(header[1].replace(",", "")), "train": int(n["train"].replace(",", "")),
            "steps": int(n["steps"]), "date": n["date"], "jax": n["jax"], "cores": int(n["cores"]),
            "load": float(n["load"]), "fingerprint": n["fingerprint"], "seconds": 60 * int(n["min"]) + int(n["sec"])}
    return rows, meta


REGENERATE = "regenerate it with `python -m jaxtune.demo --write-readme README.md` (about 10 min on 2 quiet cores)"


def test_readme_demo_block_is_exactly_what_the_demo_prints():
    block = readme_block(open(README, encoding="utf-8").read())
    assert "Not regenerated yet" not in block, f"the README's demo block is the previous demo's: {REGENERATE}"
    rows, meta = parse_block(block)
    assert demo.results_markdown(rows, meta) == block
    assert [r["model"] for r in rows[1:]] == [demo.ROW_NAMES["probe"], demo.ROW_NAMES["finetune"]]
    assert rows[0]["model"].startswith("majority class (")
    # The fair comparison the README claims: both trained rows took the full demo's steps.
    assert [r["steps"] for r in rows[1:]] == [demo.FULL["steps"]] * 2 == [meta["steps"]] * 2, REGENERATE
    assert meta["train"] == demo.FULL["train_limit"], REGENERATE


def test_results_block_round_trips_through_the_readme_parser():
    rows = [{"model": "majority class (negative)", "accuracy": 0.429, "macro_f1": 0.2, "trained": 0},
            {"model": demo.ROW_NAMES["probe"], "accuracy": 0.651, "macro_f1": 0.6, "trained": 1155, "steps": 200,
             "best_step": 200, "seconds": 250},
            {"model": demo.ROW_NAMES["finetune"], "accuracy": 0.742, "macro_f1": 0.715, "trained": 22714371,
             "steps": 200, "best_step": 100, "seconds": 1356}]
    meta = {"test": 3720, "train": 6400, "steps": 200, "date": "2026-11-30", "jax": "0.10.2", "cores": 2,
            "load": 17.2, "fingerprint": "3f9a1c2b", "seconds": 1720}
    block = demo.results_markdown(rows, meta)
    assert parse_block(block) == (rows, meta)
    assert "| **0.742** | **0.715** | 22,714,371 | 200 | 100 | 1,356 |" in block  # best scores bold
    assert block.endswith("load average 17.2 at the start, code fingerprint 3f9a1c2b): the whole demo took 28 min 40 s.")


def test_readme_demo_numbers_come_from_the_current_code():
    _, meta = parse_block(readme_block(open(README, encoding="utf-8").read()))
    current = demo.code_fingerprint()
    assert meta["fingerprint"] == current, (
        f"the README's demo numbers were printed by other code (fingerprint {meta['fingerprint']}, current code "
        f"{current}: a file in jaxtune.demo.FINGERPRINT_FILES changed); {REGENERATE}")


def test_code_fingerprint_follows_every_listed_file_and_only_those(tmp_path):
    for name in demo.FINGERPRINT_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n")
    (tmp_path / "jaxtune" / "cli.py").write_text("# the CLI cannot change a number\n")
    before = demo.code_fingerprint(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{8}", before) and demo.code_fingerprint(tmp_path) == before
    (tmp_path / "jaxtune" / "cli.py").write_text("# edited\n")
    assert demo.code_fingerprint(tmp_path) == before
    for name in ("jaxtune/models/bert.py", "jaxtune/optim.py", "jaxtune/demo.py"):
        (tmp_path / name).write_text((tmp_path / name).read_text() + "x = 1\n")
        after = demo.code_fingerprint(tmp_path)
        assert after != before, name
        before = after
    (tmp_path / "jaxtune" / "train.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.py \(named in jaxtune\.demo\.FINGERPRINT_FILES\)"):
        demo.code_fingerprint(tmp_path)


def test_fingerprint_files_are_the_demo_path_and_nothing_else():
    names = set(demo.FINGERPRINT_FILES)
    assert len(names) == len(demo.FINGERPRINT_FILES)
    assert all(os.path.isfile(os.path.join(ROOT, name)) for name in names)
    must = {"jaxtune/demo.py", "jaxtune/models/bert.py", "jaxtune/models/bert_layers.py", "jaxtune/train.py",
            "jaxtune/optim.py", "jaxtune/rules.py", "jaxtune/data/text/batching.py", "jaxtune/data/sources.py"}
    assert must <= names, must - names
    assert not {n for n in names if n.startswith("jaxtune/bench/") or n in ("jaxtune/cli.py", "jaxtune/runlog.py")}


def test_write_readme_block_replaces_only_the_block(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{demo.README_START}\nold\ntable\n{demo.README_END}\noutro\n")
    demo.write_readme_block(path, "new block")
    assert path.read_text() == f"intro\n{demo.README_START}\nnew block\n{demo.README_END}\noutro\n"
    demo.write_readme_block(path, "new block")  # idempotent
    assert path.read_text().count("new block") == 1
    path.write_text("no markers\n")
    with pytest.raises(ValueError, match="exactly one demo results block"):
        demo.write_readme_block(path, "x")


def test_write_readme_refuses_quick_numbers(tmp_path):
    from jaxtune.errors import UserError

    with pytest.raises(UserError, match="without --quick"):
        demo.main(quick=True, output_dir=str(tmp_path), write_readme=README)


def test_quick_start_and_tensorboard_extra():
    text = open(README, encoding="utf-8").read()
    quick_start = text[text.index("## Quick start"):text.index("```", text.index("```bash") + 3)]
    assert quick_start.index("python3 -m venv .venv && . .venv/bin/activate") < quick_start.index(
        "bash scripts/install.sh") < quick_start.index("jaxtune demo --quick")
    extras = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["optional-dependencies"]
    assert any(r.startswith("tensorboard") for r in extras["tensorboard"])
    assert 'pip install -e ".[tensorboard]"' in text


def test_install_script_prints_each_step():
    script = open(os.path.join(ROOT, "scripts", "install.sh"), encoding="utf-8").read()
    steps = re.findall(r'^step "\[(\d)/(\d)\]', script, re.M)
    assert [int(i) for i, _ in steps] == list(range(1, len(steps) + 1)) and {n for _, n in steps} == {str(len(steps))}
    assert script.count("python -m pip ") == len(steps)  # each pip run is announced by its step line


# (README family row, test file, tolerance constant, how the README states it)
PARITY_BOUNDS = [("BERT", "test_bert.py", "ATOL", "all heads, padded batches: ≤ {}"),
                 ("BERT", "test_bert.py", "MINILM_ATOL", "MiniLM sentence embeddings: ≤ {}"),
                 ("T5", "test_t5.py", "ATOL", "logits: ≤ {}"),
                 ("ResNet", "test_resnet.py", "TOL", "logits, features, running stats: ≤ {}"),
                 ("MobileNetV2", "test_mobile_cnns.py", "TOL", "logits on real ImageNet weights: ≤ {}")]


@pytest.mark.parametrize("family,test_file,constant,claim", PARITY_BOUNDS, ids=lambda v: str(v))
def test_readme_parity_bounds_are_the_tested_ones(family, test_file, constant, claim):
    source = open(os.path.join(ROOT, "tests", test_file), encoding="utf-8").read()
    value = re.search(rf"^{constant} = ([0-9.e-]+)", source, re.M)[1]
    # The family's row of the parity table (the export table's rows start alike but state no "≤" bound).
    row = next(line for line in open(README, encoding="utf-8") if line.startswith(f"| {family}") and "≤" in line)
    assert claim.format(value) in row, f"README says {row.split('|')[-2].strip()!r}; {test_file} asserts {constant} = {value}"
