"""Evaluation commands: FID/KID/precision-recall of students, folders and teachers; text-to-image metrics.

``fdistill eval`` is :mod:`fdistill.eval.images` (sources: :mod:`~fdistill.eval.sources`, references:
:mod:`~fdistill.eval.references`, metrics: :mod:`~fdistill.eval.fid_eval`; student vs teacher with split noise and
cached teacher scores: :mod:`~fdistill.eval.against_teacher`, :mod:`~fdistill.eval.teacher_cache`);
``fdistill eval-t2i`` is the package :mod:`fdistill.eval.t2i`.
"""
