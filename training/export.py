"""`glimpse export`: a training run → a model bundle the service can load.

    model_repository/NAME/VERSION/
        manifest.json      (service.bundle.Manifest)
        encoder.onnx       image [batch, 3, S, S] in [0, 1] -> context, h, c
        decoder_step.onnx  tokens, parents, h, c, context -> top-k log-probs and ids,
                           h_out, c_out (, alpha)
        vocab.json

The checkpoint's config rebuilds the model; the weights come from safetensors.
Export is followed by a parity check of ONNX Runtime against PyTorch on fresh
random inputs, and refuses to write a bundle that fails it.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from service.bundle import NAME_PATTERN, describe_graph, file_sha256, write_manifest
from training.checkpoint import checkpoint_dir, load_config, load_weights

DEFAULT_TOP_K = 64


def next_version(repository: Path, name: str) -> int:
    existing = [int(p.name) for p in (repository / name).glob("*") if p.name.isdigit()]
    return max(existing, default=0) + 1


@contextmanager
def staged_bundle(repository: Path, name: str,
                  version: int | None = None) -> Iterator[tuple[Path, int]]:
    """Yield (staging directory, version) for bundle repository/name/version.

    The version defaults to the next free one. Everything is written into a hidden
    staging directory that becomes the bundle only when the block ends without an
    error, so an export that fails (a parity check, say) leaves no half-written
    bundle for the service to find.
    """
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"model name {name!r} must be lowercase letters, digits and '-'")
    repository = Path(repository)
    version = version or next_version(repository, name)
    bundle = repository / name / str(version)
    if bundle.exists():
        raise FileExistsError(f"{bundle} exists; choose another --version")
    tmp = bundle.with_name(f".{version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp, version
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(bundle)


def file_entry(directory: Path, filename: str) -> dict[str, str]:
    """A manifest `files` entry: the file's name and sha256."""
    return {"file": filename, "sha256": file_sha256(Path(directory) / filename)}


def image_preprocessing(image_size: int, mean, std, *, tokenizer: dict | None = None) -> dict:
    """The manifest's `preprocessing` of a bundle whose graphs take `image` in [0, 1]."""
    return {"image_size": image_size, "resize": "bilinear", "pixel_range": [0.0, 1.0],
            "layout": "NCHW", "mean": list(mean), "std": list(std), "tokenizer": tokenizer}


def created_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def load_caption_model(ckpt: Path):
    from models.captioners import build_caption_model, caption_config
    from training.data.tokenizer import WordVocab

    config = load_config(ckpt)
    model_cfg = config["model"]
    if model_cfg.get("task") != "caption":
        raise ValueError(f"{ckpt}: task {model_cfg.get('task')!r} is not a caption model")
    model = build_caption_model(caption_config(model_cfg["caption"]))
    load_weights(model, ckpt)
    model.eval()
    return model, WordVocab.from_dict(model_cfg["vocab"]), config


