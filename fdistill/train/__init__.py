"""Training loops: the distillation trainer (distill.py) and the teacher trainer (teacher.py)."""
