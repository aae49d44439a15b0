"""Beam search and sampling against brute-force references on a tiny random model.

`TableModel` is a NumPy step function over a few words whose next-token
distribution depends on the position, the token fed, a running hash of the
whole prefix kept in the recurrent state, and a per-image bias in the context.
A search that gathers states by the wrong parent, or feeds a row the wrong
context, therefore scores hypotheses wrongly. `TableModel.top` gives the same
distribution for one explicit prefix, which the plain-Python references use.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.decoding import (
    Hypothesis,
    StepOutput,
    beam_search,
    draw_tokens,
    gnmt_length_penalty,
    greedy,
    sample,
)

EOS = 0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(np.float32)


class TableModel:
    """Random next-token tables; token 0 is eos, 1..n_words are words, bos = vocab."""

    def __init__(self, *, n_words: int, n_images: int, k: int, seed: int,
                 max_steps: int = 12, n_hash: int = 11, scale: float = 1.5,
                 repeat_bias: float = 0.0, eos_bias: float = 0.0, ties: bool = False) -> None:
        rng = np.random.default_rng(seed)
        self.vocab = n_words + 1
        self.bos = self.vocab
        self.k = k
        self.n_hash = n_hash
        self.repeat_bias = repeat_bias
        self.table = rng.normal(scale=scale, size=(max_steps, self.vocab + 1, n_hash, self.vocab))
        if ties:  # few distinct logits: equal log-probs and equal running scores are common
            self.table = np.round(self.table)
        self.table[..., EOS] += eos_bias
        self.image_bias = rng.normal(size=(n_images, self.vocab))
        if ties:
            self.image_bias = np.round(self.image_bias)
        self.calls: list[int] = []

    # -- batched step function (the contract of service.decoding.StepFn)
    def init_state(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {"hash": (3 * images + 1) % self.n_hash,
                "pos": np.zeros(len(images), dtype=np.int64),
                "prev": np.full(len(images), self.bos, dtype=np.int64)}

    def context(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {"bias": self.image_bias[images]}

    def inputs(self, images) -> tuple[dict, dict]:
        images = np.asarray(images)
        return self.init_state(images), self.context(images)

    def _log_probs(self, pos, fed, prev, hashes, bias) -> np.ndarray:
        logits = self.table[pos, fed, hashes] + bias
        repeat = (np.arange(self.vocab) == prev[:, None]) * self.repeat_bias
        return log_softmax(logits + repeat)

    def _top(self, log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-log_probs, axis=1, kind="stable")[:, :self.k]
        return np.take_along_axis(log_probs, order, axis=1), order.astype(np.int64)

    def __call__(self, tokens, parents, state, context) -> StepOutput:
        self.calls.append(len(tokens))
        hashes, pos, prev = state["hash"][parents], state["pos"][parents], state["prev"][parents]
        log_probs = self._log_probs(pos, tokens, prev, hashes, context["bias"])
        top_lp, top_ids = self._top(log_probs)
        alpha = np.stack([pos, tokens, hashes], axis=1).astype(np.float32)
        new_state = {"hash": (hashes * 7 + tokens + 1) % self.n_hash, "pos": pos + 1,
                     "prev": tokens}
        return StepOutput(top_lp, top_ids, new_state, {"alpha": alpha})

    # -- the same model, one explicit prefix at a time
    def prefix_hash(self, image: int, prefix: list[int]) -> int:
        h = (3 * image + 1) % self.n_hash
        for tok in [self.bos, *prefix[:-1]] if prefix else []:
            h = (h * 7 + tok + 1) % self.n_hash
        return h

    def top(self, image: int, prefix: list[int]) -> list[tuple[int, float]]:
        """The step's K candidates (token, log-prob) after `prefix`, best first."""
        fed = ([self.bos] + prefix)[-1]
        prev = ([self.bos, self.bos] + prefix)[-2]
        log_probs = self._log_probs(np.array([len(prefix)]), np.array([fed]), np.array([prev]),
                                    np.array([self.prefix_hash(image, prefix)]),
                                    self.image_bias[[image]])
        top_lp, top_ids = self._top(log_probs)
        return [(int(t), float(lp)) for t, lp in zip(top_ids[0], top_lp[0], strict=True)]

    def log_prob(self, image: int, tokens: list[int]) -> float:
        total = 0.0
        for i, tok in enumerate(tokens):
            total += dict(self.top(image, tokens[:i]))[tok]
        return total


