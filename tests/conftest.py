"""Test-wide settings: no network, one torch thread (tiny models are far faster single-threaded on the
2-core CI machine, and parallel tests/background jobs do not oversubscribe it)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

torch.set_num_threads(1)
