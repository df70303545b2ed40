"""The package's shape: imports point one way (no cycles, nothing imports the command line), every
flag of every command comes from a documented config dataclass, and the server reads the same ones."""

import ast
import dataclasses
import re
import shlex
from pathlib import Path

import pytest

import w2s
from w2s.cli import build_parser
from w2s.cli.flags import expected_dests
from w2s.configs import field_docs, param_names, params

PACKAGE = Path(w2s.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking(node) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, path: Path, known) -> set[str]:
    """The w2s modules ``name`` imports anywhere in its body (functions too; not under TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if _type_checking(node) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "w2s"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "w2s":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & set(known)
            found |= subs or {target}
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_outside_the_command_line_imports_it():
    graph = import_graph()
    outside = {m: sorted(t for t in targets if t == "w2s.cli" or t.startswith("w2s.cli."))
               for m, targets in graph.items() if not (m == "w2s.cli" or m.startswith("w2s.cli."))}
    assert {m: t for m, t in outside.items() if t} == {}
    assert "w2s.cli.search" in graph["w2s.cli"]  # the walk sees the imports


# the direction imports go: a module imports only its own layer or lower ones
LAYERS = {"cli": 5, "evaluation": 4, "serve": 4, "demo": 4, "lm_eval": 4, "training": 3, "search": 3, "aligner": 3,
          "tasks": 3, "scoring": 2, "models": 1, "backends": 1, "names": 1, "configs": 0, "defaults": 0, "validation": 0, "jsonl": 0,
          "_lazy": 0}


def test_imports_point_down_the_layers():
    def layer(module):
        parts = module.split(".")
        return LAYERS[parts[1]] if len(parts) > 1 else 6  # the package itself re-exports everything

    upward = sorted((m, t) for m, targets in import_graph().items() for t in targets if layer(t) > layer(m))
    assert upward == []


def leaf_parsers(parser, path=()):
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    if not subs:
        yield " ".join(path), parser
        return
    for name, sub in subs[0].choices.items():
        yield from leaf_parsers(sub, (*path, name))


COMMANDS = dict(leaf_parsers(build_parser()))


def test_every_command_is_there():
    assert set(COMMANDS) == {"search", "demo", "setup", "train lm", "train dpo", "train aligner", "stream", "align",
                             "data corrections", "data code-pairs", "data code-corrections", "eval sentiment", "eval reviews", "eval stream", "eval code",
                             "serve", "lm-eval"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_flag_comes_from_a_field_and_each_field_has_a_flag(command):
    parser = COMMANDS[command]
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == expected_dests(parser)  # no flag written by hand
    for kind, classes, names in getattr(parser, "w2s_sources", []):
        if kind == "config":
            skipped = {"models", "methods"} if w2s.serve.ServeConfig in classes else set()
            for cls in classes:
                assert set(param_names(cls)) - skipped <= set(names) <= dests, cls


def test_documented_short_flags_still_parse():
    args = build_parser().parse_args(["search", "--method", "cbs", "--successors", "3", "--max-new-tokens", "5",
                                      "--prompts", "-", "--output", "-", "--request-timeout", "9", "--stop", "a",
                                      "--stop", "b", "c", "--chunk-length", "inf"])
    assert (args.successors_per_beam, args.timeout, args.stop, args.chunk_length) == (3, 9.0, ("a", "b", "c"), None)
    stream = build_parser().parse_args(["stream", "--question", "Q", "--speculative", "--top-k", "5",
                                        "--max-correction-tokens", "7"])
    assert (stream.speculative, stream.top_k, stream.max_correction_tokens, stream.max_sentences) == (True, 5, 7, 4)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--method", "cbs", "--max-new-tokens", "x", "--prompts", "-",
                                   "--output", "-"])


CONFIGS = [w2s.ChunkBeamSearch, w2s.BestOfN, w2s.Sampling, w2s.EmulatedFineTuning, w2s.StreamAligner, w2s.Aligner,
           w2s.SamplingParams, w2s.models.ModelSpec, w2s.serve.ServeConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_is_documented(cls):
    docs = field_docs(cls)  # raises on an undocumented field
    assert all(text.strip() for text in docs.values())
    assert [p.name for p in params(cls)]


def test_an_undocumented_field_is_an_error():
    @dataclasses.dataclass
    class Config:
        """Attributes:
        width: documented.
        """

        width: int = 1
        depth: int = 2

    with pytest.raises(TypeError, match=r"does not document its fields \['depth'\]"):
        field_docs(Config)


def test_the_server_validates_its_w2s_block_with_the_same_configs():
    from w2s.serve.config import SERVED_METHODS, method_fields

    for method, cls in SERVED_METHODS.items():
        assert set(method_fields(method)) == set(param_names(cls)) - {"return_beams"}
    with pytest.raises(ValueError, match="temperature must be"):
        w2s.serve.ServeConfig(methods={"stream_aligner": {"temperature": -1}})


ROOT = PACKAGE.parent.parent
# the pages that show `w2s` commands: the README and the documentation site (docs/, built by mkdocs.yml)
DOCUMENTED = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# the page whose Layout block names every module of the package
LAYOUT_PAGE = ROOT / "docs" / "development.md"


def commands_in(path: Path) -> list[str]:
    """The ``w2s ...`` command lines of a Markdown page's shell blocks (continuations joined, comments cut)."""
    commands, language, lines = [], None, path.read_text(encoding="utf-8")
    for line in lines.replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            language = None if language is not None else (line[3:].strip() or "text")
            continue
        line = re.sub(r"\s+#.*$", "", line).strip()
        if language in ("bash", "sh", "text") and line.startswith("w2s ") and "..." not in line:
            commands.append(line)
    return commands


def documented_commands() -> list[str]:
    """Every ``w2s`` command shown in the README and the docs, each once, in page order."""
    return list(dict.fromkeys(line for path in DOCUMENTED for line in commands_in(path)))


def test_the_docs_have_commands_to_check():
    assert len(documented_commands()) >= 10
    assert commands_in(ROOT / "README.md"), "the README's quick start shows no w2s command"


@pytest.mark.parametrize("line", documented_commands(), ids=str)  # the id is the command, however long
def test_every_documented_command_parses(line):
    argv = [word.strip("[]") for word in shlex.split(line)[1:]]
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_the_layout_page_names_every_module_and_only_those():
    """The Layout block of docs/development.md lists every module of the package (by file name under its
    folder), and no module that is not there."""
    text = LAYOUT_PAGE.read_text(encoding="utf-8")
    block = text[text.index("```\nsrc/w2s/\n"):]
    block = block[: block.index("\n```", 4)]
    folder, named = "", set()
    for line in block.splitlines()[2:]:
        head = re.match(r"  (\w+)(/|\.py)\s", line)
        if head:
            folder = head.group(1) if head.group(2) == "/" else ""
            if head.group(2) == ".py":
                named.add(f"{head.group(1)}.py")
        elif not line.startswith(" "):
            break
        for module in re.findall(r"\b(\w+\.py)\b", line[14:] if head else line):
            named.add(f"{folder}/{module}" if folder else module)
    modules_here = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                    if not p.name.startswith("_") and "weights" not in p.parts}
    assert modules_here - named == set(), f"modules missing from the Layout of {LAYOUT_PAGE.name}"
    assert named - modules_here == set(), f"the Layout of {LAYOUT_PAGE.name} names modules that do not exist"
