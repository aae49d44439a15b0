import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.encoder import EncoderConfig
from models.text_encoder import (
    CharCnnRnn,
    JointEmbedding,
    JointImageConfig,
    TextEncoderConfig,
    class_means,
    symmetric_sje_loss,
)

TINY = TextEncoderConfig(max_length=16, char_dim=8, conv_channels=(12, 16), kernel_sizes=(3, 3),
                         rnn_size=16, embed_dim=8)


@pytest.fixture
def encoder() -> CharCnnRnn:
    torch.manual_seed(0)
    return CharCnnRnn(TINY).eval()


def test_text_embedding_has_shape_batch_by_embed_dim(encoder):
    chars = torch.randint(1, TINY.alphabet_size, (3, TINY.max_length))
    assert encoder(chars).shape == (3, TINY.embed_dim)


def test_padding_after_the_text_does_not_change_its_embedding(encoder):
    text = torch.randint(1, TINY.alphabet_size, (1, 6))
    short = torch.cat([text, torch.zeros(1, 2, dtype=torch.long)], 1)  # 8 steps
    long = torch.cat([text, torch.zeros(1, 26, dtype=torch.long)], 1)  # 32 steps
    torch.testing.assert_close(encoder(short), encoder(long))


def test_different_texts_embed_differently(encoder):
    a = torch.full((1, 16), 5)
    b = torch.full((1, 16), 9)
    assert (encoder(a) - encoder(b)).abs().max() > 1e-3


def test_lstm_variant_and_bad_configs():
    lstm = CharCnnRnn(TextEncoderConfig(max_length=8, char_dim=4, conv_channels=(4,),
                                        kernel_sizes=(3,), pool_sizes=(2,), rnn="lstm",
                                        rnn_size=4, embed_dim=3))
    assert lstm(torch.ones(2, 8, dtype=torch.long)).shape == (2, 3)
    with pytest.raises(ValueError, match="multiple"):
        TextEncoderConfig(max_length=30)
    with pytest.raises(ValueError, match="rnn"):
        TextEncoderConfig(rnn="transformer")


def test_exports_to_onnx_with_symbolic_batch_and_matches_pytorch(encoder, tmp_path):
    path = tmp_path / "text.onnx"
    example = torch.randint(0, TINY.alphabet_size, (2, TINY.max_length))
    torch.onnx.export(encoder, (example,), str(path), input_names=["chars"],
                      output_names=["text_embedding"],
                      dynamic_shapes={"chars": {0: torch.export.Dim("batch")}},
                      opset_version=18, dynamo=True, external_data=False, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    chars = torch.randint(0, TINY.alphabet_size, (5, TINY.max_length))
    chars[1, 4:] = 0
    (out,) = session.run(None, {"chars": chars.numpy()})
    np.testing.assert_allclose(out, encoder(chars).detach().numpy(), atol=1e-5)


def test_class_means_average_each_present_class():
    emb = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    means, present = class_means(emb, torch.tensor([0, 0, 2]), 4)
    torch.testing.assert_close(means[0], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(means[2], torch.tensor([5.0, 5.0]))
    assert present.tolist() == [True, False, True, False]


def test_sje_loss_is_zero_when_classes_are_separated_by_the_margin():
    labels = torch.tensor([0, 1, 2])
    emb = 2.0 * torch.eye(3)  # own class scores 4, others 0
    loss, terms = symmetric_sje_loss(emb, emb, labels, 3)
    assert float(loss) == 0.0 and terms == {"loss_image": 0.0, "loss_text": 0.0}


def test_sje_loss_sums_the_hinge_over_wrong_classes_in_both_directions():
    labels = torch.tensor([0, 1])
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss, terms = symmetric_sje_loss(image, text, labels, 2)
    # images vs text means: image 0 scores (1, 0): hinge 1 + 0 - 1 = 0; image 1 scores
    # (1, 0) with true class 1: hinge 1 + 1 - 0 = 2; mean 1.
    assert terms["loss_image"] == pytest.approx(1.0)
    # texts vs image means (1,0),(1,0): text 0: (1, 1) -> hinge 1; text 1: (0, 0) -> 1.
    assert terms["loss_text"] == pytest.approx(1.0)
    assert float(loss) == pytest.approx(2.0)


def test_joint_embedding_trains_text_and_projection_but_not_the_cnn():
    image_cfg = JointImageConfig(encoder=EncoderConfig(out_dim=8, channels=(4, 8)), embed_dim=8)
    model = JointEmbedding(TINY, image_cfg).train()
    assert not model.image.encoder.training
    chars = torch.randint(1, TINY.alphabet_size, (4, 16))
    feats = model.image.features(torch.rand(4, 3, 32, 32))
    assert feats.shape == (4, image_cfg.feature_dim)
    text, image = model(chars, feats)
    loss, _ = symmetric_sje_loss(image, text, torch.tensor([0, 1, 2, 3]), 4)
    loss.backward()
    assert model.text.project.weight.grad is not None
    assert model.image.project.weight.grad is not None
    assert all(p.grad is None for p in model.image.encoder.parameters())
