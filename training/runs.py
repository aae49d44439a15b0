"""Earlier training runs, as later runs, exporters and evaluators read them.

A run directory holds checkpoints (training.checkpoint). `run_checkpoint` finds
its best one and checks that the run trained what the caller needs; the loaders
below rebuild the part another family builds on:

- `glimpse train encoder`: the image encoder (`pretrained_encoder`) and the
  attribute tagger around it (`load_tagger`);
- `glimpse train regions`: the frozen RegionNet (`load_region_net`,
  `pretrained_regions`);
- `glimpse train text-encoder`: psi, the char-CNN-RNN (`load_text_encoder`, and
  `embed_texts` to apply it), and phi, the image side (`load_joint_image_encoder`);
- `glimpse train dvae` and `glimpse train dalle`: DALL-E's discrete VAE (`load_dvae`)
  and its transformer (`load_dalle`).

Tasks import these instead of each other, so no task depends on another.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from models.attributes import AttributeConfig, AttributeTagger
from models.dalle import Dalle, DalleConfig
from models.dvae import DiscreteVAE, DVAEConfig
from models.encoder import EncoderConfig, ImageEncoder
from models.gan import GanConfig, Generator
from models.regions import RegionConfig, RegionNet
from models.stackgan import StackGanConfig, StageIGenerator, StageIIGenerator
from models.text_encoder import (
    CharCnnRnn,
    JointImageConfig,
    JointImageEncoder,
    TextEncoderConfig,
)
from training.checkpoint import MODEL_FILE, checkpoint_dir, load_config, load_weights
from training.data.tokenizer import CharAlphabet, UnknownPolicy
from training.data.world import NUM_OBJECT_CLASSES

Weights = dict[str, torch.Tensor]


def run_checkpoint(run_dir: str | Path, task: str, kind: str) -> tuple[Path, dict]:
    """The run's best (else last) checkpoint and its config; ValueError unless the run
    trained `task` (config["model"]["task"]). `kind` names such a run in the message."""
    ckpt = checkpoint_dir(Path(run_dir))
    config = load_config(ckpt)
    found = config.get("model", {}).get("task")
    if found != task:
        raise ValueError(f"{ckpt}: task {found!r} is not {kind} run")
    return ckpt, config


def run_weights(ckpt: Path) -> Weights:
    return load_file(str(ckpt / MODEL_FILE))


def submodule_weights(weights: Weights, prefix: str) -> Weights:
    """The weights under `prefix` ("encoder."), named as the submodule names them."""
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------- encoder


def pretrained_encoder(run_dir: str | Path) -> tuple[dict, Weights]:
    """Encoder config and weights from a `glimpse train encoder` run (best checkpoint)."""
    ckpt, config = run_checkpoint(run_dir, "attributes", "an encoder pre-training")
    return (config["model"]["attributes"]["encoder"],
            submodule_weights(run_weights(ckpt), "encoder."))


def frozen_encoder(run_dir: str | Path) -> tuple[dict, Weights, ImageEncoder]:
    """The encoder of a `glimpse train encoder` run: its config, weights and the module
    (eval mode, frozen)."""
    config, weights = pretrained_encoder(run_dir)
    encoder = ImageEncoder(EncoderConfig(**config))
    encoder.load_state_dict(weights)
    return config, weights, encoder.eval().requires_grad_(False)


def load_tagger(run_dir: str | Path) -> AttributeTagger:
    """The AttributeTagger of a `glimpse train encoder` run (best checkpoint), eval mode."""
    ckpt, config = run_checkpoint(run_dir, "attributes", "a `glimpse train encoder`")
    tagger = AttributeTagger(AttributeConfig(**config["model"]["attributes"]))
    if tagger.config.num_shapes * tagger.config.num_colours * tagger.config.num_sizes \
            != NUM_OBJECT_CLASSES:
        raise ValueError(f"{ckpt}: the tagger's classes do not match the shapes world")
    return load_weights(tagger, ckpt).eval()


def tagger_image_size(run_dir: str | Path) -> int:
    """The side (pixels) of the images a `glimpse train encoder` run's tagger was trained on."""
    _, config = run_checkpoint(run_dir, "attributes", "a `glimpse train encoder`")
    return int(config["model"].get("image_size", 64))


# ---------------------------------------------------------------------------- regions


def load_region_net(run_dir: str | Path) -> RegionNet:
    """The trained RegionNet of a `glimpse train regions` run, in eval mode and frozen."""
    ckpt, config = run_checkpoint(run_dir, "regions", "a region")
    model = RegionNet(RegionConfig.from_dict(config["model"]["regions"]))
    load_weights(model, ckpt)
    model.eval().requires_grad_(False)
    return model


def pretrained_regions(run_dir: str | Path) -> tuple[dict, Weights]:
    """RegionNet config and weights of a `glimpse train regions` run."""
    net = load_region_net(run_dir)
    return net.config.to_dict(), {k: v.detach().cpu() for k, v in net.state_dict().items()}


# ---------------------------------------------------------------------------- text encoder


def _text_encoder_run(run_dir: str | Path) -> tuple[dict, Weights]:
    ckpt, config = run_checkpoint(run_dir, "text-encoder", "a text-encoder")
    return config["model"], run_weights(ckpt)