def score(log_prob: float, n_emitted: int, alpha: float) -> float:
    return log_prob / (((5 + n_emitted) ** alpha) / (6**alpha))


def repeats_trigram(prefix: list[int], tok: int) -> bool:
    seq = prefix + [tok]
    if len(seq) < 3:
        return False
    earlier = {tuple(prefix[j:j + 3]) for j in range(len(prefix) - 2)}
    return tuple(seq[-3:]) in earlier


def has_repeated_trigram(tokens: list[int]) -> bool:
    trigrams = [tuple(tokens[j:j + 3]) for j in range(len(tokens) - 2)]
    return len(trigrams) != len(set(trigrams))


# ----------------------------------------------------------------------------- references


def exhaustive_nbest(model: TableModel, image: int, max_length: int, alpha: float, n: int):
    """Every sequence the model can emit in max_length steps, ranked by score."""
    words = range(1, model.vocab)
    seqs = []
    for length in range(max_length):
        for prefix in itertools.product(words, repeat=length):
            lp = model.log_prob(image, [*prefix, EOS])
            seqs.append((list(prefix), lp, score(lp, length + 1, alpha), True))
    for prefix in itertools.product(words, repeat=max_length):
        lp = model.log_prob(image, list(prefix))
        seqs.append((list(prefix), lp, score(lp, max_length, alpha), False))
    return sorted(seqs, key=lambda s: -s[2])[:n]


def reference_greedy(model: TableModel, image: int, max_length: int):
    prefix, total = [], 0.0
    for _ in range(max_length):
        tok, lp = model.top(image, prefix)[0]
        total += lp
        if tok == EOS:
            return prefix, total, True
        prefix.append(tok)
    return prefix, total, False


def reference_beam(model: TableModel, image: int, *, beam_size: int, max_length: int,
                   alpha: float, num_return: int, block: bool):
    """Plain-Python beam search over all K candidates of every beam, one image."""
    beams: list[tuple[list[int], float]] = [([], 0.0)]
    pool: list[tuple[list[int], float, bool]] = []
    n_finished = 0
    for t in range(max_length):
        cands = []
        for b, (prefix, total) in enumerate(beams):
            for k, (tok, lp) in enumerate(model.top(image, prefix)):
                if block and repeats_trigram(prefix, tok):
                    continue
                cands.append((total + lp, b, k, prefix, tok))
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        beams = []
        for total, _, _, prefix, tok in cands:
            if len(beams) == beam_size:
                break
            if tok == EOS:
                pool.append((prefix, total, True))
                n_finished += 1
            else:
                beams.append((prefix + [tok], total))
        if t + 1 == max_length:
            pool += [(prefix, total, False) for prefix, total in beams]
            break
        if n_finished >= beam_size or not beams:
            break
    ranked = sorted(pool, key=lambda h: -score(h[1], len(h[0]) + h[2], alpha))
    return ranked[:num_return]


def as_tuples(hyps: list[Hypothesis]):
    return [(h.tokens, h.log_prob, h.score, h.finished) for h in hyps]


def assert_matches(got: list[Hypothesis], want, alpha: float) -> None:
    assert [(h.tokens, h.finished) for h in got] == [(w[0], w[-1]) for w in want]
    for h, (tokens, lp, *_rest) in zip(got, want, strict=True):
        assert h.log_prob == pytest.approx(lp, abs=1e-9)
        assert h.score == pytest.approx(score(lp, len(tokens) + h.finished, alpha), abs=1e-9)


