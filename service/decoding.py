"""Decoding in NumPy: batched beam search, greedy decoding and sampling.

Every autoregressive bundle exports its decoder as a *step function* (see
ARCHITECTURE.md, "ONNX conventions"). One call advances N rows by one token:

* ``tokens[i]`` is the token fed to row i and ``parents[i]`` the row of the
  previous call (or of ``init_state`` on the first call) that row i continues;
  the step gathers its recurrent state by ``parents`` itself, so beams are
  re-ordered inside the graph and never copied through the host.
* ``context`` holds per-row constants (attention features, ...), N rows.
* It returns the K most likely next tokens of each row, sorted by descending
  log-probability, the new state (N rows) and optional per-row ``extras``
  (e.g. the attention weights ``alpha`` [N, L] of Eq. 5 of Xu et al. 2015).

K is fixed by the graph and recorded in the bundle; callers pass it as
``top_k`` (beam search) or ``graph_top_k`` (sampling), and a step whose output
has another width is rejected. With K >= vocabulary size the search is exact
with respect to the model.

Conventions shared by every decoder here:

* ``max_length`` is the number of decoding steps, i.e. of tokens emitted
  including eos: a finished hypothesis has at most ``max_length - 1`` words, an
  unfinished one exactly ``max_length``.
* ``Hypothesis.log_prob`` is the sum of the model's log-probabilities of the
  emitted tokens (eos included when the hypothesis finished).
* ``Hypothesis.extras[name]`` stacks the step's extras along the hypothesis'
  path: row j is the output of the call that emitted token j, so it has
  ``len(tokens) + finished`` rows (the last one belongs to eos when finished).
* Settings may be a scalar or one value per image. Images that are done leave
  the running batch, so later calls see fewer rows; each image gets exactly the
  result it would get if decoded alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

MAX_BEAM_SIZE = 20

Arrays = dict[str, np.ndarray]
PerImage = int | float | bool | Sequence | np.ndarray


@dataclass
class StepOutput:
    log_probs: np.ndarray  # float32 [N, K] top-K log-probabilities, sorted descending
    token_ids: np.ndarray  # int64 [N, K] their token ids
    state: Arrays  # new state, N rows (already gathered by parents)
    extras: Arrays = field(default_factory=dict)  # per-row outputs kept per hypothesis


class StepFn(Protocol):
    def __call__(
        self,
        tokens: np.ndarray,
        parents: np.ndarray,
        state: Mapping[str, np.ndarray],
        context: Mapping[str, np.ndarray],
    ) -> StepOutput: ...


@dataclass
class Hypothesis:
    tokens: list[int]  # emitted words, without bos and eos
    log_prob: float  # sum of token log-probabilities, eos included when finished
    score: float  # log_prob / GNMT length penalty
    finished: bool  # ended with eos (False: cut at max_length)
    extras: Arrays = field(default_factory=dict)  # name -> [len(tokens) + finished, ...]


def gnmt_length_penalty(length: np.ndarray | int, alpha: np.ndarray | float) -> np.ndarray:
    """lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha (Eq. 14 of Wu et al. 2016, GNMT).

    |Y| counts the emitted tokens including eos, i.e. the number of terms in
    the log-probability it divides; alpha = 0 gives lp = 1 (raw log-prob).
    """
    length = np.asarray(length, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    return (5.0 + length) ** alpha / 6.0**alpha


# ----------------------------------------------------------------------------- validation


def _batch_size(init_state: Mapping[str, np.ndarray], context: Mapping[str, np.ndarray]) -> int:
    sizes = {f"{kind}[{name!r}]": np.shape(value)[0]
             for kind, arrays in (("init_state", init_state), ("context", context))
             for name, value in arrays.items()}
    if not sizes:
        raise ValueError("init_state and context are empty: cannot tell the number of images")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"init_state and context must have one row per image, got {sizes}")
    return next(iter(sizes.values()))


def _per_image(name: str, value: PerImage, n_images: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        return np.full(n_images, arr.item(), dtype=arr.dtype)
    if arr.shape != (n_images,):
        raise ValueError(f"{name} must be a scalar or hold one value per image "
                         f"({n_images}), got shape {arr.shape}")
    return arr


def _ints(name: str, value: PerImage, n_images: int, low: int, high: int | None = None
          ) -> np.ndarray:
    arr = _per_image(name, value, n_images)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer (or one per image), got {value!r}")
    bad = (arr < low) | (arr > high if high is not None else False)
    if bad.any():
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {arr[bad][0]}")
    return arr.astype(np.int64)


def _floats(name: str, value: PerImage, n_images: int, low: float, high: float,
            low_inclusive: bool = True) -> np.ndarray:
    arr = _per_image(name, value, n_images)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a number (or one per image), got {value!r}")
    arr = arr.astype(np.float64)
    too_low = arr < low if low_inclusive else arr <= low
    bad = ~np.isfinite(arr) | too_low | (arr > high)
    if bad.any():
        bracket = "[" if low_inclusive else "("
        raise ValueError(f"{name} must be finite and in {bracket}{low}, {high}], "
                         f"got {arr[bad][0]}")
    return arr


def _bools(name: str, value: PerImage, n_images: int) -> np.ndarray:
    arr = _per_image(name, value, n_images)
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must be a bool (or one per image), got {value!r}")
    return arr


def _call(step: StepFn, tokens: np.ndarray, parents: np.ndarray, state: Arrays,
          context: Arrays, k: int) -> StepOutput:
    out = step(tokens, parents, state, context)
    expected = (len(tokens), k)
    if out.log_probs.shape != expected or out.token_ids.shape != expected:
        raise ValueError(f"step returned log_probs {out.log_probs.shape} and token_ids "
                         f"{out.token_ids.shape}, expected {expected} (rows, top_k={k})")
    return out


def _rows(arrays: Mapping[str, np.ndarray], index: np.ndarray) -> Arrays:
    return {name: value[index] for name, value in arrays.items()}


# ----------------------------------------------------------------------------- bookkeeping


class _Paths:
    """Prefix and ancestry of every row of the running batch.

    ``tokens[r]`` holds the words y_1..y_t of the hypothesis on row r and
    ``rows[r, j]`` the row its ancestor occupied in call j, so the extras of a
    hypothesis are ``extras[j][name][rows[r, j]]`` for j = 0..t-1.
    """

    def __init__(self, n_rows: int) -> None:
        self.tokens = np.zeros((n_rows, 0), dtype=np.int64)
        self.rows = np.zeros((n_rows, 0), dtype=np.int64)
        self.extras: list[Arrays] = []

    def advance(self, parents: np.ndarray, tokens: np.ndarray) -> None:
        """Row i of the next call continues row ``parents[i]`` of this call with ``tokens[i]``."""
        self.tokens = np.concatenate([self.tokens[parents], tokens[:, None]], axis=1)
        self.rows = np.concatenate([self.rows[parents], parents[:, None]], axis=1)

    def keep(self, index: np.ndarray) -> None:
        self.tokens, self.rows = self.tokens[index], self.rows[index]

    def ending_here(self, rows: np.ndarray) -> np.ndarray:
        """Ancestry of hypotheses that end with a token emitted by this call's ``rows``."""
        return np.concatenate([self.rows[rows], rows[:, None]], axis=1)

    def stack_extras(self, path: np.ndarray) -> Arrays:
        if not self.extras or not self.extras[0]:
            return {}
        return {name: np.stack([self.extras[j][name][row] for j, row in enumerate(path)])
                for name in self.extras[0]}


