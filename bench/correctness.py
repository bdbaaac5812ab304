"""Does the model still compute what it should? A fixed English text (the probe, shipped with bench)
is scored teacher-forced by the run's runtime and by a reference: the same model file on the host's
CPU through llama-cpp-python. At each position the runtime gives its most likely next token and the
log-probability of the probe's real next token.

Two statistics tell an honest floating-point difference (another kernel, repacked weights, a GPU's
fp16) from a broken backend:

- top-1 agreement: of the positions where the reference is decisive (its most likely token beats
  the second by at least DECISIVE_MARGIN_NATS), the share where the runtime's most likely token is
  the reference's. Rounding flips near-ties, which are left out; a broken backend misses decisive ones.
- perplexity ratio: the runtime's perplexity of the probe / the reference's. Rounding moves it by
  far less than a percent; garbage moves it by orders of magnitude.

And one check of the model file itself, which the reference shares: a language model predicts plain
English far better than chance. A reference perplexity above vocab ** MAX_CHANCE_FRACTION means the
file computes nothing like language (a corrupted tensor with its header intact): the verdict says the
model, not the runtime, is broken.

Pure: scores in, a verdict and its record out. The runtimes compute scores; the runner records."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
PROBE_PATH = Path(__file__).parent / "data" / "correctness_probe.txt"
DECISIVE_MARGIN_NATS = 0.5    # the reference's top token at least e^0.5 = 1.65x as likely as its second
MIN_DECISIVE = 10              # fewer decisive positions: agreement is not judged
MIN_AGREEMENT = 0.90
MAX_LOG_PERPLEXITY_RATIO = 0.10  # |ln(ppl / ppl_ref)|: within about 10%
MAX_CHANCE_FRACTION = 0.75       # ln(ppl_ref) / ln(vocab): 0 = certain, 1 = a uniform guess
UNSCORED_LOGPROB = -30.0         # a position whose target the runtime could not score (NaN, -inf)
STATISTIC = ("teacher-forced top-1 agreement on the reference's decisive positions, and the probe's "
             "perplexity against the reference's")


def probe_text() -> str:
    return PROBE_PATH.read_text(encoding="utf-8").strip()


def probe_sha256() -> str:
    return hashlib.sha256(probe_text().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Position:
    """What a runtime says at one position k of the probe (predicting token k from tokens 0..k-1)."""
    top: int                      # its most likely next token
    target_logprob: float | None  # ln p(the probe's token k); None when it could not be scored
    margin: float | None = None   # ln p(top) - ln p(second): the reference's, to tell decisive positions


@dataclass(frozen=True)
class Scores:
    tokens: tuple[int, ...]        # the probe's tokens; token 0 (BOS) is context only
    positions: tuple[Position, ...]  # positions[i] predicts tokens[i + 1]
    vocab: int
    source: str                    # what computed them, in words

    def logprobs(self) -> list[float]:
        return [p.target_logprob if p.target_logprob is not None and math.isfinite(p.target_logprob)
                else UNSCORED_LOGPROB for p in self.positions]

    def perplexity(self) -> float:
        values = self.logprobs()
        return math.exp(-sum(values) / len(values))

    def as_record(self) -> dict:
        return {"tokens": list(self.tokens), "vocab": self.vocab, "source": self.source,
                "positions": [[p.top, p.target_logprob, p.margin] for p in self.positions]}

    @classmethod
    def from_record(cls, record: dict) -> "Scores":
        return cls(tuple(record["tokens"]), tuple(Position(*item) for item in record["positions"]),
                   int(record["vocab"]), str(record["source"]))


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str | None
    agreement: float | None
    decisive: int
    perplexity: float
    reference_perplexity: float
    log_perplexity_ratio: float
    chance_fraction: float
    disagreements: tuple[dict, ...]


def evaluate(run: Scores, reference: Scores) -> Verdict:
    if run.tokens != reference.tokens or len(run.positions) != len(reference.positions):
        raise ValueError("the run's and the reference's scores are of different token sequences")
    decisive = [i for i, p in enumerate(reference.positions) if p.margin is not None and p.margin >= DECISIVE_MARGIN_NATS]
    missed = [i for i in decisive if run.positions[i].top != reference.positions[i].top]
    agreement = 1 - len(missed) / len(decisive) if len(decisive) >= MIN_DECISIVE else None
    perplexity, reference_perplexity = run.perplexity(), reference.perplexity()
    log_ratio = math.log(perplexity) - math.log(reference_perplexity)
    chance = math.log(reference_perplexity) / math.log(reference.vocab)
    if chance > MAX_CHANCE_FRACTION:
        reason = (f"the model file itself is broken: on the host's CPU it predicts bench's English probe at "
                  f"perplexity {reference_perplexity:,.0f}, near chance for its {reference.vocab:,} tokens (a "
                  f"working model is far below {reference.vocab ** MAX_CHANCE_FRACTION:,.0f}); download it again")
    elif agreement is not None and agreement < MIN_AGREEMENT:
        reason = (f"the runtime's most likely next token differs from the host CPU reference's at {len(missed)} of "
                  f"{len(decisive)} positions where the reference is sure (agreement {agreement:.0%}, at least "
                  f"{MIN_AGREEMENT:.0%} expected): it computes something else")
    elif abs(log_ratio) > MAX_LOG_PERPLEXITY_RATIO:
        reason = (f"the probe's perplexity is {perplexity:,.2f} against the host CPU reference's "
                  f"{reference_perplexity:,.2f} ({math.exp(log_ratio) - 1:+.0%}; within "
                  f"±{math.exp(MAX_LOG_PERPLEXITY_RATIO) - 1:.0%} expected): it computes something else")
    else:
        reason = None
    return Verdict(reason is None, reason, agreement, len(decisive), perplexity, reference_perplexity, log_ratio,
                   chance, tuple({"position": i + 1, "runtime_top": run.positions[i].top,
                                  "reference_top": reference.positions[i].top,
                                  "reference_margin": round(reference.positions[i].margin, 3)} for i in missed[:10]))


def record(verdict: Verdict, reference: Scores, *, runtime: str, seconds: float, reference_cached: bool,
           reference_seconds: float = 0.0) -> dict:
    """run.json's `correctness`. `seconds`: the probe on the runtime; `reference_seconds`: computing
    the reference on the host (0 when cached)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "statistic": STATISTIC,
        "probe": {"file": PROBE_PATH.name, "sha256": probe_sha256(), "tokens": len(reference.tokens),
                  "positions": len(reference.positions)},
        "runtime": runtime,
        "reference": {"source": reference.source, "perplexity": round(verdict.reference_perplexity, 4),
                      "cached": reference_cached, "seconds": round(reference_seconds, 3)},
        "value": {"top1_agreement": None if verdict.agreement is None else round(verdict.agreement, 4),
                  "decisive_positions": verdict.decisive, "perplexity": round(verdict.perplexity, 4),
                  "perplexity_ratio": round(math.exp(verdict.log_perplexity_ratio), 4),
                  "chance_fraction": round(verdict.chance_fraction, 4)},
        "threshold": {"top1_agreement": MIN_AGREEMENT, "decisive_margin_nats": DECISIVE_MARGIN_NATS,
                      "perplexity_ratio": [round(math.exp(-MAX_LOG_PERPLEXITY_RATIO), 4),
                                           round(math.exp(MAX_LOG_PERPLEXITY_RATIO), 4)],
                      "chance_fraction": MAX_CHANCE_FRACTION},
        "verdict": "pass" if verdict.passed else "fail",
        "reason": verdict.reason,
        "disagreements": list(verdict.disagreements),
        "seconds": round(seconds, 3),
    }


def skipped(why: str) -> dict:
    return {"schema_version": SCHEMA_VERSION, "verdict": "skipped", "reason": why}


def unchecked(why: str, seconds: float) -> dict:
    """The probe itself failed (the runtime died, the device went away): nothing is known either way."""
    return {"schema_version": SCHEMA_VERSION, "verdict": "error", "reason": why, "seconds": round(seconds, 3)}