# ----------------------------------------------------------------------------- beam search


@pytest.mark.parametrize(("n_words", "max_length", "beam"),
                         [(3, 3, 13), (3, 3, 20), (2, 4, 15), (4, 2, 5)])
@pytest.mark.parametrize("alpha", [0.0, 0.7, 2.0])
def test_wide_beam_returns_the_exhaustive_nbest(n_words, max_length, beam, alpha):
    # beam >= number of word prefixes that can still grow (1 + V + ... + V^(L-1))
    model = TableModel(n_words=n_words, n_images=3, k=n_words + 1, seed=n_words + max_length)
    results = beam_search(model, *model.inputs([0, 1, 2]), bos_id=model.bos, eos_id=EOS,
                          beam_size=beam, max_length=max_length, length_penalty=alpha,
                          num_return=beam, top_k=model.k)
    for image, got in enumerate(results):
        want = exhaustive_nbest(model, image, max_length, alpha, beam)
        assert len(got) == beam
        assert_matches(got, want, alpha)


@pytest.mark.parametrize("seed", range(4))
def test_beam_of_one_is_the_greedy_loop(seed):
    model = TableModel(n_words=5, n_images=4, k=3, seed=seed, eos_bias=0.5)
    inputs = model.inputs(range(4))
    searched = beam_search(model, *inputs, bos_id=model.bos, eos_id=EOS, beam_size=1,
                           max_length=6, top_k=model.k)
    greedy_hyps = greedy(model, *inputs, bos_id=model.bos, eos_id=EOS, max_length=6,
                         top_k=model.k)
    for image in range(4):
        tokens, lp, finished = reference_greedy(model, image, 6)
        assert len(searched[image]) == 1
        for hyp in (searched[image][0], greedy_hyps[image]):
            assert (hyp.tokens, hyp.finished) == (tokens, finished)
            assert hyp.log_prob == pytest.approx(lp, abs=1e-9)


@pytest.mark.parametrize("seed", range(120))
def test_beam_search_equals_the_reference_search(seed):
    rng = np.random.default_rng(1000 + seed)
    n_words = int(rng.integers(2, 8))
    k = int(rng.integers(1, n_words + 2))  # K from 1 to the whole vocabulary
    model = TableModel(n_words=n_words, n_images=3, k=k, seed=seed,
                       n_hash=int(rng.integers(3, 12)), scale=float(rng.choice([1.5, 4.0])),
                       repeat_bias=float(rng.choice([0.0, 2.5])), eos_bias=float(rng.normal()),
                       ties=bool(rng.integers(2)))
    beam = int(rng.integers(1, 8))
    max_length = int(rng.integers(1, 11))
    alpha = float(rng.choice([0.0, 0.6, 1.0]))
    num_return = int(rng.integers(1, beam + 1))
    block = bool(rng.integers(2))
    results = beam_search(model, *model.inputs([0, 1, 2]), bos_id=model.bos, eos_id=EOS,
                          beam_size=beam, max_length=max_length, length_penalty=alpha,
                          num_return=num_return, block_trigrams=block, top_k=k)
    for image, got in enumerate(results):
        want = reference_beam(model, image, beam_size=beam, max_length=max_length,
                              alpha=alpha, num_return=num_return, block=block)
        assert_matches(got, want, alpha)
        assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)


