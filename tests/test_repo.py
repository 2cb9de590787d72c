"""The repository stands alone: a user's clone has nothing beside it, and its text speaks of the project only."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Text that speaks of how the project's work was organised rather than of the project, or builds paths above it.
FORBIDDEN = {
    "a path built above the repo root": re.compile(r"ROOT\.parent\b"),
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


# A relative path climbing out of its folder, or an absolute path: candidates for a reference outside the repo.
PATHS = re.compile(r"(?:\.\./)+[\w.\-/]+|(?<![\w.:/])/[\w.\-]+(?:/[\w.\-]+)+")


def _outside(found: str, base: Path) -> Path | None:
    """The existing file or folder beside the repo (under its parent folder, not in it) that ``found``, read from
    ``base``, names; None if it names nothing there."""
    for start in (base, ROOT):
        target = Path(found) if found.startswith("/") else start / found
        try:
            target = target.resolve()
        except OSError:
            continue
        if target.is_relative_to(ROOT.parent) and not target.is_relative_to(ROOT) and target != ROOT.parent:
            if target.exists():
                return target
    return None


def test_no_tracked_text_names_a_place_beside_the_repo():
    """Whatever lies beside this checkout on this machine (a user's clone has nothing there) is named nowhere in
    the repo's text: every path the text mentions resolves into the repo or to nothing beside it. Paths that climb
    out on purpose (refused path escapes in the tests) point at nothing that exists."""
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {found} -> {where}"
        for p in _tracked_text_files()
        if p.is_file()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        for found in PATHS.findall(line)
        if (where := _outside(found, p.parent)) is not None
    ]
    assert not hits, "\n".join(hits)


def test_the_reference_configs_live_in_the_repo():
    from helpers import DATA

    for name in ("unet-ddpm-cifar10-32.config.json", "unet-ddpm-celebahq-256.config.json"):
        assert (DATA / name).is_file() and DATA.resolve().is_relative_to(ROOT)
