"""The README's "Train your own" path at tiny scale, end to end (scripts/train_tiny.sh)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from shell_commands import glimpse_commands

from service.bundle import discover
from training.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_tiny.sh"
# Every family the path trains, as the bundle it exports, and where its evaluation
# records metrics in the manifest.
BUNDLES = {
    "caption-sat/1": ("caption", "test"), "caption-updown/1": ("caption", "test"),
    "vqa-updown/1": ("vqa", "novel"), "align-brnn/1": ("alignment", "test"),
    "retrieval-vse/1": ("retrieval", "test"), "gan-int-cls/1": ("generation", "test"),
    "stackgan/1": ("generation", "test"), "activity-lrcn/1": ("activity", "test"),
    "video-caption-lrcn/1": ("video-caption", "test"), "dalle/1": ("generation", "test"),
}


def readme_training_path() -> str:
    """The shell blocks of the README's "Train your own" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Train your own"):readme.index("## Documentation")]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S))


def test_the_tiny_script_runs_the_commands_of_the_readme_path():
    parser = build_parser()
    readme = {parser.parse_args(argv)._command
              for argv in glimpse_commands(readme_training_path())}
    script = {parser.parse_args(argv)._command for argv in glimpse_commands(SCRIPT.read_text())}
    assert readme - {"serve"} == script
    assert {"export", "eval bundle", "eval vqa-bundle", "eval alignment", "eval retrieval",
            "eval generation", "index"} <= script


@pytest.mark.slow
@pytest.mark.timeout(1500)  # trains and exports every family, the video ones included
def test_tiny_training_path_exports_and_evaluates_every_family(tmp_path):
    work = tmp_path / "tiny"
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "model_repository").rglob("*"))
    glimpse = Path(sys.executable).with_name("glimpse")
    env = {**os.environ, "GLIMPSE": str(glimpse), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), str(work)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    bundles, errors = discover(work / "repository")  # validates manifests, checks sha256
    assert errors == []
    assert {b.key: b.manifest.task for b in bundles} == {k: t for k, (t, _) in BUNDLES.items()}
    for bundle in bundles:
        split = BUNDLES[bundle.key][1]
        assert bundle.manifest.metrics.get(split), f"{bundle.key}: no metrics for {split}"
    retrieval = next(b for b in bundles if b.key == "retrieval-vse/1")
    assert set(retrieval.manifest.inference["galleries"]) == {"images", "captions"}
    # Nothing lands in the committed repository.
    assert sorted(p.relative_to(ROOT) for p in (ROOT / "model_repository").rglob("*")) \
        == committed
    summary = json.loads((work / "runs" / "sat" / "summary.json").read_text())
    assert summary["epochs"] == 1