def test_each_image_of_a_mixed_batch_gets_its_solo_result():
    model = TableModel(n_words=5, n_images=6, k=6, seed=7, repeat_bias=2.0)
    settings = {"beam_size": [1, 3, 5, 2, 4, 20], "max_length": [3, 6, 4, 5, 2, 7],
                "length_penalty": [0.0, 0.6, 1.0, 0.0, 2.0, 0.8],
                "num_return": [1, 2, 5, 2, 3, 7],
                "block_trigrams": [False, True, False, True, False, True]}
    batch = beam_search(model, *model.inputs(range(6)), bos_id=model.bos, eos_id=EOS,
                        top_k=model.k, **{name: np.array(v) for name, v in settings.items()})
    for image in range(6):
        solo_settings = {name: v[image] for name, v in settings.items()}
        solo = beam_search(model, *model.inputs([image]), bos_id=model.bos, eos_id=EOS,
                           top_k=model.k, **solo_settings)[0]
        reference = reference_beam(model, image, beam_size=solo_settings["beam_size"],
                                   max_length=solo_settings["max_length"],
                                   alpha=solo_settings["length_penalty"],
                                   num_return=solo_settings["num_return"],
                                   block=solo_settings["block_trigrams"])
        assert as_tuples(batch[image]) == as_tuples(solo)
        assert len(batch[image]) == solo_settings["num_return"]
        assert_matches(batch[image], reference, solo_settings["length_penalty"])
        for got, alone in zip(batch[image], solo, strict=True):
            np.testing.assert_array_equal(got.extras["alpha"], alone.extras["alpha"])


def test_done_images_leave_the_running_batch():
    model = TableModel(n_words=4, n_images=3, k=5, seed=3, eos_bias=-3.0)
    beam_search(model, *model.inputs([0, 1, 2]), bos_id=model.bos, eos_id=EOS,
                beam_size=np.array([2, 3, 3]), max_length=np.array([1, 2, 4]), top_k=model.k)
    # first call: one row per image; then 3 beams for each image still decoding
    assert model.calls == [3, 6, 3, 3]


def test_trigram_blocking_removes_repeated_trigrams():
    model = TableModel(n_words=3, n_images=4, k=4, seed=11, repeat_bias=6.0, eos_bias=-9.0)
    inputs = model.inputs(range(4))
    kwargs = dict(bos_id=model.bos, eos_id=EOS, beam_size=3, max_length=8, num_return=3,
                  top_k=model.k)
    free = beam_search(model, *inputs, **kwargs)
    blocked = beam_search(model, *inputs, block_trigrams=True, **kwargs)
    assert all(has_repeated_trigram(h.tokens) for hyps in free for h in hyps)
    assert not any(has_repeated_trigram(h.tokens) for hyps in blocked for h in hyps)
    assert all(len(hyps) == 3 for hyps in blocked)


class ScriptedStep:
    """Ranks the next token by the last two words of the prefix (kept in the state)."""

    def __init__(self, rankings: dict[tuple[int, int], list[int]], default: list[int]) -> None:
        self.rankings, self.default = rankings, default
        self.bos = max(default) + 1

    def inputs(self, n_images: int, max_length: int) -> tuple[dict, dict]:
        return {"prefix": np.full((n_images, max_length + 1), self.bos)}, {}

    def __call__(self, tokens, parents, state, context) -> StepOutput:
        prefix = state["prefix"][parents].copy()
        prefix[:, :-1], prefix[:, -1] = prefix[:, 1:], tokens
        ranks = [self.rankings.get((int(a), int(b)), self.default) for a, b in prefix[:, -2:]]
        token_ids = np.array(ranks, dtype=np.int64)
        log_probs = np.log(np.full(token_ids.shape, 0.5) ** np.arange(1, token_ids.shape[1] + 1))
        return StepOutput(log_probs.astype(np.float32), token_ids, {"prefix": prefix})


