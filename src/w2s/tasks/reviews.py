"""The reviews task: instructions "Write a short review of {topic}." and a gold that a fluent answer must earn.

The guides are steered toward positive sentiment, which a small model can game with word salad (the
Austen guides did: ``## The controlled-sentiment experiment``).  So the gold has two columns, a gate and a
combination, all fixed outside any run (written down on 2026-12-03, before the committed answers were
rescored with it):

- ``vader``: VADER's compound score of the response, in [-1, 1].
- ``fluency``: the mean per-token log-likelihood of the response under Gemma-3-270M (base), a model that
  takes no part in generation or guidance, after the instruction (``{instruction}\n\n``).
- the **gate** (:func:`w2s.tasks.quality.non_answer`): a refusal ("I'm sorry, but I can't ..."), an AI
  disclaimer ("As an AI language model, I don't have personal experiences ...") or a question back
  ("Could you please tell me which one?") is not a review.
- ``combined`` = 0 for a non-answer, else ``vader - max(0, FLUENCY_FLOOR - fluency)``: VADER while the
  response is about as fluent as a plain human-written review, minus one per nat/token below that.
  :data:`FLUENCY_FLOOR` is a constant: the 10th percentile, rounded to 2 decimals, of Gemma-3-270M's
  fluency on :data:`REFERENCE_FILE`, 40 plain short reviews of training topics written for this project
  (part of no evaluation; ``tests/test_eval_reviews.py``'s slow test recomputes it).  So the same text gets
  the same gold in every run.

The earlier gold (the floor being the base run's own 10th percentile, no gate) is kept as
:func:`pair_reward`: it labelled the shipped tuned guide's preference pairs, so the tuned guide was trained
on that old VADER + fluency reward, and the tables say so.

Topics: :data:`TRAINING_TOPICS` build the guides' preference pairs, :data:`HELDOUT_TOPICS` are evaluated.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Sequence

from .quality import non_answer
from .sentiment import gold_reward as vader

REVIEW = "Write a short review of {topic}."
# the guides' training instructions: the evaluated form and three others over the training topics
TRAINING_FORMS = (REVIEW, "Write a short story about {topic}.", "Describe a visit to {topic}.",
                  "Tell a friend what you think of {topic}.")
FLUENCY_CONTEXT = "{instruction}\n\n"  # what the fluency model reads the response after
FLOOR_PERCENTILE = 10
# the combined gold's fluency floor (nats/token): the FLOOR_PERCENTILE-th percentile of Gemma-3-270M's fluency
# on the reference reviews (REFERENCE_FILE), rounded to 2 decimals; `reference_floor` recomputes it
FLUENCY_FLOOR = -3.64
REFERENCE_FILE = "reference_reviews.json"  # in w2s/tasks/data: hand-written reviews of training topics

TRAINING_TOPICS = (
    "a neighbourhood bakery", "a cheap pair of headphones", "a science museum", "a mystery novel", "a city bus line",
    "a pizza restaurant", "a yoga class", "a camping tent", "a video game about farming", "a coffee shop",
    "a public library", "a budget hotel", "a cooking class", "a football match", "a used car dealer",
    "a rock concert", "a hiking trail", "a dentist's office", "a ferry ride", "a board game",
    "a winter coat", "a thai restaurant", "a language app", "a kitchen blender", "a jazz album",
    "a theme park", "a bicycle shop", "a train journey", "a children's book", "a documentary about oceans",
    "a hair salon", "a night market", "a smartphone", "a swimming pool", "a comedy show",
    "a botanical garden", "a sushi bar", "a laptop bag", "a history podcast", "a gym",
    "a folk festival", "a car wash", "a pet shop", "a sci-fi film", "a farmers' market",
    "a ski resort", "an airport lounge", "a vegetarian cookbook", "a running shoe", "a zoo",
    "a street food stall", "a ballet performance", "a desk lamp", "a tea house", "a mobile game",
    "a bookshop", "a beach resort", "a photography course", "a fitness tracker", "a wine bar",
    "a local newspaper", "a garden centre", "a horror film", "a taxi service", "a bowling alley",
    "a violin teacher", "an ice cream parlour", "a backpack", "a planetarium", "a pottery workshop",
    "a cinema", "a fishing trip", "a noodle shop", "a crime series", "a dog park",
    "a music festival", "an electric kettle", "a castle tour", "a burger joint", "a poetry reading",
)
HELDOUT_TOPICS = (
    "a seaside café", "a wireless keyboard", "an art gallery", "a fantasy novel", "a hostel",
    "an italian restaurant", "a dance class", "a sleeping bag", "a puzzle game", "a bakery chain",
    "a farm stay", "a boat tour", "a cookbook for beginners", "a basketball game", "a shopping mall",
    "an opera", "a mountain cabin", "a vet clinic", "a road trip", "a card game",
    "a rain jacket", "a mexican restaurant", "a meditation app", "a toaster",
)


def review_instructions(topics: Sequence[str] = HELDOUT_TOPICS) -> list[str]:
    """The evaluated instructions: one review per topic."""
    return [REVIEW.format(topic=t) for t in topics]


def training_instructions(topics: Sequence[str] = TRAINING_TOPICS) -> list[str]:
    """The guides' training instructions: each of :data:`TRAINING_FORMS` per training topic."""
    return [form.format(topic=t) for t in topics for form in TRAINING_FORMS]


