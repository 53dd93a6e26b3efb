"""Bounding Gradio's cache of result PNGs: the demo's own sweep (what Gradio 6's ``delete_cache`` can stop doing).

Every result image is a new file ``<cache>/<sha256 of its bytes>/image.png`` (each carries a request id, see
:func:`fdistill.apps.demo.ui.gallery`); :func:`sweep_cache` deletes the old ones with their folders and
:func:`remove_empty_cache_dirs` the empty folders Gradio's own sweep leaves (file housekeeping, no maths).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["cache_sweeper", "remove_empty_cache_dirs", "sweep_cache"]

log = logging.getLogger("fdistill.apps.demo")


def _is_hash_name(name: str) -> bool:
    return len(name) >= 32 and all(c in "0123456789abcdef" for c in name)


def remove_empty_cache_dirs(cache_dir: str | Path, min_age: float) -> int:
    """Remove the empty per-file folders of Gradio's cache untouched for ``min_age`` seconds; returns how many.

    Gradio saves each output file as ``<cache>/<sha256 of its bytes>/image.png`` and its ``delete_cache`` sweep
    deletes the file but leaves the folder, so without this every result image would leave an empty folder (an
    inode, 4 KiB on ext4) for good. Only folders named like a content hash directly under ``cache_dir`` are
    considered; ``os.rmdir`` never removes a folder that holds a file, and a folder is left alone until its last
    change is ``min_age`` old (one just created for a file being written is never touched)."""
    removed, now = 0, time.time()
    try:
        entries = list(os.scandir(cache_dir))
    except OSError:
        return 0
    for entry in entries:
        if not _is_hash_name(entry.name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > min_age:
                os.rmdir(entry.path)
                removed += 1
        except OSError:  # not empty, or already gone
            continue
    return removed


def sweep_cache(blocks: gr.Blocks, age: float, min_dir_age: float) -> tuple[int, int]:
    """Delete the files ``blocks`` put in Gradio's cache more than ``age`` seconds ago (by ctime, as Gradio goes),
    with their folders, then the empty folders left by anyone else (:func:`remove_empty_cache_dirs`); returns
    ``(files, folders)`` removed.

    The same job as Gradio's ``delete_cache`` sweep, done safely: Gradio 6's walks each live set of the files it
    tracks, so a request finishing during a sweep ("Set changed size during iteration") ends its schedule for good and
    the cache grows from then on. This walks copies, drops deleted files from the sets, and skips the components'
    ``keep_in_cache`` files as Gradio does."""
    cache = Path(blocks.GRADIO_CACHE).resolve()
    keep: set[str] = set()
    for component in list(blocks.blocks.values()):
        keep.update(getattr(component, "keep_in_cache", ()))
    files, now = 0, time.time()
    for temp_set in list(blocks.temp_file_sets):
        for name in list(temp_set):
            if name in keep:
                continue
            path = Path(name)
            try:
                if now - path.lstat().st_ctime <= age:
                    continue
                path.unlink()
                files += 1
            except FileNotFoundError:
                pass
            except OSError:
                continue
            temp_set.discard(name)
            if path.parent.parent == cache and _is_hash_name(path.parent.name):
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
    return files, remove_empty_cache_dirs(cache, min_dir_age)


def cache_sweeper(blocks: gr.Blocks, frequency: int, age: int) -> Any:
    """A FastAPI lifespan that runs :func:`sweep_cache` twice per ``frequency`` seconds (Gradio's sweep period)
    while serving; a failed sweep is logged and the next one runs on time. Folders changed in the last
    ``min(period, 10)`` seconds are left alone."""
    period = max(1, frequency // 2)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(period)
                try:
                    await asyncio.to_thread(sweep_cache, blocks, age, min(period, 10))
                except Exception:
                    log.exception("cache sweep failed")

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan
