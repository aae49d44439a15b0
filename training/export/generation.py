"""`glimpse export` of a text-to-image run (GAN-CLS/INT, StackGAN) into a model bundle.

    model_repository/NAME/VERSION/
        manifest.json      task "generation", architecture = the GAN variant
        text_encoder.onnx  chars [batch, T] int64 (0 pads) -> embedding [batch, E]
        generator.onnx     embedding [batch, E], noise [batch, Z]
                           -> image [batch, 3, S, S] float32 in [0, 1]
        alphabet.json      the text encoder's CharAlphabet (service.text.CharIndex reads it)
        vocab.json         the words of the training captions, when they can be found

The text encoder is the char-CNN-RNN of Reed et al. 2016 (Sec. 2.2) that the GAN
was conditioned on; the generator graph is the GAN's deterministic `sample`
(StackGAN: the conditioning-augmentation mean, both stages) with the tanh output
mapped to [0, 1] inside the graph, so the service only converts to bytes.
`inference` in the manifest records noise_dim, max_prompt_length (= T) and
image_size. Each graph is checked against PyTorch with ONNX Runtime on fresh
random inputs, and the bundle is not written when they disagree.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn as nn

from service.bundle import describe_graph, write_manifest
from training.data.tokenizer import SPECIAL_TOKENS, CharAlphabet, WordVocab
from training.export.bundle import created_now, file_entry, staged_bundle
from training.export.onnx import DEFAULT_OPSET, cpu_session, onnx_export, require_parity
from training.runs import load_generator, load_text_encoder, run_checkpoint

log = logging.getLogger(__name__)

TEXT_ENCODER_FILE = "text_encoder.onnx"
GENERATOR_FILE = "generator.onnx"
ALPHABET_FILE = "alphabet.json"
VOCAB_FILE = "vocab.json"
PARITY_ATOL = 1e-4


class TextEncoderGraph(nn.Module):
    """chars (B, T) int64, 0 = padding -> embedding (B, E): the char-CNN-RNN phi(t)."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(chars)


