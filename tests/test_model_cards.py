"""Every shipped weights folder has a model card (``README.md``) in the Hugging Face format, and the figures
of its ``## Evaluation`` tables are those of the results files they name.

A weights folder is any folder under ``src/w2s/weights`` holding ``model.safetensors`` (a full model,
``library_name: transformers``) or ``adapter_model.safetensors`` (a LoRA adapter, ``library_name: peft``).
Its card opens with YAML front matter naming ``license``, ``library_name``, ``tags`` (with ``w2s``) and
``base_model``, the Hugging Face id of the base (an adapter's must be the model its ``adapter_config.json``
names); a full model trained from scratch, whose card says so, names none.

An ``## Evaluation`` section holds markdown tables whose first column, ``source``, names a results file
(``results/<dir>/summary.csv``), whose second, ``method``, names a row of it by its ``method`` column, and
whose other columns are named like the file's columns. Each value must be the file's, rounded to at most 3
decimals (an empty cell, or a dash, where the file's is empty).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "src" / "w2s" / "weights"
WEIGHT_FILES = {"model.safetensors": "transformers", "adapter_model.safetensors": "peft"}
# an adapter's base as adapter_config.json names it (ship_adapter) -> the Hugging Face id of that model;
# a catalog name (w2s setup NAME) is matched against the id's model name instead
HUB_BASES = {"w2s:default-strong": "HuggingFaceTB/SmolLM2-135M-Instruct"}
DECIMALS = 3
EMPTY = {"", "-", "–", "—"}


def weights_folders() -> list[Path]:
    return sorted({path.parent for name in WEIGHT_FILES for path in WEIGHTS.rglob(name)})


def split_front_matter(text: str) -> tuple[dict, str]:
    """The YAML front matter of a card (a mapping) and the text after it; ValueError if there is none."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise ValueError("the card does not open with YAML front matter (a '---' line)")
    end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), None)
    if end is None:
        raise ValueError("the card's YAML front matter has no closing '---' line")
    meta = yaml.safe_load("\n".join(lines[1:end]))
    if not isinstance(meta, dict):
        raise ValueError("the card's YAML front matter is not a mapping")
    return meta, "\n".join(lines[end + 1:])


def metadata_problems(text: str, library_name: str, adapter_base: str | None = None) -> list[str]:
    """What is wrong with a card's front matter, for a folder whose weights make it a ``library_name``
    model (an adapter of ``adapter_base``, as its adapter_config.json names it)."""
    try:
        meta, body = split_front_matter(text)
    except (ValueError, yaml.YAMLError) as error:
        return [str(error)]
    problems = []
    for key in ("license", "library_name"):
        if not isinstance(meta.get(key), str) or not meta[key].strip():
            problems.append(f"front matter lacks {key}")
    if meta.get("library_name") not in (None, library_name):
        problems.append(f"library_name is {meta['library_name']!r}, but the folder's weights make it {library_name!r}")
    tags = meta.get("tags")
    if not isinstance(tags, list) or not tags:
        problems.append("front matter lacks tags (a list)")
    elif "w2s" not in tags:
        problems.append(f"tags {tags} lack 'w2s'")
    datasets = meta.get("datasets", [])
    if not (isinstance(datasets, list) and all(isinstance(d, str) for d in datasets)):
        problems.append("datasets is not a list of names")
    base = meta.get("base_model")
    if base is None:
        prose = " ".join(body.replace("*", "").replace("_", " ").split()).lower()  # across line breaks and emphasis
        if not (library_name == "transformers" and "trained from scratch" in prose):
            problems.append("front matter lacks base_model (only a full model the card says was trained from "
                            "scratch may leave it out)")
    elif not isinstance(base, str) or "/" not in base:
        problems.append(f"base_model {base!r} is not a Hugging Face id (owner/name)")
    elif adapter_base is not None:
        expected = HUB_BASES.get(adapter_base)
        if expected is not None and base != expected:
            problems.append(f"base_model is {base!r}, but adapter_config.json's base {adapter_base!r} is {expected!r}")
        if expected is None and base.split("/")[-1].lower() != adapter_base.lower():
            problems.append(f"base_model {base!r} is not adapter_config.json's base {adapter_base!r}")
    return problems


