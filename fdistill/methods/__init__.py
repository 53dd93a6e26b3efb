"""Method registry: ``names()``, ``get(name)``, ``build(cfg)``. Importing this package registers all
methods: di, dmd, sid, sim, fdistill, uni_instruct, di_star."""

from fdistill.methods import di_star, diff_instruct, dmd, f_distill, sid, sim, uni_instruct  # noqa: F401
from fdistill.methods.base import GeneratorInputs, Method, MethodOutput, build, get, names, register

__all__ = ["GeneratorInputs", "Method", "MethodOutput", "build", "get", "names", "register"]
