"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, by coco-caption's scorers.

The scores come from pycocoevalcap (the Python 3 packaging of coco-caption),
the code behind the published COCO caption numbers:

- BLEU-n (Papineni et al. 2002): `Bleu(4)`, corpus-level, "closest" reference length.
- ROUGE-L (Lin 2004): `Rouge`, LCS F-measure with beta = 1.2, mean over images.
- CIDEr-D (Vedantam et al. 2015, Sec. 5): `Cider`. Its scorer is the CIDEr-D
  variant, not plain CIDEr: n-gram counts of the candidate are clipped to the
  reference's (`min(vec_hyp, vec_ref)`), a Gaussian penalty
  exp(-(l_c - l_r)^2 / (2 sigma^2)) with sigma = 6 punishes length differences,
  and the score is scaled by 10. Document frequencies come from the evaluated
  images' references, so CIDEr-D of a single image is 0 by construction.
- METEOR 1.5 (Denkowski & Lavie 2014): `Meteor`, which runs a Java process; it is
  optional (see `meteor_status`).

coco-caption tokenises with Stanford's PTBTokenizer (Java + CoreNLP jar) and then
drops punctuation; glimpse gives the scorers text tokenised by
`training.data.tokenizer.tokenize` instead (lowercase, punctuation removed,
whitespace split), the same pre-processing its vocabularies are built with.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from training.data.tokenizer import tokenize

logger = logging.getLogger(__name__)


def meteor_status() -> tuple[bool, str | None]:
    """(whether METEOR can run here, why not): it needs `java` on PATH and the jar."""
    import pycocoevalcap.meteor.meteor as meteor_module

    jar = Path(meteor_module.__file__).with_name(meteor_module.METEOR_JAR)
    if shutil.which("java") is None:
        return False, "METEOR skipped: no 'java' on PATH (METEOR 1.5 is a Java program)"
    if not jar.is_file():
        return False, f"METEOR skipped: {jar} is missing"
    return True, None


def _prepare(results: Mapping[int, str], references: Mapping[int, Sequence[str]],
             ) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    if not results:
        raise ValueError("no captions to score")
    if set(results) != set(references):
        extra = sorted(set(results) - set(references))
        missing = sorted(set(references) - set(results))
        raise ValueError(f"results and references differ: {len(extra)} image(s) without "
                         f"references (e.g. {extra[:5]}), {len(missing)} without a result "
                         f"(e.g. {missing[:5]})")
    res, gts = {}, {}
    for image_id in sorted(results):
        refs = references[image_id]
        if not refs:
            raise ValueError(f"image {image_id} has no reference captions")
        res[image_id] = [" ".join(tokenize(results[image_id]))]
        gts[image_id] = [" ".join(tokenize(r)) for r in refs]
    return res, gts


def caption_metrics(results: Mapping[int, str], references: Mapping[int, Sequence[str]], *,
                    meteor: bool | None = None) -> dict:
    """Score one caption per image against that image's reference captions.

    meteor: None runs METEOR when it can (java present; it takes several
    seconds to start), False skips it, True requires it. When skipped, the
    result has "meteor": None and "meteor_note" says why.

    Returns bleu_1..bleu_4, meteor, rouge_l, cider_d (fractions in [0, 1]
    except CIDEr-D, which is in [0, 10]) and n_images.
    """
    res, gts = _prepare(results, references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores: dict = {f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores["meteor"], note = _meteor(gts, res, meteor)
    if note is not None:
        scores["meteor_note"] = note
    scores["rouge_l"] = float(rouge)
    scores["cider_d"] = float(cider)
    scores["n_images"] = len(res)
    return scores


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]],
            wanted: bool | None) -> tuple[float | None, str | None]:
    if wanted is False:
        return None, "METEOR skipped: disabled"
    available, why = meteor_status()
    if not available:
        if wanted:
            raise RuntimeError(why)
        return None, why
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        score, _ = Meteor().compute_score(gts, res)
    except (OSError, ValueError) as e:
        # The jar answers on a pipe; a JVM that fails to start answers nothing.
        if wanted:
            raise RuntimeError(f"METEOR failed to run: {e}") from e
        logger.warning("METEOR failed to run: %s", e)
        return None, f"METEOR skipped: the Java process failed ({e})"
    return float(score), None