def evaluation_tables(text: str) -> list[list[list[str]]] | None:
    """The markdown tables of the card's ``## Evaluation`` section (each a header row then its data rows,
    cells stripped of spaces and backticks); None if the card has no such section."""
    match = re.search(r"^## Evaluation[ \t]*$(.*?)(?=^#{1,2} |\Z)", text, re.MULTILINE | re.DOTALL)
    if match is None:
        return None
    tables, current = [], None
    for line in match.group(1).splitlines():
        line = line.strip()
        if not line.startswith("|"):
            current = None
            continue
        inner = line[1:-1] if line.endswith("|") and len(line) > 1 else line[1:]
        cells = [cell.strip().strip("`").strip() for cell in inner.split("|")]
        if current is None:
            current = [cells]
            tables.append(current)
        elif not all(re.fullmatch(r":?-+:?", cell) for cell in cells):  # the alignment row
            current.append(cells)
    return tables


def value_problem(cell: str, expected: str) -> str | None:
    """Why a table cell is not the results file's value ``expected`` to at most 3 decimals, or None."""
    if expected.strip() == "":
        return None if cell in EMPTY else f"{cell!r} where the file has no value"
    if not re.fullmatch(r"[-+−]?\d+(\.\d{1,%d})?" % DECIMALS, cell):
        return f"{cell!r} is not a number with at most {DECIMALS} decimals (the file has {expected})"
    if abs(float(cell.replace("−", "-")) - float(expected)) > 0.5 * 10 ** -DECIMALS + 1e-9:
        return f"{cell} is not {expected} rounded to {DECIMALS} decimals ({round(float(expected), DECIMALS)})"
    return None


def evaluation_problems(text: str, root: Path = ROOT) -> list[str]:
    """What in the card's ``## Evaluation`` tables disagrees with the results files they name."""
    tables = evaluation_tables(text)
    if tables is None:
        return []
    if not any(len(table) > 1 for table in tables):
        return ["the ## Evaluation section has no table with rows"]
    problems, files = [], {}
    for table in tables:
        header, rows = table[0], table[1:]
        if header[:2] != ["source", "method"]:
            problems.append(f"an evaluation table's first columns are {header[:2]}, not ['source', 'method']")
            continue
        for row in rows:
            if len(row) != len(header):
                problems.append(f"row {row} has {len(row)} cells for {len(header)} columns")
                continue
            source, method = row[0], row[1]
            if source not in files:
                path = root / source
                if not (source.startswith("results/") and source.endswith(".csv") and path.is_file()):
                    problems.append(f"source {source!r} is not a results CSV file")
                    files[source] = None
                    continue
                with path.open(newline="", encoding="utf-8") as handle:
                    records = list(csv.DictReader(handle))
                files[source] = {r["method"]: r for r in records}, list(records[0]) if records else []
            if files[source] is None:
                continue
            by_method, columns = files[source]
            if method not in by_method:
                problems.append(f"{source} has no row for method {method!r}")
                continue
            for column, cell in zip(header[2:], row[2:]):
                if column not in columns:
                    problems.append(f"{source} has no column {column!r}")
                    continue
                problem = value_problem(cell, by_method[method][column])
                if problem:
                    problems.append(f"{source}, method {method}, {column}: {problem}")
    return list(dict.fromkeys(problems))  # a wrong column name is said once, not once per row


def card_problems(folder: Path) -> list[str]:
    card = folder / "README.md"
    if not card.is_file():
        return ["it has no model card (README.md)"]
    text = card.read_text(encoding="utf-8")
    library_name = next(lib for name, lib in WEIGHT_FILES.items() if (folder / name).exists())
    adapter_base = None
    if library_name == "peft":
        adapter_base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    return metadata_problems(text, library_name, adapter_base) + evaluation_problems(text)


def test_the_shipped_weights_folders_are_found():
    found = {folder.relative_to(WEIGHTS).as_posix() for folder in weights_folders()}
    assert {"sentiment/tuned", "sentiment/untuned", "reviews/tuned", "positive/stream", "positive/whole"} <= found


@pytest.mark.parametrize("folder", weights_folders(), ids=lambda folder: folder.relative_to(WEIGHTS).as_posix())
def test_every_weights_folder_has_a_model_card_whose_figures_match_the_results(folder):
    problems = card_problems(folder)
    assert not problems, f"model card of {folder.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def _results(tmp_path) -> Path:
    (tmp_path / "results" / "demo").mkdir(parents=True)
    (tmp_path / "results" / "demo" / "summary.csv").write_text(
        "method,reward_mean,looping,drafts_kept\nbase,0.3034997,0.0,\ncbs-4x4,0.5744002,0.1638888,0.8695652\n")
    return tmp_path


