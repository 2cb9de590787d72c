"""The repository stands alone: a user's clone has nothing beside it, and its text speaks of the project only."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Text that points outside the repo, or speaks of how the project's work was organised rather than of the project.
FORBIDDEN = {
    "a path outside the repo": re.compile(r"\.\./shared|\.library/|/ *\"shared\"|ROOT\.parent\b"),
    "an issue-tracker reference": re.compile(r"(?<!diffusers )\bissue #\d+", re.IGNORECASE),
    "words about the work's organisation": re.compile(
        r"\b(this|that|an earlier|a later|the next) session\b|\bdevice machine\b|\blent\b", re.IGNORECASE
    ),
}


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an sdist or a copied folder): nothing to list")
    files = []
    for name in filter(None, out.decode().split("\0")):
        path = ROOT / name
        if path.suffix in {".py", ".md", ".txt", ".sh", ".ini", ".cfg", ".toml", ".json", ".yml", ".yaml"} or name in {
            "Makefile",
            ".ci/run",
        }:
            files.append(path)
    return files


def test_the_listing_sees_the_code():
    names = {p.relative_to(ROOT).as_posix() for p in _tracked_text_files()}
    assert {"app.py", "README.md", ".ci/run", "tests/conftest.py", "ddpm_core/diffusion.py"} <= names


@pytest.mark.parametrize("what", list(FORBIDDEN))
def test_no_tracked_text_matches(what):
    pattern = FORBIDDEN[what]
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()[:120]}"
        for p in _tracked_text_files()
        if p != Path(__file__).resolve() and p.is_file()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, f"{what}:\n" + "\n".join(hits)


def test_the_reference_configs_live_in_the_repo():
    from helpers import DATA

    for name in ("unet-ddpm-cifar10-32.config.json", "unet-ddpm-celebahq-256.config.json"):
        assert (DATA / name).is_file() and DATA.resolve().is_relative_to(ROOT)
