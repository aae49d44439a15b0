"""Self-critical sequence training (Rennie et al. 2017) for the captioners.

After cross-entropy training, SCST fine-tunes a captioner on the score its own
captions get: for each image it samples captions w^s from the model, decodes the
greedy caption w^ with the same weights, and follows the REINFORCE gradient with
the greedy caption's reward as the baseline,

    L = -(r(w^s) - r(w^)) * sum_t log p(w^s_t | w^s_<t, I),

so a sample is reinforced only when it beats what the model would say at test time.
The reward here is what the shapes world can check exactly (`semantic_reward`):
semantic exactness plus coverage of the image's scene, so a caption earns reward for
every object it names correctly and a full point more when all it says is true; a
caption outside the grammar earns 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from models.caption import CaptionModel, State
from training.data.language import caption_coverage, caption_is_exact, parse_caption
from training.data.world import Scene


def semantic_reward(caption: str, scene: Scene) -> float:
    """Exactness (0 or 1) plus coverage (0..1) of one caption against its scene."""
    parsed = parse_caption(caption)
    if parsed is None:
        return 0.0
    return float(caption_is_exact(parsed, scene)) + caption_coverage(parsed, scene)


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
              samples: int,
              bos_id: int, eos_id: int, pad_id: int, max_length: int
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
        greedy, _ = rollout(model, context.detach() if context is not None else None,
                            {k: v.detach() for k, v in state.items()}, bos_id=bos_id,
                            eos_id=eos_id, pad_id=pad_id, max_length=max_length, greedy=True)
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