CARD = """---
license: apache-2.0
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
library_name: peft
tags:
- w2s
---

# a guide

## Evaluation

| source | method | reward_mean | looping | drafts_kept |
|:--|:--|--:|--:|--:|
| `results/demo/summary.csv` | base | 0.303 | 0.0 |  |
| `results/demo/summary.csv` | cbs-4x4 | 0.574 | 0.164 | 0.87 |

## Limitations

| not | checked |
|--|--|
| 1 | 2 |
"""


def test_the_checker_passes_a_right_card_and_catches_a_wrong_number(tmp_path):
    root = _results(tmp_path)
    assert evaluation_problems(CARD, root) == []
    assert metadata_problems(CARD, "peft", "w2s:default-strong") == []
    wrong = CARD.replace("| 0.574 |", "| 0.547 |")
    assert evaluation_problems(wrong, root) == [
        "results/demo/summary.csv, method cbs-4x4, reward_mean: 0.547 is not 0.5744002 rounded to 3 decimals (0.574)"]
    assert evaluation_problems(CARD.replace("| 0.164 |", "| 0.16 |"), root)  # rounded to 2 decimals only
    assert evaluation_problems(CARD.replace("| 0.164 |", "| 16% |"), root)
    assert evaluation_problems(CARD.replace("| 0.0 |  |", "| 0.0 | 0.5 |"), root)  # the file has no value
    assert evaluation_problems(CARD.replace("| cbs-4x4 |", "| cbs-2x2 |"), root) == [
        "results/demo/summary.csv has no row for method 'cbs-2x2'"]
    assert evaluation_problems(CARD.replace("| looping |", "| loops |"), root) == [
        "results/demo/summary.csv has no column 'loops'"]
    assert evaluation_problems(CARD.replace("results/demo/", "results/other/"), root) == [
        "source 'results/other/summary.csv' is not a results CSV file"]


def test_the_checker_catches_a_wrong_number_in_a_shipped_card():
    folder, text = next((folder, (folder / "README.md").read_text(encoding="utf-8")) for folder in weights_folders()
                        if (folder / "README.md").exists()
                        and any(len(t) > 1 for t in evaluation_tables((folder / "README.md").read_text()) or []))
    assert evaluation_problems(text) == []
    table = evaluation_tables(text)[0]
    header, row = table[0], table[1]
    column = next(i for i, cell in enumerate(row) if i >= 2 and re.fullmatch(r"-?\d+\.\d+", cell))
    line = next(line for line in text.splitlines() if line.startswith("|") and f" {row[1]} |" in line
                and row[0] in line)
    cells = line.split("|")
    cells[column + 1] = f" {float(row[column]) + 0.01:.3f} "  # the line's cells, after its leading '|'
    problems = evaluation_problems(text.replace(line, "|".join(cells)))
    assert len(problems) == 1 and f"method {row[1]}, {header[column]}:" in problems[0], (folder, problems)


def test_the_metadata_checker_names_what_is_missing():
    assert metadata_problems("# no front matter\n", "peft") == [
        "the card does not open with YAML front matter (a '---' line)"]
    card = "---\nlicense: apache-2.0\nlibrary_name: transformers\ntags:\n- w2s\n---\n\nA small LM.\n"
    assert metadata_problems(card, "transformers") == [
        "front matter lacks base_model (only a full model the card says was trained from scratch may leave it out)"]
    assert metadata_problems(card.replace("A small LM.", "A small LM trained from scratch."), "transformers") == []
    unlicensed = card.replace("license: apache-2.0\n", "")
    assert metadata_problems(unlicensed, "transformers")[0] == "front matter lacks license"
    assert "library_name is 'transformers', but the folder's weights make it 'peft'" in metadata_problems(card, "peft")
    adapter = CARD.replace("HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct")
    assert metadata_problems(adapter, "peft", "qwen2.5-coder-0.5b-instruct") == []
    assert metadata_problems(adapter, "peft", "w2s:default-strong") == [
        "base_model is 'Qwen/Qwen2.5-Coder-0.5B-Instruct', but adapter_config.json's base 'w2s:default-strong' "
        "is 'HuggingFaceTB/SmolLM2-135M-Instruct'"]


def test_a_weights_folder_without_a_card_is_named(tmp_path):
    folder = tmp_path / "code-aligner" / "stream"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"")
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "w2s:default-strong"}))
    assert card_problems(folder) == ["it has no model card (README.md)"]
    (folder / "README.md").write_text(CARD.split("\n## Evaluation")[0])
    assert card_problems(folder) == []
