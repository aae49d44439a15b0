"""Export of DALL-E (transformer + dVAE decoder + reranker) into a model bundle.

    model_repository/NAME/VERSION/
        manifest.json        task "generation", architecture "dalle"
        prefill.onnx         tokens [batch, L] int64 (<bos>, words, 0 pads)
                             -> logits [batch, K], present [batch, 2 * layers, heads, T, hs]
        decoder_step.onnx    token [batch] int64, position [batch] int64, past (as present)
                             -> logits [batch, K], kv [batch, 2 * layers, heads, hs]
        transformer.bin      the weights both graphs read (ONNX external data), stored once
        dvae_decoder.onnx    codes [batch, G, G] int64 -> image [batch, 3, S, S] in [0, 1]
        vocab.json           the transformer's word vocabulary (WordVocab JSON)
        rerank_image.onnx    image [batch, 3, S, S] -> embedding [batch, E]   (optional)
        rerank_text.onnx     tokens [batch, T'], lengths [batch] -> embedding [batch, E]
        rerank_vocab.json    the reranker's word vocabulary

The KV cache is explicit and kept by the caller: `present` of prefill is `past` of the
first step, and each step returns only its token's keys and values, `kv`, which the
caller writes into its cache at the token's position before the next step
(service/pipelines/dalle.py runs them). The cache spans the whole sequence
(T = L + G*G positions), so its shape never changes while a row decodes, and rows at
different positions share one step. `DalleModels.step_cache = "present"` exports the
earlier step instead, which returns the whole updated cache (`present`, as past);
the service runs both, and benchmarks/dalle_kv_cache.py compares them.

The two transformer graphs hold the same weights; exported as they are, the bundle would
store them twice. `share_weights` moves the initializers of both into one external-data
file in which each distinct tensor is stored once.

The reranker is a text-image joint embedding whose two graphs are carried inside the
bundle: today the committed retrieval-vse bundle's (its files are copied unchanged, so
the repository's git objects store them once), so that a dalle bundle is served and
evaluated on its own, with every file it needs listed under its sha256, and cannot
break when another bundle changes version.

Every graph is compared with PyTorch on fresh random inputs before the bundle is written.

`export_dalle` (EXPORTERS["dalle"]) exports a `glimpse train dalle` run: its transformer
and vocabulary, the dVAE of the run it names, the reranker and the sampling defaults
it records.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

from models.dalle import Dalle
from models.dvae import DiscreteVAE
from service.bundle import describe_graph, load_bundle, write_manifest
from training.checkpoint import checkpoint_dir
from training.data.tokenizer import WordVocab
from training.export.bundle import created_now, file_entry, staged_bundle
from training.export.onnx import DEFAULT_OPSET, cpu_session, onnx_export, require_parity
from training.runs import load_dalle, load_dvae

PREFILL_FILE = "prefill.onnx"
STEP_FILE = "decoder_step.onnx"
DVAE_DECODER_FILE = "dvae_decoder.onnx"
VOCAB_FILE = "vocab.json"
RERANK_IMAGE_FILE = "rerank_image.onnx"
RERANK_TEXT_FILE = "rerank_text.onnx"
RERANK_VOCAB_FILE = "rerank_vocab.json"
WEIGHTS_FILE = "transformer.bin"
PARITY_ATOL = 1e-4
SHARED_MIN_BYTES = 1024  # smaller initializers stay inside their graph
EXAMPLE_BATCH = 3  # not 1, so that torch.export keeps the batch dimension symbolic
STEP_CACHES = ("kv", "present")


class PrefillGraph(nn.Module):
    def __init__(self, dalle: Dalle) -> None:
        super().__init__()
        self.dalle = dalle

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dalle.prefill(tokens)


class StepGraph(nn.Module):
    def __init__(self, dalle: Dalle, cache: str = "kv") -> None:
        super().__init__()
        self.dalle = dalle
        self.run = dalle.step_apart if cache == "kv" else dalle.step

    def forward(self, token: torch.Tensor, position: torch.Tensor, past: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run(token, position, past)


class DVAEDecoderGraph(nn.Module):
    def __init__(self, dvae: DiscreteVAE) -> None:
        super().__init__()
        self.dvae = dvae

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.dvae.decode(codes)


@dataclass
class DalleModels:
    """What a dalle bundle is made of."""

    dalle: Dalle
    dvae: DiscreteVAE
    vocab: WordVocab  # the transformer's text vocabulary
    reranker: Path | None = None  # a retrieval bundle whose joint embedding reranks
    training: dict[str, Any] | None = None
    temperature: float = 1.0  # sampling defaults recorded in the manifest
    top_k: int = 0
    top_p: float = 1.0
    candidates: int = 1
    step_cache: str = "kv"  # the step's cache output: "kv" (the token's) or "present" (all)

    def __post_init__(self) -> None:
        if self.step_cache not in STEP_CACHES:
            raise ValueError(f"step_cache must be one of {STEP_CACHES}, got {self.step_cache!r}")
        d, v = self.dalle.config, self.dvae.config
        if (d.image_grid, d.image_vocab_size) != (v.grid, v.codebook_size):
            raise ValueError(f"the transformer models a {d.image_grid}x{d.image_grid} grid of "
                             f"{d.image_vocab_size} codes, the dVAE makes {v.grid}x{v.grid} "
                             f"of {v.codebook_size}")
        if d.text_vocab_size != len(self.vocab):
            raise ValueError(f"the transformer reads {d.text_vocab_size} words, the "
                             f"vocabulary has {len(self.vocab)}")


# ---------------------------------------------------------------------------- graphs


def example_tokens(models: DalleModels, rng: np.random.Generator, n: int) -> np.ndarray:
    """Prompt rows as the service builds them: <bos>, 1..L-1 word ids, then 0 pads."""
    L = models.dalle.config.text_length
    tokens = rng.integers(4, len(models.vocab), (n, L))
    tokens[:, 0] = models.vocab.bos_id
    lengths = rng.integers(2, L + 1, n)
    tokens[np.arange(L)[None, :] >= lengths[:, None]] = models.vocab.pad_id
    return tokens.astype(np.int64)


def step_inputs(models: DalleModels, rng: np.random.Generator, n: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A token, a position (a different one per row) and a random cache per row."""
    return dalle_step_inputs(models.dalle, rng, n)


def dalle_step_inputs(dalle: Dalle, rng: np.random.Generator, n: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cfg = dalle.config
    token = rng.integers(0, cfg.image_vocab_size, n).astype(np.int64)
    position = rng.integers(cfg.text_length, cfg.sequence_length - 1, n).astype(np.int64)
    past = rng.standard_normal(dalle.cache_shape(n)).astype(np.float32)
    return token, position, past


def export_step_graph(dalle: Dalle, path: Path, cache: str = "kv", *,
                      opset: int = DEFAULT_OPSET) -> None:
    """Write the step graph of `dalle` (its cache output `cache`: "kv" or "present") with a
    symbolic batch dimension."""
    batch = torch.export.Dim("batch")
    example = tuple(torch.from_numpy(a) for a in
                    dalle_step_inputs(dalle, np.random.default_rng(0), EXAMPLE_BATCH))
    onnx_export(StepGraph(dalle, cache).eval(), example, path, ("token", "position", "past"),
                ("logits", cache),
                {"token": {0: batch}, "position": {0: batch}, "past": {0: batch}}, opset)


def export_dalle_graphs(models: DalleModels, out_dir: Path, *,
                        opset: int = DEFAULT_OPSET) -> None:
    """Write prefill.onnx and decoder_step.onnx (with their weights in transformer.bin)
    and dvae_decoder.onnx, each with a symbolic batch dimension."""
    models.dalle.eval()
    models.dvae.eval()
    batch = torch.export.Dim("batch")
    rng = np.random.default_rng(0)
    tokens = torch.from_numpy(example_tokens(models, rng, EXAMPLE_BATCH))
    onnx_export(PrefillGraph(models.dalle).eval(), (tokens,), out_dir / PREFILL_FILE,
                ("tokens",), ("logits", "present"), {"tokens": {0: batch}}, opset)
    export_step_graph(models.dalle, out_dir / STEP_FILE, models.step_cache, opset=opset)
    share_weights(out_dir, (PREFILL_FILE, STEP_FILE), WEIGHTS_FILE)
    grid = models.dvae.config.grid
    codes = torch.randint(0, models.dvae.config.codebook_size, (EXAMPLE_BATCH, grid, grid))
    onnx_export(DVAEDecoderGraph(models.dvae).eval(), (codes,), out_dir / DVAE_DECODER_FILE,
                ("codes",), ("image",), {"codes": {0: batch}}, opset)


def share_weights(directory: Path, graph_files: Sequence[str], weights_file: str) -> None:
    """Move the initializers (of SHARED_MIN_BYTES or more) of the ONNX graphs
    `directory/graph_files` into `directory/weights_file`, each distinct tensor once, and
    point the graphs at it as ONNX external data."""
    stored: dict[bytes, tuple[int, int]] = {}  # content digest -> (offset, length)
    models = {file: onnx.load(str(directory / file)) for file in graph_files}
    with open(directory / weights_file, "wb") as weights:
        for model in models.values():
            for tensor in model.graph.initializer:
                data = numpy_helper.to_array(tensor).tobytes()
                if len(data) < SHARED_MIN_BYTES:
                    continue
                digest = hashlib.sha256(f"{tensor.data_type}:{list(tensor.dims)}:".encode()
                                        + data).digest()
                if digest not in stored:
                    stored[digest] = (weights.tell(), len(data))
                    weights.write(data)
                for field in ("float_data", "int32_data", "int64_data", "double_data",
                              "uint64_data"):
                    tensor.ClearField(field)
                tensor.raw_data = data  # set_external_data checks that there is some
                set_external_data(tensor, weights_file, *stored[digest])
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
    for file, model in models.items():
        onnx.save(model, str(directory / file))
        onnx.checker.check_model(str(directory / file), full_check=True)


def check_dalle_parity(models: DalleModels, bundle_dir: Path, *, seed: int = 0,
                       atol: float = PARITY_ATOL) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| of every output of the three graphs on fresh random
    inputs (raises RuntimeError past atol)."""
    rng = np.random.default_rng(seed)
    tokens = example_tokens(models, rng, 5)
    token, position, past = step_inputs(models, rng, 5)
    grid = models.dvae.config.grid
    codes = rng.integers(0, models.dvae.config.codebook_size, (5, grid, grid)).astype(np.int64)
    prefill, step, decoder = (cpu_session(bundle_dir / f)
                              for f in (PREFILL_FILE, STEP_FILE, DVAE_DECODER_FILE))
    ort_out = {
        "prefill": prefill.run(None, {"tokens": tokens}),
        "decoder_step": step.run(None, {"token": token, "position": position, "past": past}),
        "dvae_decoder": decoder.run(None, {"codes": codes}),
    }
    with torch.no_grad():
        pt_out = {
            "prefill": models.dalle.prefill(torch.from_numpy(tokens)),
            "decoder_step": StepGraph(models.dalle, models.step_cache)(
                *map(torch.from_numpy, (token, position, past))),
            "dvae_decoder": (models.dvae.decode(torch.from_numpy(codes)),),
        }
    names = {"prefill": ("logits", "present"), "decoder_step": ("logits", models.step_cache),
             "dvae_decoder": ("image",)}
    return require_parity({f"{graph}.{name}": float(np.abs(o - p.numpy()).max())
                           for graph in names
                           for name, o, p in zip(names[graph], ort_out[graph], pt_out[graph],
                                                 strict=True)}, atol)


# ---------------------------------------------------------------------------- reranker


def carry_reranker(retrieval_bundle: Path, out_dir: Path) -> dict[str, Any]:
    """Copy the joint embedding of a retrieval bundle into `out_dir` as the reranker's
    graphs and vocabulary; returns the manifest's `inference.reranker` section."""
    source = load_bundle(retrieval_bundle)  # verifies every sha256 first
    m = source.manifest
    if m.task != "retrieval":
        raise ValueError(f"{retrieval_bundle}: a {m.task} bundle cannot rerank; "
                         "give a retrieval bundle")
    shutil.copyfile(source.file("image_encoder"), out_dir / RERANK_IMAGE_FILE)
    shutil.copyfile(source.file("text_encoder"), out_dir / RERANK_TEXT_FILE)
    if m.preprocessing.tokenizer is None:
        raise ValueError(f"{retrieval_bundle}: the retrieval bundle names no tokenizer")
    shutil.copyfile(source.file(m.preprocessing.tokenizer.file), out_dir / RERANK_VOCAB_FILE)
    return {"image_graph": "rerank_image", "text_graph": "rerank_text",
            "vocabulary": "rerank_vocab", "text_length": m.inference["text_length"],
            "source": source.key}


# ---------------------------------------------------------------------------- bundle


def write_dalle_bundle(models: DalleModels, repository: Path, name: str,
                       version: int | None = None) -> Path:
    """Export, parity-check and write model_repository/NAME/VERSION; returns its path."""
    with staged_bundle(repository, name, version) as (tmp, version):
        export_dalle_graphs(models, tmp)
        parity = check_dalle_parity(models, tmp)
        models.vocab.save(tmp / VOCAB_FILE)
        files = {"vocab": file_entry(tmp, VOCAB_FILE),
                 "transformer_weights": file_entry(tmp, WEIGHTS_FILE)}
        graph_files = {"prefill": PREFILL_FILE, "decoder_step": STEP_FILE,
                       "dvae_decoder": DVAE_DECODER_FILE}
        reranker = None
        if models.reranker is not None:
            reranker = carry_reranker(models.reranker, tmp)
            files["rerank_vocab"] = file_entry(tmp, RERANK_VOCAB_FILE)
            graph_files |= {"rerank_image": RERANK_IMAGE_FILE, "rerank_text": RERANK_TEXT_FILE}
        graphs = {key: describe_graph(tmp, file).model_dump()
                  for key, file in graph_files.items()}
        write_manifest(tmp, manifest(models, name, version, graphs, files, reranker, parity))
    return Path(repository) / name / str(version)


def manifest(models: DalleModels, name: str, version: int, graphs: dict, files: dict,
             reranker: dict | None, parity: dict[str, float]) -> dict[str, Any]:
    d, v = models.dalle.config, models.dvae.config
    return {
        "name": name, "version": version, "task": "generation", "architecture": "dalle",
        "created": created_now(),
        "graphs": graphs,
        "files": files,
        "preprocessing": {"image_size": v.image_size, "pixel_range": [0.0, 1.0],
                          "tokenizer": {"type": "word", "file": "vocab"}},
        "inference": {"text_length": d.text_length, "grid": d.image_grid,
                      "codebook_size": d.image_vocab_size, "image_size": v.image_size,
                      "temperature": models.temperature, "top_k": models.top_k,
                      "top_p": models.top_p, "candidates": models.candidates,
                      "reranker": reranker},
        "training": {**(models.training or {}),
                     "config": {"dalle": d.to_dict(), "dvae": v.to_dict(),
                                **(models.training or {}).get("config", {})},
                     "parity_max_abs_diff": parity},
        "metrics": {},
    }


def load_dalle_models(run_dir: Path) -> DalleModels:
    """What a `glimpse train dalle` run exports to: its transformer and vocabulary, the
    dVAE run it was trained on, its reranker (a retrieval bundle) and sampling defaults."""
    dalle, config = load_dalle(run_dir)
    dvae = load_dvae(config["dvae_run"])
    sampling = config.get("sampling", {})
    reranker = config.get("reranker")
    return DalleModels(
        dalle=dalle, dvae=dvae, vocab=WordVocab.load(Path(run_dir) / VOCAB_FILE),
        reranker=None if reranker is None else Path(reranker),
        training={"run": str(run_dir), "checkpoint": str(checkpoint_dir(Path(run_dir))),
                  "dvae_run": config["dvae_run"], "data": config.get("data", {})},
        **{k: sampling[k] for k in ("temperature", "top_k", "top_p", "candidates")
           if k in sampling})


def export_dalle(run_dir: Path, repository: Path, name: str, version: int | None = None
                 ) -> Path:
    """`glimpse export` of a DALL-E run (EXPORTERS["dalle"]); returns the bundle path."""
    return write_dalle_bundle(load_dalle_models(Path(run_dir)), Path(repository), name, version)
