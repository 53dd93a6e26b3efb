"""Compatibility re-export: the student pipeline lives in :mod:`fdistill.export.pipeline`."""

from fdistill.export.pipeline import OneStepOutput, OneStepPipeline, export_student, model_card

__all__ = ["OneStepOutput", "OneStepPipeline", "export_student", "model_card"]
