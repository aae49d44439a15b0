"""An export whose graphs do not compute what the PyTorch model computes writes no bundle.

Each exporter writes its graphs, checks them against the model on fresh inputs and only
then turns its staging directory into NAME/VERSION. Here the graphs are written, then
the model's weights move (as if the graphs had been exported from another model): the
export must fail naming the outputs that disagree, and leave neither a bundle nor its
staging directory for the service to find. (Caption: tests/training/tasks/
test_caption_task.py; generation: test_generation_export.py; retrieval:
tests/training/tasks/test_retrieval_task.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import training.export.alignment as alignment_export
import training.export.vqa as vqa_export
from models.alignment import AlignmentConfig, AlignmentModel
from models.encoder import EncoderConfig
from models.regions import RegionConfig, RegionNet
from models.vqa import UpDownVqa, VqaConfig
from training.data.tokenizer import WordVocab

WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "and", "the", "what"]
SIZE = 32


def nudge(module: nn.Module) -> None:
    """Move every weight of `module` a little, as another training run would."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))


def export_then_nudge(write: Callable[..., Any], module_of: Callable[..., nn.Module]
                      ) -> Callable[..., Any]:
    """`write` (a graph writer), after which the module it exported moves."""

    def written(*args: Any, **kwargs: Any) -> Any:
        out = write(*args, **kwargs)
        nudge(module_of(*args))
        return out

    return written


def assert_nothing_written(repository: Path) -> None:
    left = sorted(p.relative_to(repository) for p in repository.rglob("*")
                  if p.is_file() or p.name.startswith("."))
    assert left == [], f"a refused export left {left}"


def tiny_regions() -> RegionNet:
    return RegionNet(RegionConfig(max_proposals=5, feature_dim=16, head_channels=8,
                                  encoder=EncoderConfig(out_dim=16, channels=(8, 16, 16))))


def test_vqa_export_refuses_graphs_that_fail_parity(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    vqa = UpDownVqa(VqaConfig(vocab_size=len(WORDS) + 4, num_answers=3, feature_dim=16,
                              embed_dim=8, question_dim=16, attention_dim=16, joint_dim=32))
    graph = vqa_export.VqaGraph(tiny_regions().eval(), vqa.eval()).eval()
    monkeypatch.setattr(vqa_export, "export_vqa_graph",
                        export_then_nudge(vqa_export.export_vqa_graph, lambda g, *_: g.vqa))
    with pytest.raises(RuntimeError, match="disagree on .*answer_scores"):
        vqa_export.write_vqa_bundle(graph, tmp_path, "vqa-test", None, image_size=SIZE,
                                    vocab=WordVocab(WORDS), answers=["yes", "no", "red"],
                                    max_question_length=8, training={})
    assert_nothing_written(tmp_path)


def test_alignment_export_refuses_graphs_that_fail_parity(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = AlignmentModel(AlignmentConfig(vocab_size=len(WORDS) + 4, feature_dim=16,
                                           embed_dim=8, hidden_dim=8, joint_dim=8)).eval()
    monkeypatch.setattr(alignment_export, "export_alignment_graphs",
                        export_then_nudge(alignment_export.export_alignment_graphs,
                                          lambda m, *_: m))
    with pytest.raises(RuntimeError, match="disagree on .*text.word_vectors"):
        alignment_export.write_alignment_bundle(model, tiny_regions().eval(), WordVocab(WORDS),
                                                tmp_path / "align-test" / "1",
                                                image_size=SIZE, max_words=6, beta=0.5)
    assert_nothing_written(tmp_path)
