"""Calibrate the domain score of image bundles on shapes-world validation images.

    python scripts/calibrate_domain.py model_repository/caption-sat/1 ...
    python scripts/calibrate_domain.py --all model_repository

For each bundle whose pipeline takes an image, the validation images (the `val` split
of the shapes world with the recipe's seed, generated unless --data names a generated
world) are preprocessed as the bundle says, their statistics fitted
(`service.domain.fit_domain`) and written as `domain.json`; the manifest gets the file
under `files["domain"]` with its sha256, and nothing else of it changes. Graphs are
not touched. Run it after `glimpse export`, or on bundles exported before it existed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

from service.bundle import MANIFEST_FILE, Manifest, bundle_dirs, file_sha256, load_bundle
from service.domain import DOMAIN_FILE_KEY, fit_domain
from service.images import to_array
from service.pipelines import PIPELINES
from service.pipelines.base import ImagePipeline

DOMAIN_FILE = "domain.json"
NUM_VAL = 500
SEED = 0
GENERATE = (f"glimpse data shapes --num-val {NUM_VAL} --size 64 --seed {SEED} "
            "(the val split of the default recipe's world)")


def validation_images(data: Path | None) -> tuple[list[Image.Image], str]:
    """The val images of `data`, or of a world generated as the recipe does."""
    if data is None:
        from training.data.shapes import generate_shapes_world

        data = Path(tempfile.mkdtemp(prefix="glimpse-val-"))
        generate_shapes_world(data, {"val": NUM_VAL}, seed=SEED, progress=False)
        source = GENERATE
    else:
        source = f"{data}/images/val"
    files = sorted((data / "images" / "val").glob("*.png"))
    if not files:
        raise SystemExit(f"no validation images under {data}/images/val")
    return [Image.open(f).convert("RGB") for f in files], source


def takes_images(bundle_dir: Path) -> bool:
    task = load_bundle(bundle_dir).manifest.task
    return task in PIPELINES and issubclass(PIPELINES[task], ImagePipeline)


def write_manifest_keeping_format(path: Path, manifest: dict) -> None:
    """Write `manifest` in the layout the file already has (json.dumps or pydantic's), so
    that its diff is the new entry alone."""
    before = path.read_text()
    plain = json.dumps(json.loads(before), indent=2) + "\n" == before
    Manifest.model_validate(manifest)  # the service must still accept it
    text = (json.dumps(manifest, indent=2) + "\n" if plain
            else Manifest.model_validate(manifest).model_dump_json(indent=2) + "\n")
    path.write_text(text)


def calibrate(bundle_dir: Path, images: list[Image.Image], source: str) -> float:
    bundle = load_bundle(bundle_dir)
    pre = bundle.manifest.preprocessing
    arrays = [to_array(image, pre.image_size, pre.pixel_range) for image in images]
    statistics = fit_domain(arrays, pre.pixel_range, split="val", source=source)
    statistics.write(bundle_dir / DOMAIN_FILE)
    manifest_path = bundle_dir / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest.setdefault("files", {})[DOMAIN_FILE_KEY] = {
        "file": DOMAIN_FILE, "sha256": file_sha256(bundle_dir / DOMAIN_FILE)}
    write_manifest_keeping_format(manifest_path, manifest)
    load_bundle(bundle_dir)  # verifies the sha256s
    return statistics.threshold


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", nargs="*", type=Path, help="bundle directories NAME/VERSION")
    p.add_argument("--all", type=Path, metavar="REPOSITORY",
                   help="every image bundle of a model repository")
    p.add_argument("--data", type=Path, help="a generated shapes world (its images/val)")
    args = p.parse_args(argv)
    bundles = list(args.bundles) + (bundle_dirs(args.all) if args.all else [])
    bundles = [b for b in bundles if takes_images(b)]
    if not bundles:
        p.error("no image bundle given")
    images, source = validation_images(args.data)
    for bundle_dir in bundles:
        threshold = calibrate(bundle_dir, images, source)
        print(f"{bundle_dir}: threshold {threshold:.3f} from {len(images)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