@dataclass
class _Candidates:
    """Hypotheses set aside for the final answer, added a batch of them at a time."""

    size: int = 0
    image: list[np.ndarray] = field(default_factory=list)
    log_prob: list[np.ndarray] = field(default_factory=list)
    finished: list[np.ndarray] = field(default_factory=list)
    order: list[np.ndarray] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)
    paths: list[np.ndarray] = field(default_factory=list)

    def add(self, image: np.ndarray, tokens: np.ndarray, paths: np.ndarray,
            log_prob: np.ndarray, finished: bool, order: np.ndarray | None = None) -> None:
        if order is None:  # insertion order breaks score ties
            order = np.arange(self.size, self.size + len(image))
        self.size += len(image)
        self.image.append(image)
        self.log_prob.append(np.asarray(log_prob, dtype=np.float64))
        self.finished.append(np.full(len(image), finished))
        self.order.append(order)
        self.tokens.extend(tokens)
        self.paths.extend(paths)

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self.image:
            empty = np.zeros(0, dtype=np.int64)
            return empty, np.zeros(0), np.zeros(0, dtype=bool), empty, empty
        lengths = np.array([len(t) for t in self.tokens], dtype=np.int64)
        return (np.concatenate(self.image), np.concatenate(self.log_prob),
                np.concatenate(self.finished), np.concatenate(self.order), lengths)

    def hypothesis(self, i: int, score: float, log_prob: float, finished: bool,
                   paths: _Paths) -> Hypothesis:
        return Hypothesis(tokens=[int(t) for t in self.tokens[i]], log_prob=log_prob,
                          score=score, finished=finished,
                          extras=paths.stack_extras(self.paths[i]))