class Fluency:
    """Mean per-token log-likelihood of responses under a model that takes no part in generation
    (Gemma-3-270M: ``w2s setup gemma-3-270m``), after :data:`FLUENCY_CONTEXT`.

    Args:
        model: a local :class:`w2s.TransformersModel`.
        batch_size: texts per forward pass.  Gemma's logits are 262k wide (1 MB per token in float32), so
            a forward of ``batch_size`` answers of 64 tokens holds ``batch_size * 64`` MB of them.
    """

    def __init__(self, model, batch_size: int = 8):
        self.model, self.batch_size = model, batch_size
        self._logprobs = model.response_logprobs("{prompt}", incremental=False, batch_size=batch_size)

    def __call__(self, instructions: Sequence[str], responses: Sequence[str]) -> list[float]:
        contexts = [FLUENCY_CONTEXT.format(instruction=i) for i in instructions]
        sums = []
        for k in range(0, len(responses), self.batch_size):  # answers to one instruction are one forward's rows
            sums += self._logprobs(contexts[k : k + self.batch_size], list(responses[k : k + self.batch_size]),
                                   [False] * len(responses[k : k + self.batch_size]))
        counts = [len(ids) for ids in self.model.encode_many(list(responses))]
        return [s / n if n else float("-inf") for s, n in zip(sums, counts)]


def fluency_floor(base_fluency: Sequence[float]) -> float:
    """The :data:`FLOOR_PERCENTILE`-th percentile of ``base_fluency`` (the finite values): the floor
    :func:`pair_reward` takes from each batch of samples, and :func:`reference_floor` from the reference set."""
    import numpy as np

    finite = [f for f in base_fluency if f == f and f != float("-inf")]
    if not finite:
        raise ValueError("base_fluency has no finite fluency score to set the floor from.")
    return float(np.percentile(finite, FLOOR_PERCENTILE))


def reference_reviews() -> list[dict]:
    """The reference set of :data:`FLUENCY_FLOOR`: ``{"topic", "review"}`` records (training topics only)."""
    text = resources.files("w2s.tasks").joinpath("data", REFERENCE_FILE).read_text(encoding="utf-8")
    return json.loads(text)["reviews"]


def reference_floor(fluency: "Fluency") -> float:
    """:data:`FLUENCY_FLOOR` recomputed: the :data:`FLOOR_PERCENTILE`-th percentile of ``fluency`` (Gemma-3-270M's)
    on :func:`reference_reviews`, each after its instruction, rounded to 2 decimals."""
    refs = reference_reviews()
    scores = fluency([REVIEW.format(topic=r["topic"]) for r in refs], [r["review"] for r in refs])
    return round(fluency_floor(scores), 2)


def combined(vader_score: float, fluency: float, floor: float = FLUENCY_FLOOR, gated: str | None = None) -> float:
    """VADER, less one per nat/token of fluency below ``floor``; 0 when ``gated`` names a non-answer kind
    (see the module docstring)."""
    if gated is not None and gated not in ("refusal", "disclaimer", "question"):
        raise ValueError(f"gated must be None or a non-answer kind (refusal, disclaimer, question), got {gated!r}.")
    return 0.0 if gated else vader_score - max(0.0, floor - fluency)


def gold_of(record: dict) -> float:
    """The combined gold of one raw record (``response``, ``vader``, ``fluency``): gate, then floor."""
    return combined(record["vader"], record["fluency"], FLUENCY_FLOOR, non_answer(record["response"]))


def gold(instructions: Sequence[str], responses: Sequence[str], fluency: Fluency) -> list[dict]:
    """``{"vader", "fluency"}`` per response (:func:`gold_of` combines them with the gate)."""
    return [{"vader": vader(r), "fluency": f} for r, f in zip(responses, fluency(instructions, responses))]


FLUENCY_MODEL = "gemma-3-270m"


def pair_reward(fluency_model: str = FLUENCY_MODEL):
    """The reward that labelled the shipped tuned guide's preference pairs (the *old* gold, kept as it was:
    the guide was trained on it): VADER less the fluency penalty, each batch of samples taking its floor
    from its own fluency (the samples are the untuned base's, the role the base row had in an evaluation),
    no gate.  A batch is the same on a resumed run, so the labels are too."""
    from ..models import ModelSpec, load

    fluency = Fluency(load(ModelSpec(fluency_model)).model)

    def reward(instructions: list[str], responses: list[str]) -> list[float]:
        scores = gold(instructions, responses, fluency)
        floor = fluency_floor([s["fluency"] for s in scores])
        return [combined(s["vader"], s["fluency"], floor) for s in scores]

    return reward