class GeneratorGraph(nn.Module):
    """embedding (B, E), noise (B, Z) -> image (B, 3, S, S) in [0, 1].

    G(z, phi(t)) of Reed et al. 2016 (Eq. 1 conditions on phi(t)) ends in tanh; the
    graph returns (x + 1) / 2 clamped to [0, 1], the service's pixel range.
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, embedding: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        image = self.generator.sample(embedding, noise)  # (B, 3, S, S) in [-1, 1]
        return ((image + 1.0) * 0.5).clamp(0.0, 1.0)


@dataclass
class GenerationModels:
    """Everything a generation bundle is made of, loaded from the two training runs."""

    text_encoder: nn.Module
    alphabet: CharAlphabet
    generator: nn.Module
    variant: str
    max_length: int  # T, characters the text encoder reads
    embed_dim: int
    noise_dim: int
    image_size: int
    words: list[str] | None = None  # training-caption words; None: prompts are not checked
    training: dict[str, Any] | None = None


# ---------------------------------------------------------------------------- graphs


def export_generation_graphs(models: GenerationModels, out_dir: Path, *,
                             opset: int = DEFAULT_OPSET) -> None:
    """Write text_encoder.onnx and generator.onnx with a symbolic batch dimension."""
    models.text_encoder.eval()
    models.generator.eval()
    batch = torch.export.Dim("batch")
    # Example batches of 2, so that torch.export does not specialise the batch to 1.
    chars = torch.randint(1, len(models.alphabet), (2, models.max_length))
    _export_graph(TextEncoderGraph(models.text_encoder).eval(), (chars,),
                  out_dir / TEXT_ENCODER_FILE, ("chars",), ("embedding",),
                  {"chars": {0: batch}}, opset)
    embedding = torch.randn(2, models.embed_dim)
    noise = torch.randn(2, models.noise_dim)
    _export_graph(GeneratorGraph(models.generator).eval(), (embedding, noise),
                  out_dir / GENERATOR_FILE, ("embedding", "noise"), ("image",),
                  {"embedding": {0: batch}, "noise": {0: batch}}, opset)


_PENDING = "{}__graph_output"


def _export_graph(module: nn.Module, args: tuple, path: Path, input_names: tuple[str, ...],
                  output_names: tuple[str, ...], dynamic_shapes: dict, opset: int) -> None:
    """torch.onnx.export (dynamo, as for the caption graphs) with outputs named exactly.

    The exporter names intermediate values after the PyTorch ops, so an output called
    "embedding" would clash with the value of an `nn.Embedding` lookup. Outputs are
    exported under provisional names, clashing intermediates are renamed, and then the
    outputs get their documented names.
    """
    provisional = tuple(_PENDING.format(name) for name in output_names)
    onnx_export(module, args, path, input_names, provisional, dynamic_shapes, opset)
    model = onnx.load(str(path))
    for name, pending in zip(output_names, provisional, strict=True):
        _rename_value(model.graph, name, f"{name}__inner")
        _rename_value(model.graph, pending, name)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if v == old else v for v in node.input]
        node.output[:] = [new if v == old else v for v in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if value.name == old:
            value.name = new


def _random_chars(rng: np.random.Generator, models: GenerationModels, n: int) -> np.ndarray:
    """Character rows of random lengths 1..T, padded with 0 like real prompts."""
    chars = rng.integers(1, len(models.alphabet.alphabet) + 1, (n, models.max_length))
    lengths = rng.integers(1, models.max_length + 1, n)
    chars[np.arange(models.max_length)[None, :] >= lengths[:, None]] = 0
    return chars.astype(np.int64)


def check_generation_parity(models: GenerationModels, bundle_dir: Path, *, seed: int = 0,
                            atol: float = PARITY_ATOL) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| of both graphs on fresh random inputs (raises past atol)."""
    rng = np.random.default_rng(seed)
    sessions = {f: cpu_session(bundle_dir / f) for f in (TEXT_ENCODER_FILE, GENERATOR_FILE)}
    chars = _random_chars(rng, models, 5)
    (ort_embedding,) = sessions[TEXT_ENCODER_FILE].run(None, {"chars": chars})
    # The generator is fed the text encoder's own embeddings: generators that standardise
    # phi(t) saturate to all-0/1 pixels on embeddings of another scale, which would make
    # the comparison vacuous.
    embedding = ort_embedding
    noise = rng.standard_normal((5, models.noise_dim)).astype(np.float32)
    (ort_image,) = sessions[GENERATOR_FILE].run(None, {"embedding": embedding, "noise": noise})
    with torch.no_grad():
        pt_embedding = TextEncoderGraph(models.text_encoder)(torch.from_numpy(chars)).numpy()
        pt_image = GeneratorGraph(models.generator)(torch.from_numpy(embedding),
                                                    torch.from_numpy(noise)).numpy()
    return require_parity(
        {"text_encoder.embedding": float(np.abs(ort_embedding - pt_embedding).max()),
         "generator.image": float(np.abs(ort_image - pt_image).max())}, atol)


# ---------------------------------------------------------------------------- bundle


def write_generation_bundle(models: GenerationModels, repository: Path, name: str,
                            version: int | None = None) -> Path:
    """Export, parity-check and write model_repository/NAME/VERSION; returns its path."""
    with staged_bundle(repository, name, version) as (tmp, version):
        export_generation_graphs(models, tmp)
        parity = check_generation_parity(models, tmp)
        models.alphabet.save(tmp / ALPHABET_FILE)
        files = {"alphabet": file_entry(tmp, ALPHABET_FILE)}
        if models.words is not None:
            WordVocab(models.words).save(tmp / VOCAB_FILE)
            files["vocab"] = file_entry(tmp, VOCAB_FILE)
        write_manifest(tmp, _manifest(models, tmp, name, version, files, parity))
    return Path(repository) / name / str(version)


