"""Self-critical sequence training (Rennie et al. 2017) for the captioners.

After cross-entropy training, SCST fine-tunes a captioner on the score its own
captions get: for each image it samples captions w^s from the model, decodes the
greedy caption w^ with the same weights, and follows the REINFORCE gradient with
the greedy caption's reward as the baseline,

    L = -(r(w^s) - r(w^)) * sum_t log p(w^s_t | w^s_<t, I),

so a sample is reinforced only when it beats what the model would say at test time.
The reward (`CaptionReward`) is a weighted sum of the caption's CIDEr-D against its
image's references (the paper's reward; document frequencies from the training
references) and what the shapes world can check exactly: semantic exactness (1 when
everything the caption says is true of the scene) and coverage (the share of the scene's
objects it mentions); a caption outside the grammar gets 0 on both. The semantic terms
alone are gamed: "there is a circle and a circle" is true and covers two circles without
naming a colour, so CIDEr-D, which rewards saying what the references say, stays in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from models.caption import CaptionModel, State
from training.data.language import caption_coverage, caption_is_exact, parse_caption
from training.data.world import Scene
from training.metrics.cider import CiderD


def semantic_terms(caption: str, scene: Scene) -> tuple[float, float]:
    """Exactness (0 or 1) and coverage (0..1) of one caption against its scene; (0, 0)
    for a caption outside the grammar."""
    parsed = parse_caption(caption)
    if parsed is None:
        return 0.0, 0.0
    return float(caption_is_exact(parsed, scene)), caption_coverage(parsed, scene)


REWARD_TERMS = ("cider_d", "exactness", "coverage")


class CaptionReward:
    """r = w_c CIDEr-D + w_e exactness + w_v coverage of a caption of training image i."""

    def __init__(self, weights: Mapping[str, float], references: Sequence[Sequence[str]],
                 scenes: Sequence[Scene] | None) -> None:
        unknown = set(weights) - set(REWARD_TERMS)
        if unknown or not any(weights.values()):
            raise ValueError(f"scst_reward weighs some of {REWARD_TERMS}, not "
                             f"{dict(weights)}")
        self.weights = {k: float(weights.get(k, 0.0)) for k in REWARD_TERMS}
        if scenes is None and (self.weights["exactness"] or self.weights["coverage"]):
            raise ValueError("the exactness and coverage rewards check captions against the "
                             "scenes of a generated world (scenes.json); this dataset has "
                             "none, so weigh cider_d only")
        self.references = references
        self.scenes = scenes
        self.cider = CiderD(references) if self.weights["cider_d"] else None
        self._reference_vectors: dict[int, list] = {}

    def __call__(self, caption: str, image: int) -> float:
        total = 0.0
        if self.cider is not None:
            vectors = self._reference_vectors.get(image)
            if vectors is None:
                vectors = self._reference_vectors[image] = [
                    self.cider.vector(r) for r in self.references[image]]
            total += self.weights["cider_d"] * self.cider.score(caption, vectors)
        if self.scenes is not None and (self.weights["exactness"] or self.weights["coverage"]):
            exact, coverage = semantic_terms(caption, self.scenes[image])
            total += self.weights["exactness"] * exact + self.weights["coverage"] * coverage
        return total


def repeat_rows(context: torch.Tensor | None, state: State, times: int
                ) -> tuple[torch.Tensor | None, State]:
    """Each image's context and state repeated `times` times, the copies adjacent."""
    context = None if context is None else context.repeat_interleave(times, dim=0)
    return context, {k: v.repeat_interleave(times, dim=0) for k, v in state.items()}


def word_log_probs(log_p: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """log p (N, V) renormalised over the words a caption can contain: `banned` ids (bos and
    pad, which only frame a caption) get probability 0."""
    log_p = log_p.index_fill(1, banned, float("-inf"))
    return log_p - log_p.logsumexp(dim=1, keepdim=True)


def rollout(model: CaptionModel, context: torch.Tensor | None, state: State, *, bos_id: int,
            eos_id: int, pad_id: int, max_length: int, greedy: bool,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one caption per row: the most likely word at each step (`greedy`) or a word
    drawn from the model's distribution over words (word_log_probs).

    Returns tokens (N, T) padded with pad_id after each caption's eos (eos included), and
    the summed log-probability (N,) of each caption's words, eos included, with gradients
    when the model has them enabled.
    """
    n = state[next(iter(state))].shape[0]
    device = state[next(iter(state))].device
    tokens = torch.full((n,), bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    total = torch.zeros(n, device=device)
    out = []
    banned = torch.tensor([bos_id, pad_id], device=device)
    for _ in range(max_length):
        log_p, state, _ = model.step(tokens, state, context)
        log_p = word_log_probs(log_p, banned)
        if greedy:
            tokens = log_p.argmax(dim=-1)
        else:
            tokens = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(1)
        tokens = tokens.masked_fill(finished, pad_id)
        picked = log_p.gather(1, tokens.unsqueeze(1)).squeeze(1)
        total = total + torch.where(finished, torch.zeros_like(picked), picked)
        out.append(tokens)
        finished = finished | (tokens == eos_id)
        if bool(finished.all()):
            break
    return torch.stack(out, dim=1), total


def scst_loss(model: CaptionModel, inputs: torch.Tensor | tuple[torch.Tensor, ...],
              reward: Callable[[Sequence[torch.Tensor], Sequence[int]], torch.Tensor], *,
              samples: int, bos_id: int, eos_id: int, pad_id: int, max_length: int
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The SCST loss of one batch of images and what it saw.

    `reward(token_rows, images)` scores captions (N,) given as token rows and, for each,
    the position in the batch of the image it describes. Returns the loss (mean over the
    `samples` sampled captions of every image) and {"reward_sample", "reward_greedy"}
    batch means.
    """
    context, state = model.encode_input(inputs)
    with torch.no_grad():
        was_training = model.training
        model.eval()  # the greedy caption is the test-time caption: no dropout
        greedy, _ = rollout(model, context, state, bos_id=bos_id, eos_id=eos_id,
                            pad_id=pad_id, max_length=max_length, greedy=True)
        model.train(was_training)
        images = list(range(greedy.shape[0]))
        baseline = reward(list(greedy), images)
    context, state = repeat_rows(context, state, samples)
    sampled, log_p = rollout(model, context, state, bos_id=bos_id, eos_id=eos_id,
                             pad_id=pad_id, max_length=max_length, greedy=False)
    with torch.no_grad():
        gained = reward(list(sampled), [i for i in images for _ in range(samples)])
    advantage = (gained - baseline.repeat_interleave(samples)).to(log_p.device)
    loss = -(advantage * log_p).mean()
    return loss, {"reward_sample": float(gained.mean()), "reward_greedy": float(baseline.mean())}
