"""What a failed stage left behind: file hashes before/after, and atomic_path's temporaries."""

import hashlib
from pathlib import Path


def snapshot(root: Path, rels) -> dict[str, str]:
    """{file: sha256} of every file under each of `rels` (files or directories) in `root`."""
    out = {}
    for rel in rels:
        p = root / rel
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def leftovers(root: Path) -> list[str]:
    """Temporary siblings atomic_path makes (".<name>.*"), anywhere in the project."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob(".*") if p.name not in (".git", ".dvc")
    )