def _ranked(candidates: _Candidates, paths: _Paths, n_images: int, keys: np.ndarray,
            scores: np.ndarray, limit: np.ndarray) -> list[list[Hypothesis]]:
    """Per image, the first ``limit[i]`` candidates by ascending ``keys`` (ties: order)."""
    image, log_prob, finished, order, _ = candidates.table()
    ranked = np.lexsort((order, keys, image))
    starts = np.searchsorted(image[ranked], np.arange(n_images + 1))
    return [[candidates.hypothesis(int(i), float(scores[i]), float(log_prob[i]),
                                   bool(finished[i]), paths)
             for i in ranked[starts[b]:starts[b + 1]][:limit[b]]]
            for b in range(n_images)]


# ----------------------------------------------------------------------------- beam search


@dataclass
class _BeamSettings:
    beam_size: np.ndarray
    max_length: np.ndarray
    length_penalty: np.ndarray
    num_return: np.ndarray
    block_trigrams: np.ndarray

    @classmethod
    def parse(cls, n_images: int, beam_size: PerImage, max_length: PerImage,
              length_penalty: PerImage, num_return: PerImage, block_trigrams: PerImage
              ) -> _BeamSettings:
        beam = _ints("beam_size", beam_size, n_images, 1, MAX_BEAM_SIZE)
        num = _ints("num_return", num_return, n_images, 1)
        if (num > beam).any():
            raise ValueError(f"num_return must be <= beam_size, got {num[num > beam][0]} "
                             f"> {beam[num > beam][0]}")
        return cls(beam_size=beam,
                   max_length=_ints("max_length", max_length, n_images, 1),
                   length_penalty=_floats("length_penalty", length_penalty, n_images,
                                          0.0, np.inf),
                   num_return=num,
                   block_trigrams=_bools("block_trigrams", block_trigrams, n_images))


