"""Every captioning architecture by name, and the one way to build them.

Each architecture registers itself where it is defined (models.caption's
`register_captioner`); importing their modules here makes the registry whole, so
callers import this module, never an architecture's, to build a captioner.
Adding an architecture = its module (config class + registered model) and one
import line below.

    config = caption_config({"arch": "updown", "hidden_dim": 256, ...})
    model = build_caption_model(config)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from models import mrnn, updown  # noqa: F401  (they register "mrnn" and "updown")
from models.caption import CAPTIONERS, CaptionConfig, CaptionModel, FeatureCaptioner

DEFAULT_ARCH = "sat-soft"


def captioner_class(arch: str) -> type[CaptionModel]:
    if arch not in CAPTIONERS:
        raise ValueError(f"arch must be one of {tuple(CAPTIONERS)}, got {arch!r}")
    return CAPTIONERS[arch]


def caption_config(settings: Mapping[str, Any], *, saved: bool = False) -> CaptionConfig:
    """The config of the architecture `settings["arch"]` names, from a dict of settings.

    Settings that belong to another architecture are left out: a captioner's config
    used to carry every architecture's settings in one flat dict, and the runs and
    bundles written then (checkpoints' config.json, manifests) hold such dicts. A
    setting no architecture knows is an error. With `saved` (settings a run wrote), a
    setting added since the run was made takes the value that rebuilds the model the
    run trained (the config class's `SAVED_BEFORE`), not today's default.
    """
    cls = captioner_class(settings.get("arch", DEFAULT_ARCH)).config_class
    known = {f.name for c in CAPTIONERS.values() for f in fields(c.config_class)}
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"unknown captioner settings: {sorted(unknown)}")
    own = {f.name for f in fields(cls)}
    chosen = {k: v for k, v in settings.items() if k in own}
    if saved:
        chosen = {**getattr(cls, "SAVED_BEFORE", {}), **chosen}
    return cls.from_dict(chosen)


def build_caption_model(config: CaptionConfig) -> CaptionModel:
    """The captioning model that config.arch names."""
    return captioner_class(config.arch)(config)


def trains_on_features(config: CaptionConfig) -> bool:
    """Whether the captioner trains on precomputed features of a frozen image network: one
    that can (a FeatureCaptioner) and does not train that network (`train_encoder`)."""
    return (issubclass(captioner_class(config.arch), FeatureCaptioner)
            and not getattr(config, "train_encoder", False))