def test_blocked_candidates_give_way_to_the_next_ones():
    # words 1..5, bos 6: the step starts 1, 2, then after (1, 2) prefers 3, 4, 5 in turn
    default = [2, 1, 3, 4, 5, EOS]
    rankings = {(6, 6): [1, 2, 3, 4, 5, EOS], (1, 2): [3, 4, 5, 1, 2, EOS],
                (2, 3): [1, 2, 3, 4, 5, EOS],
                (2, 4): [1, 2, 3, 4, 5, EOS], (3, 1): [2, 1, 3, 4, 5, EOS],
                (4, 1): [2, 1, 3, 4, 5, EOS], (2, 5): [EOS, 1, 2, 3, 4, 5]}
    step = ScriptedStep(rankings, default)
    kwargs = dict(bos_id=step.bos, eos_id=EOS, beam_size=1, max_length=10, top_k=6)
    [free] = beam_search(step, *step.inputs(1, 10), **kwargs)
    [blocked] = beam_search(step, *step.inputs(1, 10), block_trigrams=True, **kwargs)
    assert free[0].tokens == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    # (1, 2, 3) and then (1, 2, 4) are blocked: the third choice after (1, 2) is taken
    assert (blocked[0].tokens, blocked[0].finished) == ([1, 2, 3, 1, 2, 4, 1, 2, 5], True)


def test_extras_follow_the_path_of_each_hypothesis():
    model = TableModel(n_words=4, n_images=3, k=5, seed=5)
    results = beam_search(model, *model.inputs([0, 1, 2]), bos_id=model.bos, eos_id=EOS,
                          beam_size=4, max_length=5, num_return=4, top_k=model.k)
    n_unfinished = 0
    for image, hyps in enumerate(results):
        for hyp in hyps:
            steps = len(hyp.tokens) + hyp.finished
            n_unfinished += not hyp.finished
            want = [[j, ([model.bos] + hyp.tokens)[j], model.prefix_hash(image, hyp.tokens[:j])]
                    for j in range(steps)]
            np.testing.assert_array_equal(hyp.extras["alpha"], np.array(want, dtype=np.float32))
    assert n_unfinished > 0  # both kinds of path were checked


def test_gnmt_length_penalty():
    assert gnmt_length_penalty(5, 1.0) == pytest.approx(10 / 6)
    assert gnmt_length_penalty(7, 0.0) == 1.0
    np.testing.assert_allclose(gnmt_length_penalty(np.array([1, 3]), np.array([2.0, 0.5])),
                               [1.0, (8 / 6) ** 0.5])


def test_step_with_another_k_is_rejected():
    model = TableModel(n_words=3, n_images=1, k=3, seed=0)
    with pytest.raises(ValueError, match="top_k=4"):
        beam_search(model, *model.inputs([0]), bos_id=model.bos, eos_id=EOS, beam_size=2,
                    max_length=3, top_k=4)


@pytest.mark.parametrize(("override", "name"), [
    ({"beam_size": 0}, "beam_size"),
    ({"beam_size": 21}, "beam_size"),
    ({"beam_size": 2.5}, "beam_size"),
    ({"beam_size": np.array([2, 3, 4])}, "beam_size"),
    ({"max_length": 0}, "max_length"),
    ({"length_penalty": -0.5}, "length_penalty"),
    ({"length_penalty": float("nan")}, "length_penalty"),
    ({"num_return": 3}, "num_return"),
    ({"num_return": 0}, "num_return"),
    ({"block_trigrams": 1}, "block_trigrams"),
    ({"top_k": 0}, "top_k"),
])
def test_invalid_beam_arguments_name_the_argument(override, name):
    model = TableModel(n_words=3, n_images=2, k=4, seed=0)
    kwargs = dict(bos_id=model.bos, eos_id=EOS, beam_size=2, max_length=3, top_k=4) | override
    with pytest.raises(ValueError, match=name):
        beam_search(model, *model.inputs([0, 1]), **kwargs)


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_deterministic_given_the_seed():
    model = TableModel(n_words=5, n_images=3, k=6, seed=2)
    inputs = model.inputs([0, 1, 2])
    kwargs = dict(bos_id=model.bos, eos_id=EOS, max_length=6, num_samples=4, graph_top_k=6)
    first = sample(model, *inputs, seed=123, **kwargs)
    again = sample(model, *inputs, seed=123, **kwargs)
    other = sample(model, *inputs, seed=124, **kwargs)
    assert [as_tuples(h) for h in first] == [as_tuples(h) for h in again]
    assert [as_tuples(h) for h in first] != [as_tuples(h) for h in other]
    assert [len(h) for h in first] == [4, 4, 4]
    for image, hyps in enumerate(first):
        for hyp in hyps:
            emitted = hyp.tokens + [EOS] * hyp.finished
            assert hyp.log_prob == pytest.approx(model.log_prob(image, emitted), abs=1e-9)
            assert hyp.score == hyp.log_prob
            assert len(hyp.extras["alpha"]) == len(emitted)
            assert hyp.finished or len(hyp.tokens) == 6


