"""``python -m fdistill.train.caption_match``."""

from fdistill.train.caption_match.command import main

raise SystemExit(main())
