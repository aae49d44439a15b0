"""Train the char-CNN-RNN text encoder in a joint embedding (`glimpse train text-encoder`).

Reed et al. 2016 learn psi(t) so that descriptions and images of the same class
score high under F(v, t) = phi(v)^T psi(t). On the text-to-image world (one
object per image) the class of an image is the (shape, colour, size) of its
object: 7 x 8 x 2 = 112 classes (training.data.world.object_class); the `novel`
split holds the held-out combinations, so accuracy there is zero-shot as in Reed
et al.'s unseen-class protocol.

phi reads fixed features of the pre-trained encoder of `glimpse train encoder`
(its CNN stays frozen and its features are computed once); the text encoder and
phi's linear map are trained with the symmetric structured joint embedding loss.
The GAN trainers condition on psi (training.runs.load_text_encoder), and the
generation evaluator ranks prompts with both sides (training.runs.load_joint_image_encoder).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models.encoder import EncoderConfig, ImageEncoder
from models.text_encoder import (
    JointEmbedding,
    JointImageConfig,
    TextEncoderConfig,
    class_means,
    grid_features,
    symmetric_sje_loss,
)
from training.checkpoint import checkpoint_dir, load_weights
from training.data.images import load_images
from training.data.readers import load_captions
from training.data.shapes import single_objects
from training.data.tokenizer import CharAlphabet
from training.data.world import (
    COLOURS,
    NUM_OBJECT_CLASSES,
    SHAPES,
    SIZES,
    ShapeObject,
    object_class,
)
from training.runs import encode_texts, pretrained_encoder
from training.tasks import TrainingCommand
from training.trainer import config_from_dict

log = logging.getLogger(__name__)

ALPHABET_FILE = "alphabet.json"


def image_class(obj: ShapeObject) -> int:
    return object_class(obj.shape, obj.colour, obj.size)


@dataclass
class TextEncoderTaskConfig:
    data: str = "data/t2i"
    encoder_init: str = "runs/encoder"  # `glimpse train encoder` run: the frozen CNN of phi
    image_size: int = 64  # images are downsampled to the encoder's training size
    val_images: int = 500
    text: dict = field(default_factory=dict)  # TextEncoderConfig overrides
    trainer: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> TextEncoderTaskConfig:
        return config_from_dict(cls, d, "text-encoder training")


@torch.no_grad()
def image_features(encoder: ImageEncoder, images_uint8: torch.Tensor,
                   batch_size: int = 256) -> torch.Tensor:
    """Fixed features (N, 2D) of (N, 3, S, S) uint8 images through the frozen CNN."""
    encoder.eval()
    chunks = [grid_features(encoder, images_uint8[i:i + batch_size].float().div_(255))
              for i in range(0, len(images_uint8), batch_size)]
    return torch.cat(chunks)


@dataclass
class SplitData:
    """One split, ready to embed: features, every caption's characters, classes."""

    features: torch.Tensor  # (N, 2D)
    chars: torch.Tensor  # (N, K, T): K captions per image
    labels: torch.Tensor  # (N,)


def load_split(dataset_dir: Path, split: str, encoder: ImageEncoder, alphabet: CharAlphabet,
               max_length: int, image_size: int, limit: int | None = None) -> SplitData:
    images = list(load_captions(dataset_dir, split))[:limit]
    k = min(len(im.captions) for im in images)
    texts = [c for im in images for c in im.captions[:k]]
    chars = encode_texts(alphabet, texts, max_length, on_unknown="replace")
    return SplitData(features=image_features(encoder, load_images(dataset_dir, images, image_size)),
                     chars=chars.view(len(images), k, max_length),
                     labels=torch.tensor([image_class(o)
                                          for o in single_objects(dataset_dir, images)]))


