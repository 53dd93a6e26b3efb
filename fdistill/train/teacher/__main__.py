"""``python -m fdistill.train.teacher ...`` = ``fdistill train-teacher ...``."""

from fdistill.train.teacher.cli import main

raise SystemExit(main())
