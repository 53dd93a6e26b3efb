"""Evaluation commands: FID/KID/precision-recall of students, folders and teachers; text-to-image metrics."""
