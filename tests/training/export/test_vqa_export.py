"""vqa.onnx keeps a symbolic question length however the model's static sizes fall."""

from __future__ import annotations

import onnx
import torch

from models.encoder import EncoderConfig
from models.regions import RegionConfig, RegionNet
from models.vqa import UpDownVqa, VqaConfig
from training.export.vqa import GRAPH_FILE, VqaGraph, check_parity, export_vqa_graph

S = 32


def test_parity_holds_at_a_question_length_unseen_at_export(tmp_path):
    """The export traces 5-word questions; the relation branch's projected proposals are
    (B, 5, 16) too, the size of the question GRU's output. Intermediate shapes recorded
    from that trace once let ONNX Runtime share their buffers, and 7-word questions
    failed; the graph now keeps no such shapes."""
    torch.manual_seed(0)
    regions = RegionNet(RegionConfig(max_proposals=5, feature_dim=16, head_channels=8,
                                     encoder=EncoderConfig(out_dim=16, channels=(8, 16, 16))))
    vqa = UpDownVqa(VqaConfig(vocab_size=30, num_answers=7, feature_dim=16, embed_dim=8,
                              question_dim=16, attention_dim=16, joint_dim=32, relations=True))
    graph = VqaGraph(regions.eval(), vqa.eval()).eval()
    export_vqa_graph(graph, tmp_path / GRAPH_FILE, S)
    assert not onnx.load(str(tmp_path / GRAPH_FILE)).graph.value_info
    diffs = check_parity(graph, tmp_path / GRAPH_FILE, S)  # batch 3, 7-word questions
    assert max(diffs.values()) <= 1e-4