@pytest.mark.parametrize("filtering", [{"top_k": 1}, {"top_p": 1e-9}])
def test_sampling_with_one_candidate_is_greedy(filtering):
    model = TableModel(n_words=5, n_images=3, k=4, seed=9, eos_bias=0.5)
    inputs = model.inputs([0, 1, 2])
    samples = sample(model, *inputs, bos_id=model.bos, eos_id=EOS, max_length=7, num_samples=3,
                     temperature=2.0, seed=0, graph_top_k=4, **filtering)
    best = greedy(model, *inputs, bos_id=model.bos, eos_id=EOS, max_length=7, top_k=4)
    for image in range(3):
        want = (best[image].tokens, best[image].log_prob, best[image].finished)
        assert [(h.tokens, h.log_prob, h.finished) for h in samples[image]] == [want] * 3


def filtered_distribution(log_probs: np.ndarray, temperature: float, top_k: int,
                          top_p: float) -> np.ndarray:
    p = np.exp(log_probs / temperature)
    p /= p.sum()
    if top_k:
        p[top_k:] = 0.0
        p /= p.sum()
    keep = [i for i in range(len(p)) if p[:i].sum() < top_p]
    p[len(keep):] = 0.0
    return p / p.sum()


@pytest.mark.parametrize(("temperature", "top_k", "top_p"),
                         [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.5, 3, 1.0), (1.0, 0, 0.7)])
def test_first_token_frequencies_follow_the_step_distribution(temperature, top_k, top_p):
    model = TableModel(n_words=6, n_images=1, k=5, seed=4)  # K=5 < vocabulary of 7
    samples = sample(model, *model.inputs([0]), bos_id=model.bos, eos_id=EOS, max_length=1,
                     temperature=temperature, top_k=top_k, top_p=top_p, num_samples=4000,
                     seed=1, graph_top_k=model.k)[0]
    candidates = model.top(0, [])
    firsts = [h.tokens[0] if h.tokens else EOS for h in samples]
    freq = np.array([firsts.count(tok) for tok, _ in candidates]) / len(firsts)
    want = filtered_distribution(np.array([lp for _, lp in candidates]), temperature, top_k,
                                 top_p)
    assert freq.sum() == pytest.approx(1.0)  # nothing outside the graph's K
    np.testing.assert_allclose(freq, want, atol=0.03)


def test_nucleus_is_the_smallest_prefix_reaching_top_p():
    def uniform_step(tokens, parents, state, context) -> StepOutput:
        log_probs = np.full((len(tokens), 4), np.log(0.25), dtype=np.float32)
        return StepOutput(log_probs, np.tile(np.arange(1, 5), (len(tokens), 1)), {})

    context = {"image": np.zeros(1)}
    for top_p, kept in [(0.5, {1, 2}), (0.51, {1, 2, 3}), (1.0, {1, 2, 3, 4})]:
        samples = sample(uniform_step, {}, context, bos_id=5, eos_id=EOS, max_length=1,
                         top_p=top_p, num_samples=400, seed=0, graph_top_k=4)[0]
        firsts = [h.tokens[0] for h in samples]
        assert set(firsts) == kept
        assert min(firsts.count(t) for t in kept) > 400 / len(kept) * 0.7