@torch.no_grad()
def zero_shot_accuracy(model: JointEmbedding, data: SplitData, batch_size: int = 512
                       ) -> dict[str, float]:
    """Classification accuracy in both directions of the joint embedding (Reed et al. 2016,
    Sec. 5): an image takes the class whose mean text embedding scores highest (f_v, Eq. 4),
    a text the class whose mean image embedding does (f_t, Eq. 5). Only the classes of
    `data` compete, so on the novel split this is zero-shot over the held-out classes."""
    n, k, t = data.chars.shape
    device = next(model.parameters()).device
    flat = data.chars.view(n * k, t)
    text = torch.cat([model.text(flat[i:i + batch_size].to(device))
                      for i in range(0, len(flat), batch_size)]).cpu()
    image = model.image.embed_features(data.features.to(device)).cpu()
    text_labels = data.labels.repeat_interleave(k)
    text_means, present = class_means(text, text_labels, NUM_OBJECT_CLASSES)
    image_means, _ = class_means(image, data.labels, NUM_OBJECT_CLASSES)
    blocked = torch.where(present, 0.0, float("-inf"))
    image_pred = (image @ text_means.T + blocked).argmax(1)
    text_pred = (text @ image_means.T + blocked).argmax(1)
    image_acc = float((image_pred == data.labels).float().mean())
    text_acc = float((text_pred == text_labels).float().mean())
    return {"image_to_class": image_acc, "text_to_class": text_acc,
            "mean_accuracy": (image_acc + text_acc) / 2}


class TextEncoderTask:
    def __init__(self, config: TextEncoderTaskConfig):
        self.config = config
        self.data_dir = Path(config.data)
        self.alphabet = CharAlphabet()
        self.text_cfg = TextEncoderConfig(**{"alphabet_size": len(self.alphabet),
                                             **config.text})
        if self.text_cfg.alphabet_size != len(self.alphabet):
            raise ValueError(f"alphabet_size must be {len(self.alphabet)} (the alphabet's ids)")
        encoder_cfg, encoder_weights = pretrained_encoder(config.encoder_init)
        self.image_cfg = JointImageConfig(encoder=EncoderConfig(**encoder_cfg),
                                          embed_dim=self.text_cfg.embed_dim)
        self.encoder_weights = encoder_weights
        cnn = ImageEncoder(self.image_cfg.encoder)
        cnn.load_state_dict(encoder_weights)
        log.info("computing frozen image features of %s", self.data_dir)
        self.train_data = self.split("train", cnn)
        self.val_data = self.split("val", cnn, limit=config.val_images)
        self.cnn = cnn

    def split(self, name: str, cnn: ImageEncoder | None = None, limit: int | None = None
              ) -> SplitData:
        return load_split(self.data_dir, name, cnn or self.cnn, self.alphabet,
                          self.text_cfg.max_length, self.config.image_size, limit)

    def build_model(self) -> torch.nn.Module:
        model = JointEmbedding(self.text_cfg, self.image_cfg)
        model.image.encoder.load_state_dict(self.encoder_weights)
        return model

    def model_config(self) -> dict:
        return {"task": "text-encoder", "text": self.text_cfg.to_dict(),
                "image": self.image_cfg.to_dict(), "alphabet": self.alphabet.to_dict(),
                "max_length": self.text_cfg.max_length, "embed_dim": self.text_cfg.embed_dim,
                "image_size": self.config.image_size,
                "classes": {"shape": list(SHAPES), "colour": list(COLOURS),
                            "size": list(SIZES)},
                "task_config": asdict(self.config)}

    def num_examples(self) -> int:
        return len(self.train_data.labels)

    def batch(self, indices: torch.Tensor, device: torch.device):
        """Each image with one of its captions, drawn afresh every time it is seen."""
        d = self.train_data
        pick = torch.randint(d.chars.shape[1], (len(indices),))
        chars = d.chars[indices, pick]
        return chars.to(device), d.features[indices].to(device), d.labels[indices].to(device)

    def loss(self, model, batch):
        chars, features, labels = batch
        text, image = model(chars, features)
        return symmetric_sje_loss(image, text, labels, NUM_OBJECT_CLASSES)

    def evaluate(self, model) -> dict[str, float]:
        return zero_shot_accuracy(model, self.val_data)


def final_metrics(task: TextEncoderTask, run_dir: Path) -> dict[str, dict[str, float]]:
    """Accuracy of the best checkpoint on the test and novel splits."""
    model = load_weights(task.build_model(), checkpoint_dir(run_dir)).eval()
    return {split: zero_shot_accuracy(model, task.split(split)) for split in ("test", "novel")}


def save_alphabet(task: TextEncoderTask, run_dir: Path) -> None:
    task.alphabet.save(run_dir / ALPHABET_FILE)


train = TrainingCommand(
    config=TextEncoderTaskConfig, task=TextEncoderTask, flags=("data", "encoder_init"),
    trainer_defaults={"early_stop_metric": "mean_accuracy", "lr": 1e-3, "batch_size": 128,
                      "epochs": 20, "patience": 4},
    run_files=save_alphabet, final_metrics=final_metrics)
