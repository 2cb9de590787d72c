"""Result files: written once where gradio serves them from, and kept under a disk cap.

Handlers return paths, not arrays: gradio writes returned arrays/PIL images to a content-addressed cache file
non-atomically, so two users receiving identical images at once could read a half-written file. The files are
written inside gradio's own cache folder (``GRADIO_TEMP_DIR``), which gradio then serves without copying them
again; uploads land there too, so one cap bounds everything the Space writes.

The cap (``DDPM_DISK_CAP_MB``, default 1024 MB) is enforced oldest first, by modification time. A result stays
downloadable until newer results push it out, or for gradio's own age limit (an hour), whichever comes first.
An upload is admitted only once there is room for its declared size (:meth:`Janitor.reserve`, called by
``ui.guard`` before gradio reads the body), so uploads count against the cap as they arrive. The app's own files
(the example images) are served from the repo's ``examples/`` folder as gradio static files, never copied here,
so no sweep can remove them.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gradio.utils import get_upload_folder
from PIL import Image

DISK_CAP_BYTES = int(float(os.environ.get("DDPM_DISK_CAP_MB", 1024)) * 2**20)
#: After the cap is hit, files are removed until this share of it is in use, so that the sweep is rare.
LOW_WATER = 0.8
#: How often (at most) the folder is measured; what is written in between can overshoot the cap by that much.
SWEEP_EVERY_S = 1.0


def cache_root() -> Path:
    """gradio's cache folder (uploads and everything it serves), where results are written."""
    return Path(get_upload_folder()).resolve()


def out_dir() -> Path:
    return cache_root() / "ddpm-explorer"


def out_path(name: str) -> Path:
    """A fresh folder per result, so downloads keep a readable name and never collide between users."""
    folder = out_dir() / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    JANITOR.poke()
    return folder / name


_ENCODER = ThreadPoolExecutor(4, thread_name_prefix="png")  # PIL releases the GIL while encoding


def png(img, name: str = "image.png") -> str:
    """Write an image (PIL or uint8 array) as PNG under a fresh path and return the path."""
    if not hasattr(img, "save"):
        img = Image.fromarray(img)
    path = out_path(name)
    img.save(path, format="PNG", compress_level=1)
    return str(path)


def pngs(items: list[tuple]) -> list[str]:
    """``png(*item)`` for each item, encoded in parallel."""
    return list(_ENCODER.map(lambda item: png(*item), items))


def folder_bytes(root: Path) -> int:
    return sum(size for _, size, _ in _files(root))


def _files(root: Path):
    """(mtime, size, path) of every file under ``root``."""
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    yield st.st_mtime, st.st_size, entry.path
            except OSError:  # removed meanwhile by gradio's own cleanup or another sweep
                continue


def sweep(root: Path, cap: int, low_water: float = LOW_WATER) -> tuple[int, int]:
    """If the files under ``root`` take more than ``cap`` bytes, remove the oldest until at most
    ``low_water * cap`` remain. Returns (bytes in use after, files removed)."""
    files = sorted(_files(root))
    total = sum(size for _, size, _ in files)
    removed = 0
    if total <= cap:
        return total, 0
    target = int(cap * low_water)
    for _, size, path in files:
        if total <= target:
            break
        try:
            os.unlink(path)
            total -= size
            removed += 1
        except OSError:
            continue
    for folder in {os.path.dirname(p) for _, _, p in files[:removed]}:
        try:
            os.rmdir(folder)  # only if empty
        except OSError:
            pass
    return total, removed


class Janitor:
    """Keeps gradio's cache folder under the cap; woken by every write, walking it at most once per interval.

    Walking the folder costs a stat per file: 0.4 s for 12,000 files with the disk's metadata cached, 2.5 s without.
    So an upload is admitted from a running count (the bytes the last walk found, plus the uploads that arrived or
    are arriving since) and the folder is walked only when that count leaves no room; :meth:`reserve` may walk, so
    the server calls it off its event loop. The counters' lock is never held during a walk."""

    #: The janitor rests at least this many times as long as its last walk took, so that a folder of many files
    #: costs it at most a fifth of one core.
    REST_PER_WALK = 4.0

    def __init__(self, cap: int = DISK_CAP_BYTES, every_s: float = SWEEP_EVERY_S, root: Path | None = None):
        self.cap, self.every_s = cap, every_s
        self._root = root
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # starting the thread
        self._count = threading.Lock()  # the counters below, for arithmetic only
        self._walk = threading.Lock()  # one walk of the folder at a time
        self.used: int | None = None  # bytes found by the last walk (None: never walked)
        self.arrived = 0  # bytes of uploads arrived since the last walk began
        self.reserved = 0  # bytes of uploads admitted and still arriving
        self.last_walk_s = 0.0
        self.stats = {"walks": 0, "removed": 0, "bytes": 0}

    def root(self) -> Path:
        return self._root if self._root is not None else cache_root()

    def reserve(self, nbytes: int) -> bool:
        """Make room for an upload of ``nbytes`` under the cap, removing the oldest files if needed; False if it
        cannot fit (larger than the cap, or the uploads already arriving hold the room). Blocking: it walks the
        folder when the count leaves no room (or before the first walk)."""
        if nbytes > self.cap:
            return False
        with self._count:
            if self.used is not None and self.used + self.arrived + self.reserved + nbytes <= self.cap:
                self.reserved += nbytes
                return True
        with self._walk:
            with self._count:
                room = self.cap - self.reserved - nbytes
                if room < 0:
                    return False
                self.reserved += nbytes  # held while walking, so that no other upload takes this room meanwhile
            try:
                self._measure(room)
            except BaseException:
                with self._count:
                    self.reserved -= nbytes
                raise
            return True

    def release(self, nbytes: int) -> None:
        """The upload of ``nbytes`` has arrived (or failed): it now counts as arrived until the next walk."""
        with self._count:
            self.reserved = max(0, self.reserved - nbytes)
            self.arrived += nbytes
        self.poke()

    def poke(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="disk-janitor", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self.run_once()
            time.sleep(max(self.every_s, self.REST_PER_WALK * self.last_walk_s))

    def run_once(self) -> int:
        """Walk the folder now (removing the oldest files if it holds more than the cap); the bytes it holds."""
        with self._walk:
            with self._count:
                room = self.cap - self.reserved
            return self._measure(room)

    def _measure(self, room: int) -> int:
        """One walk, under ``self._walk``: keep the folder within ``room`` and restart the count from what it holds."""
        with self._count:
            seen = self.arrived  # what arrives during the walk stays counted: it may be missed by the walk
        t0 = time.perf_counter()
        used, removed = sweep(self.root(), room)
        with self._count:
            self.used, self.arrived = used, self.arrived - seen
            self.last_walk_s = time.perf_counter() - t0
            self.stats["walks"] += 1
            self.stats["removed"] += removed
            self.stats["bytes"] = used
        return used


JANITOR = Janitor()