def test_per_image_seeds_make_samples_independent_of_the_batch():
    model = TableModel(n_words=4, n_images=3, k=5, seed=6)
    batch = sample(model, *model.inputs([0, 1, 2]), bos_id=model.bos, eos_id=EOS,
                   max_length=np.array([3, 5, 4]), temperature=np.array([1.0, 0.5, 2.0]),
                   num_samples=np.array([2, 1, 3]), seed=[10, 11, 12], graph_top_k=5)
    for image, (max_length, temperature, n, seed) in enumerate(
            [(3, 1.0, 2, 10), (5, 0.5, 1, 11), (4, 2.0, 3, 12)]):
        solo = sample(model, *model.inputs([image]), bos_id=model.bos, eos_id=EOS,
                      max_length=max_length, temperature=temperature, num_samples=n,
                      seed=[seed], graph_top_k=5)[0]
        assert as_tuples(batch[image]) == as_tuples(solo)
        assert len(solo) == n


@pytest.mark.parametrize(("override", "name"), [
    ({"temperature": 0.0}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"num_samples": 0}, "num_samples"),
    ({"max_length": 0}, "max_length"),
    ({"graph_top_k": 0}, "graph_top_k"),
    ({"seed": [1, 2, 3]}, "seed"),
    ({"seed": 1.5}, "seed"),
])
def test_invalid_sampling_arguments_name_the_argument(override, name):
    model = TableModel(n_words=3, n_images=2, k=4, seed=0)
    kwargs = dict(bos_id=model.bos, eos_id=EOS, max_length=3, graph_top_k=4) | override
    with pytest.raises(ValueError, match=name):
        sample(model, *model.inputs([0, 1]), **kwargs)


# ---------------------------------------------------------------------------- draw_tokens


def draw_settings(rows: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    return np.full(rows, temperature), np.full(rows, top_k), np.full(rows, top_p)


def test_draw_tokens_inverts_the_cumulative_distribution_over_the_vocabulary():
    # probabilities 0.1, 0.2, 0.3, 0.4 of tokens 0..3, presented unsorted
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    # Sorted descending: token 3 takes [0, 0.4), token 2 [0.4, 0.7), 1 [0.7, 0.9), 0 the rest.
    for u, token in [(0.0, 3), (0.39, 3), (0.41, 2), (0.69, 2), (0.71, 1), (0.95, 0)]:
        assert draw_tokens(logits, *draw_settings(1), np.array([u])).tolist() == [token]


def test_draw_tokens_filters_like_sampling():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]] * 3))
    u = np.full(3, 0.99)  # the least likely token that survives the filter
    assert draw_tokens(logits, *draw_settings(3, top_k=2), u).tolist() == [2, 2, 2]
    assert draw_tokens(logits, *draw_settings(3, top_p=0.65), u).tolist() == [2, 2, 2]
    assert draw_tokens(logits, *draw_settings(3, top_k=1), u).tolist() == [3, 3, 3]
    assert draw_tokens(logits, *draw_settings(3, top_k=99), u).tolist() == [0, 0, 0]
    # A low temperature concentrates the mass on the best token.
    assert draw_tokens(logits, *draw_settings(3, temperature=0.01), u).tolist() == [3, 3, 3]


def test_draw_tokens_is_row_independent_and_breaks_ties_by_id():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 9))
    logits[0] = 0.0  # a row of ties: the draw orders tokens by id
    uniform = rng.random(6)
    together = draw_tokens(logits, *draw_settings(6, 0.8, 5, 0.9), uniform)
    alone = [draw_tokens(logits[i:i + 1], *draw_settings(1, 0.8, 5, 0.9), uniform[i:i + 1])[0]
             for i in range(6)]
    assert together.tolist() == alone
    assert draw_tokens(logits[:1], *draw_settings(1), np.array([0.05])).tolist() == [0]