def load_text_encoder(run_dir: str | Path) -> tuple[CharCnnRnn, CharAlphabet, dict]:
    """The trained psi (eval mode, frozen), its alphabet, and {"max_length", "embed_dim",
    "image_size"} (image_size: the side its joint image encoder phi was trained at)."""
    config, weights = _text_encoder_run(run_dir)
    encoder = CharCnnRnn(TextEncoderConfig(**config["text"]))
    encoder.load_state_dict(submodule_weights(weights, "text."))
    encoder.eval().requires_grad_(False)
    alphabet = CharAlphabet(config["alphabet"]["alphabet"],
                            lowercase=config["alphabet"]["lowercase"])
    return encoder, alphabet, {"max_length": config["max_length"],
                               "embed_dim": config["embed_dim"],
                               "image_size": config.get("image_size", 64)}


def load_joint_image_encoder(run_dir: str | Path) -> JointImageEncoder:
    """The trained phi: [0, 1] images (B, 3, S, S) at the run's image_size -> (B, E)."""
    config, weights = _text_encoder_run(run_dir)
    encoder = JointImageEncoder(JointImageConfig(**config["image"]))
    encoder.load_state_dict(submodule_weights(weights, "image."))
    return encoder.eval().requires_grad_(False)


def encode_texts(alphabet: CharAlphabet, texts: list[str], max_length: int, *,
                 on_unknown: UnknownPolicy = "error") -> torch.Tensor:
    """(N, max_length) int64 character ids; on_unknown says what a character outside the
    alphabet does (see CharAlphabet.encode)."""
    return torch.tensor([alphabet.encode(t, max_length, on_unknown=on_unknown) for t in texts],
                        dtype=torch.long).view(len(texts), max_length)


@torch.no_grad()
def embed_texts(encoder: CharCnnRnn, alphabet: CharAlphabet, texts: list[str],
                max_length: int, *, on_unknown: UnknownPolicy = "error",
                batch_size: int = 512) -> torch.Tensor:
    """psi(t) (N, E) of any sentences. Characters outside the alphabet raise ValueError
    naming them (on_unknown="error") or read as the unknown id ("replace")."""
    chars = encode_texts(alphabet, texts, max_length, on_unknown=on_unknown)
    device = next(encoder.parameters()).device
    out = [encoder(chars[i:i + batch_size].to(device)) for i in range(0, len(chars), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, encoder.config.embed_dim)


# ------------------------------------------------------------------- text-to-image


def generator_from_config(model_cfg: dict) -> nn.Module:
    """An untrained generator of the architecture a GAN run's model config describes."""
    if model_cfg["architecture"] == "dcgan":
        return Generator(GanConfig.from_dict(model_cfg["generator"]))
    stack = StackGanConfig.from_dict(model_cfg["generator"])
    if model_cfg["stage"] == 1:
        return StageIGenerator(stack)
    stage1 = StageIGenerator(StackGanConfig.from_dict(model_cfg["stage1"]))
    return StageIIGenerator(stack, stage1)


def load_generator(run_dir: str | Path) -> tuple[nn.Module, dict]:
    """The trained generator of a GAN or StackGAN run (eval mode; the weight average when the
    run kept one) and what a consumer needs to drive it: {"variant", "noise_dim",
    "embed_dim", "image_size", "text_encoder_run"}."""
    ckpt, config = run_checkpoint(run_dir, "generation", "a text-to-image")
    model_cfg = config["model"]
    generator = generator_from_config(model_cfg)
    weights = run_weights(ckpt)
    # A run that kept a moving average of G's weights (GanTaskConfig.ema) serves the average.
    average = submodule_weights(weights, "generator_ema.")
    generator.load_state_dict(average or submodule_weights(weights, "generator."))
    generator.eval()
    return generator, {"variant": model_cfg["variant"], "noise_dim": generator.noise_dim,
                       "embed_dim": generator.embed_dim, "image_size": generator.image_size,
                       "text_encoder_run": model_cfg["text_encoder"].get("run")}


# ------------------------------------------------------------------------------ DALL-E


def load_dvae(run_dir: str | Path) -> DiscreteVAE:
    """The trained discrete VAE of a `glimpse train dvae` run (best checkpoint), eval mode."""
    ckpt, config = run_checkpoint(run_dir, "dvae", "a dVAE")
    dvae = DiscreteVAE(DVAEConfig.from_dict(config["model"]["dvae"]))
    dvae.load_state_dict(submodule_weights(run_weights(ckpt), "dvae."))
    return dvae.eval().requires_grad_(False)


def load_dalle(run_dir: str | Path) -> tuple[Dalle, dict]:
    """The trained transformer of a `glimpse train dalle` run (best checkpoint, eval mode)
    and the run's model config (its "dvae_run", "sampling", "reranker", ...)."""
    ckpt, config = run_checkpoint(run_dir, "dalle", "a DALL-E")
    dalle = Dalle(DalleConfig.from_dict(config["model"]["dalle"]))
    dalle.load_state_dict(run_weights(ckpt))
    return dalle.eval().requires_grad_(False), config["model"]