def _manifest(models: GenerationModels, bundle_dir: Path, name: str, version: int,
              files: dict, parity: dict[str, float]) -> dict[str, Any]:
    graphs = {key: describe_graph(bundle_dir, file).model_dump()
              for key, file in (("text_encoder", TEXT_ENCODER_FILE),
                                ("generator", GENERATOR_FILE))}
    return {
        "name": name, "version": version, "task": "generation",
        "architecture": models.variant,
        "created": created_now(),
        "graphs": graphs,
        "files": files,
        "preprocessing": {"image_size": models.image_size, "pixel_range": [0.0, 1.0],
                          "tokenizer": {"type": "char", "file": "alphabet"}},
        "inference": {"noise_dim": models.noise_dim, "max_prompt_length": models.max_length,
                      "image_size": models.image_size, "embed_dim": models.embed_dim,
                      "vocabulary": "vocab" if "vocab" in files else None},
        "training": {**(models.training or {}), "parity_max_abs_diff": parity},
        "metrics": {},
    }


# ---------------------------------------------------------------------------- runs


def _config_dirs(value: Any) -> Iterable[Path]:
    """Every string in a run config that names a directory holding captions.json."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _config_dirs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _config_dirs(item)
    elif isinstance(value, str) and len(value) < 4096 and (Path(value) / "captions.json").is_file():
        yield Path(value)


def training_words(configs: Iterable[dict]) -> list[str] | None:
    """Words of the training captions the runs were trained on, by descending count.

    The first of the configs' word vocabularies (`model.vocab`) wins; otherwise the
    train split of the first captions.json (Karpathy format) a config names. None
    when neither is found: the bundle then checks prompts by characters only.
    """
    configs = list(configs)
    for config in configs:
        vocab = config.get("model", {}).get("vocab")
        if isinstance(vocab, dict) and vocab.get("type") == "word":
            return WordVocab.from_dict(vocab).tokens[len(SPECIAL_TOKENS):]
    for config in configs:
        for data_dir in _config_dirs(config):
            images = json.loads((data_dir / "captions.json").read_text())["images"]
            tokens = [s["tokens"] for im in images if im.get("split") == "train"
                      for s in im["sentences"]]
            if tokens:
                return WordVocab.build(tokens).tokens[len(SPECIAL_TOKENS):]
    return None


def _text_encoder_run(run_dir: Path, recorded: str) -> Path:
    """The text encoder run a GAN run names (absolute, or relative to cwd or to the run)."""
    path = Path(recorded)
    for candidate in (path, run_dir / path, run_dir.parent / path.name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{run_dir}: its text encoder run {recorded!r} is not found")


def load_generation_models(run_dir: Path) -> GenerationModels:
    """The generator of a GAN run, its text encoder run, alphabet and training words."""
    ckpt, config = run_checkpoint(run_dir, "generation", "a text-to-image")
    generator, info = load_generator(run_dir)
    text_run = _text_encoder_run(run_dir, str(info["text_encoder_run"]))
    text_encoder, alphabet, text_info = load_text_encoder(text_run)
    if int(text_info["embed_dim"]) != int(info["embed_dim"]):
        raise ValueError(f"{run_dir}: generator expects {info['embed_dim']}-d embeddings, "
                         f"{text_run} gives {text_info['embed_dim']}-d")
    text_ckpt, text_config = run_checkpoint(text_run, "text-encoder", "a text-encoder")
    return GenerationModels(
        text_encoder=text_encoder, alphabet=alphabet, generator=generator,
        variant=str(info["variant"]), max_length=int(text_info["max_length"]),
        embed_dim=int(info["embed_dim"]), noise_dim=int(info["noise_dim"]),
        image_size=int(info["image_size"]),
        words=training_words([config, text_config]),
        training={"config": config, "checkpoint": str(ckpt),
                  "dataset": config.get("model", {}).get("data", {}),
                  "text_encoder": {"run": str(text_run), "checkpoint": str(text_ckpt),
                                   "config": text_config}},
    )


def export_generation(run_dir: Path, repository: Path, name: str,
                      version: int | None = None) -> Path:
    """`glimpse export` of a GAN run (EXPORTERS["generation"]); returns the bundle path."""
    models = load_generation_models(Path(run_dir))
    if models.words is None:
        log.warning("%s: no training captions found in the run configs; the bundle checks "
                    "prompts by characters only", run_dir)
    return write_generation_bundle(models, Path(repository), name, version)
