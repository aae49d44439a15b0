"""Bottom-Up and Top-Down attention for VQA (Anderson et al. 2018, §3.3; Teney et al. 2018).

The bottom-up part is a region detector (models/regions.py) whose region features
are computed once and kept frozen; this file is the top-down part:

    q     = GRU(embed(question))[length - 1]                       question encoding
    a_i   = w_a^T f_a([v_i; q])            softmax over the real regions -> alpha
    v_hat = sum_i alpha_i v_i                                       attended image feature
    h     = f_q(q) * f_v(v_hat)                                     joint embedding
    s     = sigmoid(W_o f_o(h))                                     answer scores

with every f_* a gated tanh layer, y = tanh(W x + b) * sigmoid(W' x + b'). The
classifier is trained with binary cross-entropy against soft scores, as a
multi-label problem (Teney et al. 2018, §3.2).

Two choices beyond the paper, both switchable in `VqaConfig`:
- each region feature v_i is extended with its box geometry and detection score
  (x0, y0, x1, y1, w, h, score), so that questions about relative position can be
  answered from v_hat, and so that the whole-image region (box [0, 0, 1, 1]) can
  serve as an anchor for counting: the share of attention the matching regions take
  from it grows with their number;
- `glimpses` > 1 computes that many attention distributions (one w_a row each) and
  concatenates their v_hat, so a question about two objects can look at both.
  The returned attention is the mean of the glimpses' distributions.

One addition to the paper's model, off by default (`relations`): a relation-network
branch (Santoro et al. 2017, eq. 1) beside the top-down attention, for questions about
how two objects lie relative to each other. Soft attention has to single out both objects
of such a question; the relation network instead scores every ordered pair of proposals
and sums, so no region has to be selected:

    o_i = [P LN(f_i); c_x, c_y, w, h]                  small feature and box, in [-1, 1]
    r   = sum_{i != j} s_i s_j g([o_i; o_j; q])         over the proposals only
    h   = f_q(q) * f_v(v_hat) + f_r(r)

where s are the detection scores (empty proposals score near 0 and drop out of the sum),
g is a two-layer ReLU MLP and the whole-image region (always the last) takes no part.
On the shapes world the branch raises counting accuracy, while position and spatial
questions stay at chance with it.

Three more options, each off by default and on in configs/vqa_updown.json, which took
the shapes world's relation questions from chance to 100% (docs/results.md):
- `attention_supervision`: where the data names the objects a question is about, glimpse
  g is trained toward the g-th one's region (`attention_loss`), so a question about two
  objects looks at both instead of both glimpses settling on one;
- `glimpse_geometry` (GlimpseGeometry): the offset between the two attended boxes gets its
  own path to the answer;
- `counting` (CountingBranch): per-proposal sigmoid matches summed into a count, which
  softmax attention cannot give.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

GEOMETRY_FEATURES = 7  # x0, y0, x1, y1, w, h of a normalised xyxy box, and its score


@dataclass
class VqaConfig:
    vocab_size: int  # question words, WordVocab ids (<pad> = 0)
    num_answers: int
    feature_dim: int = 128  # F of the bottom-up region features
    embed_dim: int = 64
    question_dim: int = 128  # GRU state q
    attention_dim: int = 128  # f_a output
    joint_dim: int = 256  # f_q, f_v and f_o outputs
    glimpses: int = 2
    attention_fusion: str = "product"  # or "concat" (see TopDownAttention)
    glimpse_queries: bool = True  # each glimpse attends over the words first (GlimpseQueries)
    geometry: bool = True  # append GEOMETRY_FEATURES to each region feature
    normalize_features: bool = True  # layer-normalise each region feature (see `regions`)
    dropout: float = 0.1
    pad_id: int = 0
    relations: bool = False  # add the relation-network branch (RelationNetwork)
    relation_feature_dim: int = 16  # P f_i: the projected region feature in o_i
    relation_dim: int = 128  # g's hidden and output width
    # Weight of the attention supervision loss (training only): where a question names its
    # objects, glimpse g is trained to attend to the region of the g-th named object (the
    # last one for glimpses beyond the count). 0 trains the attention from answers alone.
    attention_supervision: float = 0.0
    # Relative geometry of the first two glimpses (GlimpseGeometry), fused with the question
    # beside the attended features.
    glimpse_geometry: bool = False
    # A counting branch (CountingBranch): sigmoid matches per proposal, summed, fused with
    # the question beside the attended features.
    counting: bool = False
    max_count: int = 8  # the summed matches are read as a soft one-hot over 0..max_count

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VqaConfig:
        return cls(**d)


class GatedTanh(nn.Module):
    """y = tanh(W x + b) * sigmoid(W' x + b'), the non-linearity of every f_* (§3.3)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, 2 * out_dim)  # [W; W'] in one matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, gate = self.proj(x).chunk(2, dim=-1)
        return torch.tanh(y) * torch.sigmoid(gate)


