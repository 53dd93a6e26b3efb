"""The registry of ``fdistill eval`` sample sources: a SOURCE string -> :class:`SampleSource` (uint8 images).

:func:`resolve_source` tries, in order:

1. sources registered with :func:`register_source`, the most recently registered first. Third-party packages
   register theirs through the entry-point group ``fdistill.sample_sources``: each entry point names a callable,
   called once (with no arguments) before the first resolution, that calls :func:`register_source`; a plugin that
   fails to load is logged and skipped;
2. the built-in ones: a distilled student's exported pipeline or run directory
   (:mod:`fdistill.eval.student_sources`), an ``.npz`` of images, an image folder
   (:mod:`fdistill.eval.image_files`; a model folder or an unclaimed run directory is refused with a hint,
   :mod:`fdistill.eval.model_folders`).

A generator source is any callable ``generate(n, seed) -> uint8 tensor (n, C, H, W)`` wrapped in a
:class:`SampleSource`; give it a ``teacher(nfe) -> SampleSource`` to make ``--teacher-nfe 1,2,4,8,35``
evaluate the teacher at those NFEs into a teacher-vs-student ``table``::

    from fdistill.eval.sources import SampleSource, SourceOptions, register_source

    def is_student_run(spec: str) -> bool:
        return (Path(spec) / "checkpoints").is_dir()

    def load_student_run(spec: str, options: SourceOptions) -> SampleSource:
        student, teacher = ...  # load on options.device
        return SampleSource(
            name=spec,
            generate=lambda n, seed: quantize_uint8(student.sample(n, seed)),  # [-1, 1] -> uint8, rounded
            teacher=lambda nfe: SampleSource(f"teacher@{nfe}", lambda n, seed: ..., info={"nfe": nfe}),
            info={"nfe": 1, "method": "..."},
        )

    register_source(is_student_run, load_student_run, name="student-run")
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from torch import Tensor

from fdistill.eval.image_files import load_image_folder, load_npz_images
from fdistill.eval.model_folders import model_folder_message, run_or_pipeline_marker
from fdistill.eval.source_types import SampleSource, SourceOptions, tensor_source
from fdistill.eval.student_sources import is_student, load_student

__all__ = [
    "ENTRY_POINT_GROUP",
    "SampleSource",
    "SourceOptions",
    "register_source",
    "registered_sources",
    "resolve_source",
    "tensor_source",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fdistill.sample_sources"

SourcePredicate = Callable[[str], bool]
SourceLoader = Callable[[str, SourceOptions], "SampleSource | Tensor | Callable[[int, int], Tensor]"]
_SOURCES: list[tuple[str, SourcePredicate, SourceLoader]] = []
_plugins_loaded = False


def register_source(predicate: SourcePredicate, loader: SourceLoader, name: str | None = None) -> None:
    """Register a sample source; it is tried before all earlier ones (and before the built-in ones).

    ``predicate(spec)`` says whether this loader handles the SOURCE string; ``loader(spec, options)`` returns a
    :class:`SampleSource`, a uint8 (N, C, H, W) tensor, or a ``generate(n, seed)`` callable.
    """
    _SOURCES.insert(0, (name or getattr(loader, "__name__", "source"), predicate, loader))


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as e:  # a broken third-party plugin must not break folder/npz evaluation
            log.warning("sample-source plugin %s failed to load: %s", ep.name, e)


def _load_folder(spec: str, options: SourceOptions) -> SampleSource:  # noqa: ARG001
    model = model_folder_message(Path(spec))
    if model is not None:
        raise ValueError(model)
    marker = run_or_pipeline_marker(Path(spec))
    if marker is not None:
        known = ", ".join(registered_sources()) or "none"
        raise ValueError(
            f"{spec} looks like a run directory or pipeline (it has {marker}) but no registered sample source "
            f"claims it (registered: {known}); import the module that calls fdistill.eval.sources.register_source, "
            "or export samples to a folder / .npz first"
        )
    return tensor_source(load_image_folder(spec), name=f"folder:{spec}")


def _load_npz(spec: str, options: SourceOptions) -> SampleSource:  # noqa: ARG001
    images, note = load_npz_images(spec)
    return tensor_source(images, name=f"npz:{spec}", info={"value_range": note})


MODEL_SOURCES: list[tuple[str, SourcePredicate, SourceLoader]] = [("fdistill-student", is_student, load_student)]
FILE_SOURCES: list[tuple[str, SourcePredicate, SourceLoader]] = [
    ("npz", lambda spec: spec.endswith(".npz") and Path(spec).is_file(), _load_npz),
    ("folder", lambda spec: Path(spec).is_dir(), _load_folder),
]


def registered_sources() -> list[str]:
    """Names of the sources tried before ``.npz`` files and folders, in the order tried."""
    _load_plugins()
    return [name for name, _, _ in [*_SOURCES, *MODEL_SOURCES]]


def _as_source(spec: str, obj: SampleSource | Tensor | Callable[[int, int], Tensor], name: str) -> SampleSource:
    if isinstance(obj, SampleSource):
        return obj
    if isinstance(obj, Tensor):
        return tensor_source(obj, name=f"{name}:{spec}")
    if callable(obj):
        return SampleSource(name=f"{name}:{spec}", generate=obj)
    raise TypeError(f"sample source {name!r} returned {type(obj).__name__}; expected SampleSource, Tensor or callable")


def resolve_source(spec: str, options: SourceOptions | None = None) -> SampleSource:
    """The :class:`SampleSource` for a SOURCE string (registered sources first, then the built-in ones)."""
    _load_plugins()
    options = options or SourceOptions()
    for name, predicate, loader in [*_SOURCES, *MODEL_SOURCES, *FILE_SOURCES]:
        if predicate(spec):
            return _as_source(spec, loader(spec, options), name)
    if not Path(spec).exists():
        raise FileNotFoundError(f"SOURCE {spec!r} does not exist")
    raise ValueError(
        f"SOURCE {spec!r}: no sample source handles it; accepted: an image folder, an .npz of images, or what "
        f"these registered sources accept: {', '.join(registered_sources())}"
    )
