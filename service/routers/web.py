"""GET /: the web page (service/static/), where every served model can be tried.

Plain HTML, CSS and JavaScript shipped in the package: no build step, nothing loaded
from another host. The page calls the same /v1 endpoints as any client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parents[1] / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def static_files() -> StaticFiles:
    """The page's files, mounted at /static."""
    return StaticFiles(directory=STATIC)