class QuestionEncoder(nn.Module):
    """Word embeddings and a GRU; q is the state after each question's last word."""

    def __init__(self, config: VqaConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim,
                                  padding_idx=config.pad_id)
        self.gru = nn.GRU(config.embed_dim, config.question_dim, batch_first=True)

    def forward(self, question: torch.Tensor, length: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """question (B, T) right-padded ids, length (B,) >= 1 -> q (B, Dq), and the
        state after every word (B, T, Dq)."""
        states, _ = self.gru(self.embed(question))  # (B, T, Dq)
        # The GRU reads left to right, so the right padding never reaches the state at
        # position length - 1: gathering it equals running each question unpadded.
        last = (length - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, states.shape[2])
        return states.gather(1, last).squeeze(1), states


class GlimpseQueries(nn.Module):
    """One query per glimpse: an attention-weighted sum of the GRU's per-word states.

    With one shared q, every glimpse looks for the same thing; a question about two
    objects ("is the red circle left of the blue square?") then gets both glimpses on one
    of them. Attending over the words first lets glimpse g pick its own phrase.
    """

    def __init__(self, config: VqaConfig) -> None:
        super().__init__()
        self.score = nn.Linear(config.question_dim, config.glimpses)

    def forward(self, states: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """states (B, T, Dq), length (B,) -> queries (B, G, Dq)."""
        words = torch.arange(states.shape[1], device=states.device)
        real = words.unsqueeze(0) < length.unsqueeze(1)  # (B, T)
        logits = self.score(states).masked_fill(~real.unsqueeze(-1), -1e9)  # (B, T, G)
        return torch.bmm(logits.softmax(dim=1).transpose(1, 2), states)


class TopDownAttention(nn.Module):
    """Attention logits a_i per glimpse; softmax over the unmasked regions.

    fusion "concat": a_i = w_a^T f_a([v_i; q]), as written in §3.3.
    fusion "product": a_i = w_a^T (f_av(v_i) * f_aq(q)), the element-wise product of the
    widely used PyTorch re-implementation of the paper: matching a region against the
    objects a question names is a multiplicative interaction, which one gated tanh layer
    over the concatenation learns only slowly.
    """

    def __init__(self, region_dim: int, config: VqaConfig) -> None:
        super().__init__()
        self.fusion = config.attention_fusion
        if self.fusion == "concat":
            self.f_a = GatedTanh(region_dim + config.question_dim, config.attention_dim)
        elif self.fusion == "product":
            self.f_av = GatedTanh(region_dim, config.attention_dim)
            self.f_aq = GatedTanh(config.question_dim, config.attention_dim)
        else:
            raise ValueError(f"attention_fusion must be 'concat' or 'product', not "
                             f"{self.fusion!r}")
        self.dropout = nn.Dropout(config.dropout)
        self.w_a = nn.Linear(config.attention_dim, config.glimpses)

    def forward(self, v: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """v (B, R, Dv), q (B, G, Dq) one query per glimpse, mask (B, R) bool
        -> alpha (B, G, R)."""
        G, R = q.shape[1], v.shape[1]
        if self.fusion == "concat":
            pairs = torch.cat([v.unsqueeze(1).expand(-1, G, -1, -1),
                               q.unsqueeze(2).expand(-1, -1, R, -1)], dim=-1)
            joint = self.f_a(pairs)  # (B, G, R, Da)
        else:
            joint = self.f_av(v).unsqueeze(1) * self.f_aq(q).unsqueeze(2)  # (B, G, R, Da)
        # Glimpse g reads its own joint vectors with its own row of w_a.
        a = (self.dropout(joint) * self.w_a.weight[:, None, :]).sum(-1) \
            + self.w_a.bias[:, None]  # (B, G, R)
        a = a.masked_fill(~mask.unsqueeze(1), torch.finfo(a.dtype).min)
        return a.softmax(dim=2)


class RelationNetwork(nn.Module):
    """r = sum_{i != j} s_i s_j g([o_i; o_j; q]) over ordered pairs of proposals
    (Santoro et al. 2017, eq. 1), the pair sum weighted by detection scores.

    g's first layer is linear in the concatenation, W [o_i; o_j; q] = W_l o_i + W_r o_j
    + W_q q, so it runs once per region and question and the pairs only add. The pair
    index tensors depend on the fixed region count alone, which keeps the exported graph
    free of data-dependent shapes.
    """

    def __init__(self, config: VqaConfig) -> None:
        super().__init__()
        object_dim = config.relation_feature_dim + 4
        self.project = nn.Linear(config.feature_dim, config.relation_feature_dim)
        self.g_left = nn.Linear(object_dim, config.relation_dim)
        self.g_right = nn.Linear(object_dim, config.relation_dim, bias=False)
        self.g_question = nn.Linear(config.question_dim, config.relation_dim, bias=False)
        self.g_out = nn.Linear(config.relation_dim, config.relation_dim)

    @staticmethod
    def pair_indices(num_proposals: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(i, j) of every ordered pair of distinct proposals, num_proposals * (n - 1) each."""
        i, j = zip(*[(a, b) for a in range(num_proposals) for b in range(num_proposals)
                     if a != b], strict=True)
        return torch.tensor(i), torch.tensor(j)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features (B, R, F) normalised, boxes (B, R, 4) xyxy in [0, 1], scores (B, R),
        q (B, Dq), mask (B, R) -> r (B, relation_dim). Region R - 1 is the whole image."""
        n = features.shape[1] - 1
        centre = (boxes[:, :n, :2] + boxes[:, :n, 2:]) / 2
        size = boxes[:, :n, 2:] - boxes[:, :n, :2]
        o = torch.cat([self.project(features[:, :n]), centre * 2 - 1, size * 2 - 1], dim=-1)
        i, j = self.pair_indices(n)
        i, j = i.to(features.device), j.to(features.device)
        hidden = self.g_left(o)[:, i] + self.g_right(o)[:, j] \
            + self.g_question(q).unsqueeze(1)  # (B, P, H)
        pairs = F.relu(self.g_out(F.relu(hidden)))  # (B, P, H)
        s = scores[:, :n] * mask[:, :n].to(scores.dtype)
        weight = (s[:, i] * s[:, j]).unsqueeze(-1)  # (B, P, 1)
        return (weight * pairs).sum(dim=1)


class GlimpseGeometry(nn.Module):
    """Where the second glimpse's object lies from the first's, as the answer layers see it.

    With v_hat holding each glimpse's box among its ~135 features, "where is the red circle
    relative to the blue square?" asks the joint layers for the sign and the larger of the
    differences of two of those features. With both glimpses on the right objects the answer
    follows from the boxes alone, yet answer-trained fusion stays at chance on it. This
    branch gives the difference its own path:

        c_g = sum_i alpha_gi centre_i,   d = c_0 - c_1,   s_g = sum_i alpha_gi (w_i, h_i)
        r   = f_gq(q) * f_g(SCALE [d; |d|; s_0; s_1])

    added to the joint embedding h. SCALE brings offsets of a few tenths of the image to
    order 1, the scale of the layer-normalised features beside them.
    """

    SCALE = 4.0
    FEATURES = 8  # d, |d|, s_0, s_1: two each

    def __init__(self, config: VqaConfig) -> None:
        super().__init__()
        if config.glimpses < 2:
            raise ValueError("glimpse_geometry relates two glimpses: set glimpses >= 2")
        self.f_g = GatedTanh(self.FEATURES, config.joint_dim)
        self.f_gq = GatedTanh(config.question_dim, config.joint_dim)

    def forward(self, alpha: torch.Tensor, boxes: torch.Tensor, q: torch.Tensor
                ) -> torch.Tensor:
        """alpha (B, G, R), boxes (B, R, 4) normalised xyxy, q (B, Dq) -> (B, joint_dim)."""
        centre = torch.bmm(alpha[:, :2], (boxes[..., :2] + boxes[..., 2:]) / 2)  # (B, 2, 2)
        size = torch.bmm(alpha[:, :2], boxes[..., 2:] - boxes[..., :2])  # (B, 2, 2)
        d = centre[:, 0] - centre[:, 1]
        g = torch.cat([d, d.abs(), size.flatten(1)], dim=-1) * self.SCALE
        return self.f_gq(q) * self.f_g(g)


class CountingBranch(nn.Module):
    """How many proposals match the question, for "how many red shapes are there?".

    Softmax attention sums to one whatever the number of matching regions, so v_hat
    cannot say how many there were (Zhang et al. 2018). This branch scores each proposal
    on its own with a sigmoid and adds the scores, weighted by the detection scores (empty
    proposals drop out), then reads the sum as a soft one-hot over 0..max_count
    (k_j = max(0, 1 - |c - j|)) for the answer layers:

        m_i = sigmoid(w^T (f_cv(v_i) * f_cq(q))),   c = sum_i s_i m_i
        r   = f_kq(q) * f_k(k(c))

    The whole-image region (always the last) takes no part.
    """

    def __init__(self, region_dim: int, config: VqaConfig) -> None:
        super().__init__()
        self.max_count = config.max_count
        self.f_cv = GatedTanh(region_dim, config.attention_dim)
        self.f_cq = GatedTanh(config.question_dim, config.attention_dim)
        self.w_c = nn.Linear(config.attention_dim, 1)
        self.f_k = GatedTanh(config.max_count + 1, config.joint_dim)
        self.f_kq = GatedTanh(config.question_dim, config.joint_dim)

    def count(self, v: torch.Tensor, scores: torch.Tensor, q: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
        """v (B, R, Dv), scores (B, R), q (B, Dq), mask (B, R) -> c (B,), the soft count."""
        n = v.shape[1] - 1
        match = torch.sigmoid(self.w_c(self.f_cv(v[:, :n]) * self.f_cq(q).unsqueeze(1)))
        weight = scores[:, :n] * mask[:, :n].to(scores.dtype)
        return (match.squeeze(-1) * weight).sum(dim=1)

    def forward(self, v: torch.Tensor, scores: torch.Tensor, q: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        c = self.count(v, scores, q, mask)
        bins = torch.arange(self.max_count + 1, device=v.device, dtype=v.dtype)
        k = (1 - (c.unsqueeze(1) - bins).abs()).clamp(min=0)  # (B, max_count + 1)
        return self.f_kq(q) * self.f_k(k)


class UpDownVqa(nn.Module):
    """The top-down VQA model over precomputed (or jointly computed) region features."""

    def __init__(self, config: VqaConfig) -> None:
        super().__init__()
        self.config = config
        region_dim = config.feature_dim + (GEOMETRY_FEATURES if config.geometry else 0)
        # Detector features are ReLU outputs with norms in the tens: as they are, they
        # saturate the tanh of f_a and f_v; L2-normalised (Teney et al. 2018, §3) these
        # all-positive vectors point almost the same way and differ by a few hundredths.
        # Layer normalisation centres and scales each one, keeping them apart.
        self.feature_norm = nn.LayerNorm(config.feature_dim) if config.normalize_features \
            else nn.Identity()
        self.question = QuestionEncoder(config)
        self.glimpse_queries = GlimpseQueries(config) if config.glimpse_queries else None
        self.attention = TopDownAttention(region_dim, config)
        self.f_q = GatedTanh(config.question_dim, config.joint_dim)
        self.f_v = GatedTanh(config.glimpses * region_dim, config.joint_dim)
        self.f_o = GatedTanh(config.joint_dim, config.joint_dim)
        self.relations = RelationNetwork(config) if config.relations else None
        self.f_r = GatedTanh(config.relation_dim, config.joint_dim) if config.relations \
            else None
        self.geometry = GlimpseGeometry(config) if config.glimpse_geometry else None
        self.counting = CountingBranch(region_dim, config) if config.counting else None
        self.dropout = nn.Dropout(config.dropout)
        self.w_o = nn.Linear(config.joint_dim, config.num_answers)

    def regions(self, features: torch.Tensor, boxes: torch.Tensor,
                scores: torch.Tensor) -> torch.Tensor:
        """v_i: the region feature, with box geometry and score appended."""
        if not self.config.geometry:
            return features
        wh = boxes[..., 2:] - boxes[..., :2]
        return torch.cat([features, boxes, wh, scores.unsqueeze(-1)], dim=-1)  # (B, R, F + 7)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                question: torch.Tensor, question_length: torch.Tensor,
                region_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None,
                attention_targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Answer logits (B, A), attention (B, R) and the loss when `targets` are given.

        features (B, R, F), boxes (B, R, 4) normalised xyxy, scores (B, R) detection
        scores (1 for the whole-image region), question (B, T) ids,
        question_length (B,), region_mask (B, R) True for real regions (default: all),
        targets (B, A) soft scores in [0, 1]. sigmoid(logits) are the answer scores s.
        attention_targets (B, G): the region each glimpse should attend to, -1 where the
        question names no object; with `attention_supervision` > 0 the loss adds that
        weight times attention_loss.
        """
        if region_mask is None:
            region_mask = torch.ones(features.shape[:2], dtype=torch.bool,
                                     device=features.device)
        if self.config.normalize_features:
            features = self.feature_norm(features)
        v = self.regions(features, boxes, scores)  # (B, R, Dv)
        q, states = self.question(question, question_length)  # (B, Dq), (B, T, Dq)
        if self.glimpse_queries is not None:
            queries = self.glimpse_queries(states, question_length)  # (B, G, Dq)
        else:
            queries = q.unsqueeze(1).expand(-1, self.config.glimpses, -1)
        alpha = self.attention(v, queries, region_mask)  # (B, G, R)
        v_hat = torch.bmm(alpha, v).flatten(1)  # (B, G * Dv)
        h = self.f_q(q) * self.f_v(v_hat)  # (B, J)
        if self.relations is not None:
            h = h + self.f_r(self.relations(features, boxes, scores, q, region_mask))
        if self.geometry is not None:
            h = h + self.geometry(alpha, boxes, q)
        if self.counting is not None:
            h = h + self.counting(v, scores, q, region_mask)
        logits = self.w_o(self.dropout(self.f_o(self.dropout(h))))  # (B, A)
        loss = None
        if targets is not None:
            loss = soft_score_loss(logits, targets)
            if attention_targets is not None and self.config.attention_supervision > 0:
                loss = loss + self.config.attention_supervision * attention_loss(
                    alpha, attention_targets)
        return logits, alpha.mean(dim=1), loss


def attention_loss(alpha: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean -log alpha[b, g, targets[b, g]] over the supervised glimpses (targets >= 0).

    alpha (B, G, R) attention distributions, targets (B, G) region indices or -1.
    0 when no glimpse of the batch is supervised.
    """
    supervised = targets >= 0
    if not bool(supervised.any()):
        return alpha.new_zeros(())
    picked = alpha.gather(2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, G)
    return -(picked.clamp(min=1e-8).log() * supervised).sum() / supervised.sum()


def soft_score_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against soft scores, summed over answers, mean over questions.

    Summing over the answer vocabulary (rather than averaging) keeps the gradient of
    the few answers that matter from shrinking with the vocabulary size.
    """
    per_answer = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return per_answer.sum(dim=1).mean()
