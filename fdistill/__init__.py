"""fdistill: distill multi-step diffusion teachers into one-step generators.

Methods (DI, DMD/DMD2, SiD, SIM, f-distill, Uni-Instruct, Diff-Instruct*) are small pure losses behind
one registry (:mod:`fdistill.methods`); one accelerate trainer (:mod:`fdistill.train.distill`) runs
them all. See ``docs/math.md`` for the notation used throughout.
"""

__version__ = "0.1.0"