def _repeated_trigrams(prefix: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """True where appending ``candidates`` [N, C] to ``prefix`` [N, t] repeats a trigram.

    The new trigram is (y_{t-1}, y_t, c); it repeats when some earlier trigram
    (y_j, y_{j+1}, y_{j+2}) starts with the same two words and ends with c.
    Cost O(N * C * t) per step, vectorised.
    """
    t = prefix.shape[1]
    if t < 3:
        return np.zeros(candidates.shape, dtype=bool)
    same_start = ((prefix[:, :t - 2] == prefix[:, [t - 2]])
                  & (prefix[:, 1:t - 1] == prefix[:, [t - 1]]))
    banned = np.where(same_start, prefix[:, 2:], -1)  # [N, t-2]; -1 is never a token
    return (candidates[:, :, None] == banned[:, None, :]).any(axis=2)


def _candidate_columns(out: StepOutput, prefix: np.ndarray, block_rows: np.ndarray,
                       n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_cols`` step candidates per row, blocked trigrams set to -inf."""
    log_probs = out.log_probs[:, :n_cols].astype(np.float64)
    token_ids = out.token_ids[:, :n_cols].astype(np.int64)
    if block_rows.any():
        blocked = _repeated_trigrams(prefix, token_ids) & block_rows[:, None]
        log_probs = np.where(blocked, -np.inf, log_probs)
    return log_probs, token_ids


@dataclass
class _Selection:
    log_prob: np.ndarray  # [n, W] running log-prob of the new beams, -inf: dead
    parent: np.ndarray  # [n, W] beam (of the previous width) each new beam continues
    token: np.ndarray  # [n, W] token appended (eos on dead beams)
    done_image: np.ndarray  # [f] position in the batch of each hypothesis that emitted eos
    done_parent: np.ndarray  # [f] its beam
    done_log_prob: np.ndarray  # [f] its log-prob, eos included


def _select(beam_log_prob: np.ndarray, log_probs: np.ndarray, token_ids: np.ndarray,
            eos_id: int, beam_size: np.ndarray, width: int) -> _Selection:
    """One beam step for every image at once.

    Candidates of an image (its beams x columns) are ranked by running
    log-prob, ties broken by beam then column. Walking down that ranking, eos
    candidates are set aside as finished and other candidates become the new
    beams, until the image has ``beam_size`` new beams; -inf candidates (dead
    beams, blocked trigrams) are never taken. A beam contributes at most
    beam_size + 1 candidates before the walk stops, so any number of columns
    >= beam_size + 1 gives the same result as all K.
    """
    n, prev_width = beam_log_prob.shape
    n_cols = log_probs.shape[1]
    total = (beam_log_prob.reshape(-1, 1) + log_probs).reshape(n, prev_width * n_cols)
    order = np.argsort(-total, axis=1, kind="stable")
    total = np.take_along_axis(total, order, axis=1)
    token = np.take_along_axis(token_ids.reshape(n, -1), order, axis=1)
    valid = np.isfinite(total)
    is_eos = token == eos_id
    continuing = valid & ~is_eos
    n_continuing = np.cumsum(continuing, axis=1)  # inclusive count along the ranking
    limit = beam_size[:, None]
    taken = continuing & (n_continuing <= limit)
    ended = valid & is_eos & (n_continuing < limit)

    image, rank = np.nonzero(taken)
    slot = n_continuing[image, rank] - 1
    new_log_prob = np.full((n, width), -np.inf)
    new_parent = np.zeros((n, width), dtype=np.int64)
    new_token = np.full((n, width), eos_id, dtype=np.int64)
    new_log_prob[image, slot] = total[image, rank]
    new_parent[image, slot] = order[image, rank] // n_cols
    new_token[image, slot] = token[image, rank]

    done_image, done_rank = np.nonzero(ended)
    return _Selection(new_log_prob, new_parent, new_token, done_image,
                      order[done_image, done_rank] // n_cols, total[done_image, done_rank])


def beam_search(
    step: StepFn,
    init_state: Mapping[str, np.ndarray],
    context: Mapping[str, np.ndarray],
    *,
    bos_id: int,
    eos_id: int,
    beam_size: PerImage,
    max_length: PerImage,
    length_penalty: PerImage = 0.0,
    num_return: PerImage = 1,
    block_trigrams: PerImage = False,
    top_k: int,
) -> list[list[Hypothesis]]:
    """Batched beam search; one list of hypotheses per image, best score first.

    ``init_state`` and ``context`` hold one row per image; ``top_k`` is the
    step graph's K. ``beam_size`` (1..20), ``max_length``, ``length_penalty``
    (GNMT alpha >= 0), ``num_return`` (<= beam_size) and ``block_trigrams`` are
    scalars or one value per image.

    Each step ranks every beam's top min(K, 2 * beam_size) continuations
    (extended past blocked trigrams), sets eos continuations aside as finished
    and keeps the best beam_size others (see ``_select``). An image is done
    after ``max_length`` steps, when its live beams then join the candidates as
    unfinished, or earlier once it holds beam_size finished hypotheses or has
    no live beam left. Candidates of equal length compete on log-prob; the
    answer ranks them all by log_prob / lp(|Y|) (``gnmt_length_penalty``) and
    may hold fewer than num_return when fewer hypotheses exist. With
    block_trigrams, a continuation that would repeat a trigram of its
    hypothesis is removed. Beam size 1 is greedy decoding.
    """
    n_images = _batch_size(init_state, context)
    cfg = _BeamSettings.parse(n_images, beam_size, max_length, length_penalty, num_return,
                              block_trigrams)
    k = int(_ints("top_k", top_k, 1, 1)[0])
    if n_images == 0:
        return []
    width = int(cfg.beam_size.max())
    candidates, paths = _Candidates(), _Paths(n_images)
    active = np.arange(n_images)  # images still decoding; each owns `prev_width` rows
    beam_log_prob = np.zeros((n_images, 1))  # one live beam per image before the first step
    tokens = np.full(n_images, bos_id, dtype=np.int64)
    parents = np.arange(n_images)
    state, row_context = dict(init_state), dict(context)
    n_finished = np.zeros(n_images, dtype=np.int64)

    for t in range(int(cfg.max_length.max())):
        prev_width = beam_log_prob.shape[1]
        out = _call(step, tokens, parents, state, row_context, k)
        state = out.state
        paths.extras.append(out.extras)
        block_rows = np.repeat(cfg.block_trigrams[active], prev_width)
        n_cols = min(k, 2 * width + (t if block_rows.any() else 0))  # t bounds the blocked ones
        log_probs, token_ids = _candidate_columns(out, paths.tokens, block_rows, n_cols)
        sel = _select(beam_log_prob, log_probs, token_ids, eos_id, cfg.beam_size[active], width)

        done_rows = sel.done_image * prev_width + sel.done_parent
        candidates.add(active[sel.done_image], paths.tokens[done_rows],
                       paths.ending_here(done_rows), sel.done_log_prob, finished=True)
        n_finished += np.bincount(active[sel.done_image], minlength=n_images)

        next_parents = (np.arange(len(active))[:, None] * prev_width + sel.parent).ravel()
        paths.advance(next_parents, sel.token.ravel())
        live = np.isfinite(sel.log_prob)
        reached = cfg.max_length[active] == t + 1
        image, beam = np.nonzero(live & reached[:, None])
        rows = image * width + beam
        candidates.add(active[image], paths.tokens[rows], paths.rows[rows],
                       sel.log_prob[image, beam], finished=False)

        done = reached | (n_finished[active] >= cfg.beam_size[active]) | ~live.any(axis=1)
        if done.all():
            break
        keep_rows = np.repeat(~done, width)
        paths.keep(keep_rows)
        tokens, parents = sel.token[~done].ravel(), next_parents[keep_rows]
        beam_log_prob = sel.log_prob[~done]
        if done.any() or prev_width != width:
            active = active[~done]
            row_context = _rows(context, np.repeat(active, width))

    image, log_prob, finished, _, n_tokens = candidates.table()
    scores = log_prob / gnmt_length_penalty(n_tokens + finished, cfg.length_penalty[image])
    return _ranked(candidates, paths, n_images, -scores, scores, cfg.num_return)


def greedy(
    step: StepFn,
    init_state: Mapping[str, np.ndarray],
    context: Mapping[str, np.ndarray],
    *,
    bos_id: int,
    eos_id: int,
    max_length: PerImage,
    block_trigrams: PerImage = False,
    top_k: int,
) -> list[Hypothesis]:
    """Greedy decoding (beam search with beam size 1): one hypothesis per image."""
    results = beam_search(step, init_state, context, bos_id=bos_id, eos_id=eos_id,
                          beam_size=1, max_length=max_length, block_trigrams=block_trigrams,
                          top_k=top_k)
    return [hypotheses[0] for hypotheses in results]


# ----------------------------------------------------------------------------- sampling


@dataclass
class _SampleSettings:
    max_length: np.ndarray
    temperature: np.ndarray
    top_k: np.ndarray
    top_p: np.ndarray
    num_samples: np.ndarray

    @classmethod
    def parse(cls, n_images: int, max_length: PerImage, temperature: PerImage,
              top_k: PerImage, top_p: PerImage, num_samples: PerImage) -> _SampleSettings:
        return cls(max_length=_ints("max_length", max_length, n_images, 1),
                   temperature=_floats("temperature", temperature, n_images, 0.0, np.inf,
                                       low_inclusive=False),
                   top_k=_ints("top_k", top_k, n_images, 0),
                   top_p=_floats("top_p", top_p, n_images, 0.0, 1.0, low_inclusive=False),
                   num_samples=_ints("num_samples", num_samples, n_images, 1))


def _uniforms(seed: int | Sequence[int] | None, num_samples: np.ndarray,
              max_length: np.ndarray) -> np.ndarray:
    """Uniform draws [samples, steps]: one per sample and step, drawn before decoding.

    One seed per image gives each image its own generator, so its samples do
    not depend on the rest of the batch; a single seed (or None) feeds one
    generator for the whole batch.
    """
    steps = int(max_length.max()) if len(max_length) else 0
    if seed is None or isinstance(seed, int | np.integer):
        return np.random.default_rng(seed).random((int(num_samples.sum()), steps))
    seeds = list(seed) if isinstance(seed, Sequence | np.ndarray) else []
    if len(seeds) != len(num_samples) or not all(isinstance(s, int | np.integer) for s in seeds):
        raise ValueError(f"seed must be an int, one int per image ({len(num_samples)}) or "
                         f"None, got {seed!r}")
    draws = np.zeros((int(num_samples.sum()), steps))
    row = 0
    for s, n, length in zip(seeds, num_samples, max_length, strict=True):
        draws[row:row + n, :length] = np.random.default_rng(int(s)).random((n, length))
        row += n
    return draws


def _draw(log_probs: np.ndarray, temperature: np.ndarray, top_k: np.ndarray,
          top_p: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Column drawn per row from the step's K candidates (sorted descending).

    The K log-probs are divided by the temperature and renormalised, so with
    K < vocabulary size the distribution is the model's truncated to its K
    best tokens. Top-k keeps the first top_k columns (0: all); top-p keeps the
    smallest prefix whose probability reaches top_p (Holtzman et al. 2020,
    Eq. 2). The draw inverts the cumulative distribution at ``uniform``.
    """
    cols = np.arange(log_probs.shape[1])
    logits = log_probs.astype(np.float64) / temperature[:, None]
    logits = np.where((top_k[:, None] == 0) | (cols < top_k[:, None]), logits, -np.inf)
    peak = logits.max(axis=1, keepdims=True)
    probs = np.exp(logits - np.where(np.isfinite(peak), peak, 0.0))
    probs /= np.maximum(probs.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    before = np.cumsum(probs, axis=1) - probs
    probs = np.where(before < top_p[:, None], probs, 0.0)
    cdf = np.cumsum(probs, axis=1)
    drawn = (cdf < uniform[:, None] * cdf[:, -1:]).sum(axis=1)
    return np.minimum(drawn, log_probs.shape[1] - 1)


def draw_tokens(logits: np.ndarray, temperature: np.ndarray, top_k: np.ndarray,
                top_p: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Token id drawn per row from full-vocabulary logits [N, V], int64 [N].

    The same draw as ``sample`` makes from a step's sorted candidates: temperature,
    top-k (0: all) and top-p filtering, then the inverse of the cumulative distribution
    at ``uniform`` [N] (one value in [0, 1) per row); settings are one value per row.
    Ties between logits are broken by token id, so a row's draw depends on its own
    logits and uniform only.
    """
    order = np.argsort(-logits, axis=1, kind="stable")
    ranked = np.take_along_axis(logits, order, axis=1).astype(np.float64)
    peak = ranked[:, :1]
    log_probs = ranked - peak - np.log(np.exp(ranked - peak).sum(axis=1, keepdims=True))
    col = _draw(log_probs, temperature, top_k, top_p, uniform)
    return order[np.arange(len(order)), col].astype(np.int64)


def sample(
    step: StepFn,
    init_state: Mapping[str, np.ndarray],
    context: Mapping[str, np.ndarray],
    *,
    bos_id: int,
    eos_id: int,
    max_length: PerImage,
    temperature: PerImage = 1.0,
    top_k: PerImage = 0,
    top_p: PerImage = 1.0,
    num_samples: PerImage = 1,
    seed: int | Sequence[int] | None = None,
    graph_top_k: int,
) -> list[list[Hypothesis]]:
    """Ancestral sampling; per image ``num_samples`` hypotheses in the order drawn.

    Each token is drawn from the step's ``graph_top_k`` candidates with
    temperature, top-k and nucleus (top-p) filtering (see ``_draw``);
    ``top_k`` larger than the graph's K keeps all K. Settings are scalars or
    one value per image; ``seed`` is an int, one int per image, or None.
    ``log_prob`` sums the model's own (untempered) log-probabilities and
    ``score`` equals it. All samples of all images run as one batch.
    """
    n_images = _batch_size(init_state, context)
    cfg = _SampleSettings.parse(n_images, max_length, temperature, top_k, top_p, num_samples)
    k = int(_ints("graph_top_k", graph_top_k, 1, 1)[0])
    uniforms = _uniforms(seed, cfg.num_samples, cfg.max_length)
    if n_images == 0:
        return []
    row_image = np.repeat(np.arange(n_images), cfg.num_samples)
    first_sample = np.cumsum(cfg.num_samples) - cfg.num_samples
    candidates, paths = _Candidates(), _Paths(len(row_image))
    sample_ids = np.arange(len(row_image))  # which sample each row carries
    tokens = np.full(len(row_image), bos_id, dtype=np.int64)
    parents = row_image
    state, row_context = dict(init_state), _rows(context, row_image)
    log_prob = np.zeros(len(row_image))

    for t in range(uniforms.shape[1]):
        out = _call(step, tokens, parents, state, row_context, k)
        state = out.state
        paths.extras.append(out.extras)
        image = row_image[sample_ids]
        col = _draw(out.log_probs, cfg.temperature[image], cfg.top_k[image], cfg.top_p[image],
                    uniforms[sample_ids, t])
        rows = np.arange(len(sample_ids))
        drawn = out.token_ids[rows, col].astype(np.int64)
        log_prob[sample_ids] += out.log_probs[rows, col]

        ended = np.flatnonzero(drawn == eos_id)
        candidates.add(image[ended], paths.tokens[ended], paths.ending_here(ended),
                       log_prob[sample_ids[ended]], finished=True, order=sample_ids[ended])
        going = np.flatnonzero(drawn != eos_id)
        paths.advance(going, drawn[going])
        sample_ids = sample_ids[going]
        reached = np.flatnonzero(cfg.max_length[row_image[sample_ids]] == t + 1)
        candidates.add(row_image[sample_ids[reached]], paths.tokens[reached],
                       paths.rows[reached], log_prob[sample_ids[reached]], finished=False,
                       order=sample_ids[reached])

        keep = cfg.max_length[row_image[sample_ids]] > t + 1
        if not keep.any():
            break
        paths.keep(keep)
        if len(going) < len(drawn) or not keep.all():
            row_context = _rows(context, row_image[sample_ids[keep]])
        sample_ids, parents, tokens = sample_ids[keep], going[keep], drawn[going[keep]]

    image, log_prob, _, order, _ = candidates.table()
    return _ranked(candidates, paths, n_images, order - first_sample[image], log_prob,
                   cfg.num_samples)