def check_parity(model, bundle_dir: Path, image_size: int, *, seed: int = 0,
                 atol: float = 1e-4) -> dict[str, float]:
    """Max |ONNX Runtime − PyTorch| of every graph output on fresh random inputs."""
    import onnxruntime as ort

    from training.onnx_caption import EncoderGraph, StepGraph, encoder_output_names

    rng = np.random.default_rng(seed)
    opts = ort.SessionOptions()
    enc = ort.InferenceSession(str(bundle_dir / "encoder.onnx"), opts,
                               providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(bundle_dir / "decoder_step.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    images = rng.random((3, 3, image_size, image_size), dtype=np.float32)
    ort_enc = dict(zip([o.name for o in enc.get_outputs()], enc.run(None, {"image": images}),
                       strict=True))
    with torch.no_grad():
        pt_enc = EncoderGraph(model)(torch.from_numpy(images))
    diffs = {f"encoder.{name}": float(np.abs(ort_enc[name] - t.numpy()).max())
             for name, t in zip(encoder_output_names(model), pt_enc, strict=True)}
    n = 5
    feeds = {
        "tokens": rng.integers(0, model.config.vocab_size, n).astype(np.int64),
        "parents": rng.integers(0, 3, n).astype(np.int64),
        **{name: rng.standard_normal(ort_enc[name].shape).astype(np.float32)
           for name in model.state_names},
        **{name: ort_enc[name][rng.integers(0, 3, n)] for name in model.context_names},
    }
    ort_step = step.run(None, feeds)
    names = [o.name for o in step.get_outputs()]
    with torch.no_grad():
        k = ort_step[names.index("token_ids")].shape[1]
        pt_step = StepGraph(model, top_k=k)(*[torch.from_numpy(feeds[i.name])
                                             for i in step.get_inputs()])
    for name, o, t in zip(names, ort_step, pt_step, strict=True):
        if name == "token_ids":
            diffs["step.token_ids_mismatch"] = float((o != t.numpy()).mean())
        else:
            diffs[f"step.{name}"] = float(np.abs(o - t.numpy()).max())
    bad = {k: v for k, v in diffs.items() if v > atol}
    if bad:
        raise RuntimeError(f"ONNX Runtime and PyTorch disagree on {bad} (atol {atol})")
    return diffs


def export_caption(run_dir: Path, repository: Path, name: str, version: int | None = None,
                   *, top_k: int = DEFAULT_TOP_K) -> Path:
    from training.onnx_caption import export_caption_graphs

    ckpt = checkpoint_dir(run_dir)
    model, vocab, config = load_caption_model(ckpt)
    model_cfg = config["model"]
    image_size = int(model_cfg["image_size"])
    with staged_bundle(repository, name, version) as (tmp, version):
        export_caption_graphs(model, tmp, image_size=image_size, top_k=min(top_k, len(vocab)))
        vocab.save(tmp / "vocab.json")
        parity = check_parity(model, tmp, image_size)
        graphs = {key: describe_graph(tmp, f"{key}.onnx").model_dump()
                  for key in ("encoder", "decoder_step")}
        cap = model_cfg["caption"]
        k = graphs["decoder_step"]["outputs"][0]["shape"][1]
        attention = None
        if model.attends:
            attention = {"output": "alpha", "grid": attention_grid(model, image_size)}
        task_cfg = model_cfg.get("task_config", {})
        encoder = image_encoder(cap)
        manifest = {
            "name": name, "version": version, "task": "caption",
            "architecture": cap["arch"] + ("-ln" if cap["layer_norm"] else ""),
            "created": created_now(),
            "graphs": graphs,
            "files": {"vocab": file_entry(tmp, "vocab.json")},
            "preprocessing": image_preprocessing(image_size, encoder["mean"], encoder["std"],
                                                 tokenizer={"type": "word", "file": "vocab"}),
            "decoding": {"bos_id": vocab.bos_id, "eos_id": vocab.eos_id, "pad_id": vocab.pad_id,
                         "top_k": int(k), "state": list(model.state_names),
                         "context": list(model.context_names),
                         "attention": attention, "beam_size": 3,
                         "max_length": int(task_cfg.get("max_length", 20)),
                         "length_penalty": 0.0},
            "training": {"config": {"caption": cap, "trainer": config.get("trainer", {}),
                                    "task": task_cfg},
                         "dataset": model_cfg.get("data", {}),
                         "checkpoint": str(ckpt), "parity_max_abs_diff": parity},
            "metrics": {},
        }
        write_manifest(tmp, manifest)
    return Path(repository) / name / str(version)


def image_encoder(caption_config: dict) -> dict:
    """Config of the CNN that sees the pixels: the RegionNet's for Up-Down, else the model's."""
    regions = caption_config.get("regions")
    return regions["encoder"] if regions else caption_config["encoder"]


def attention_grid(model, image_size: int) -> list[int]:
    """[rows, cols] of what the attention weights cover: a square annotation grid, or
    [R, 1] for the R regions of Up-Down (in the order of the RegionNet's boxes)."""
    with torch.no_grad():
        context, _ = model.encode(torch.zeros(1, 3, image_size, image_size))
    L = context.shape[1]
    if model.config.arch == "updown":
        return [L, 1]
    side = int(round(L ** 0.5))
    if side * side != L:
        raise ValueError(f"attention grid of {L} locations is not square")
    return [side, side]


# A run's `model.task` (its config.json) -> "module:function" exporting it, with the
# signature of `export_caption`. Imported only when that kind of run is exported.
EXPORTERS: dict[str, str] = {
    "caption": "training.export:export_caption",
    "alignment": "training.export_alignment:export_alignment",
    "vqa": "training.export_vqa:export_vqa",
    "retrieval": "training.export_vse:export_retrieval",
    "generation": "training.export_generation:export_generation",
}


def exporter_for(run_dir: Path):
    """The export function of the run's task (ValueError names the unknown task)."""
    task = load_config(checkpoint_dir(run_dir))["model"].get("task")
    if task not in EXPORTERS:
        raise ValueError(f"{run_dir}: runs of task {task!r} cannot be exported "
                         f"(known: {', '.join(sorted(EXPORTERS))})")
    module, function = EXPORTERS[task].split(":")
    return getattr(importlib.import_module(module), function)


def run(args) -> int:
    export = exporter_for(Path(args.run_dir))
    bundle = export(Path(args.run_dir), Path(args.repository), args.name, args.version)
    manifest = json.loads((bundle / "manifest.json").read_text())
    print(json.dumps({"bundle": str(bundle), "architecture": manifest["architecture"],
                      "parity": manifest["training"].get("parity_max_abs_diff")}, indent=2))
    return 0
