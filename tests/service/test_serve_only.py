"""The service runs without torch (or onnx, or training code): a serve-only install.

A subprocess installs an import hook that refuses those packages, then starts the app
(lifespan included), captions an image and imports every service module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tiny_bundle import sample_png

SERVE_ONLY = r'''
import importlib, importlib.abc, json, pkgutil, sys

REFUSED = ("torch", "onnx", "onnxscript", "training", "models")
attempts = []

class RefuseTrainingPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            attempts.append(name)
            raise ModuleNotFoundError(f"{name} is not part of a serve-only install", name=name)
        return None

sys.meta_path.insert(0, RefuseTrainingPackages())

import service
for module in pkgutil.walk_packages(service.__path__, "service."):
    importlib.import_module(module.name)

from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings

with TestClient(create_app(Settings(model_repository=sys.argv[1]))) as client:
    with open(sys.argv[2], "rb") as f:
        answer = client.post("/v1/captions", files={"file": f},
                             data={"model": "caption-tiny", "return_attention": "true"})
print(json.dumps({"status": answer.status_code, "body": answer.json(),
                  "attempts": attempts,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in REFUSED)}))
'''


def test_serves_a_caption_without_torch(repository: Path, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(sample_png(2))
    run = subprocess.run([sys.executable, "-c", SERVE_ONLY, str(repository), str(image)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    assert result["body"]["model"] == "caption-tiny/2"
    assert len(result["body"]["attention"]) == 1
    assert result["loaded"] == []
    assert result["attempts"] == []  # nothing even tried to import them
