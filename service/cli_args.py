"""The serve command's flags, shared by `glimpse serve` and `python -m service`.

Kept free of heavy imports: `glimpse --help` builds every subcommand's parser.
"""

from __future__ import annotations

import argparse


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="bind address (GLIMPSE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (GLIMPSE_PORT, default 8000)")
    p.add_argument("--repository", default=None,
                   help="model repository directory (GLIMPSE_MODEL_REPOSITORY)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--log-level", default=None, help="GLIMPSE_LOG_LEVEL, default info")
