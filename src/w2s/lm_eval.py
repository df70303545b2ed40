"""lm-evaluation-harness's ``w2s`` model: any of its tasks through weak-to-strong search.

``w2s lm-eval --model w2s --model_args strong=PATH,tuned=PATH,untuned=PATH,method=cbs,beam_width=2 --tasks ...``
(the harness's own command line, run by :mod:`w2s.cli.lm_eval` after registering :class:`W2SLM`; lm-eval
0.4.13 finds no model of another package by itself).  From Python, importing this module registers the
model: ``import w2s.lm_eval; lm_eval.simple_evaluate(model="w2s", model_args={...}, tasks=[...])``.

**model_args** (lm-eval hands them over as ``key=value`` text, or values it parsed from it; each is converted
to the type its w2s config declares, so that a bad one is w2s's error naming the parameter):

- the models, as :class:`w2s.ModelSpec` names their fields: ``strong``, ``tuned``, ``untuned`` (anything
  ``w2s.load_model`` takes, ``w2s:`` names too; a guide left out is the default one), ``template`` (the strong
  model's; also ``strong_template``), ``tuned_template``, ``untuned_template``, ``dtype`` (and
  ``strong_dtype``...), ``device``, ``device_map``, ``max_memory``, ``max_tokens_per_forward``, and for a
  strong model behind an engine (a URL) ``strong_model``, ``strong_tokenizer`` and the engine's settings;
- :class:`LMEvalOptions`: ``method``, ``seed``, ``batch_size``, ``max_rows``, ``sampling_preset``;
- the method's flat parameters, the names ``w2s search`` takes as flags (``beam_width``,
  ``successors_per_beam``, ``chunk_length``, ``n``, ``beta``, ``temperature``, ``top_k``, ``stop``...).

**generate_until** runs the method on the requests, batched: the requests that share their ``gen_kwargs``
together, in lm-eval's order, ``batch_size`` prompts at a time.  From ``gen_kwargs`` (the task's, with
``--gen_kwargs`` over them): ``until`` becomes stop strings (beside any given as ``stop``) and the text is cut
at the first of them; ``max_gen_toks`` (or ``max_new_tokens``, ``max_tokens``, ``max_completion_tokens``)
becomes ``max_new_tokens`` (model_args' ``max_new_tokens`` is the length when a task names none, else 256,
as lm-eval's ``hf`` model); ``do_sample``/``temperature``, ``top_p``, ``top_k`` and the repetition controls
set the strong model's sampling, except those that model_args (or ``sampling_preset``) set.  A greedy request
(``do_sample: false`` or temperature 0) is greedy decoding for ``base``, ``sampling`` and ``eft``; ``cbs``,
``bon``, ``adaptive`` and ``pruned_bon`` search over samples of the strong model by design and keep their
sampling temperature (0.7 unless model_args say), with a warning.  ``num_beams: 1`` is ignored; any other
key is refused, naming it.  A prompt that does not fit a model's context gets an empty answer and a warning.

**loglikelihood** and **loglikelihood_rolling** are the log-probabilities of the method's own next-token
distribution, where it has one: ``base`` and ``sampling``, the strong model's (temperature 1, nothing cut, as
lm-eval's ``hf`` model computes them); ``eft``, the mixture EFT samples from, ``log p_strong + beta (log
p_tuned - log p_untuned)`` renormalized over the shared vocabulary.  A search (``cbs``, ``bon``, ``adaptive``,
``pruned_bon``) picks among samples by the guides' score: the probability that it returns a given text has
no tractable value, and the strong model's would score the unguided model under the method's name, so those
requests are refused, naming the method.  Tokens follow lm-eval's split (a context's trailing whitespace goes
to the continuation; the continuation is what the whole text's tokens add after the context's) and w2s's BOS
rule (the tokenizer's own prefix; an empty context is the start token), over the context rendered with the
template; a sequence longer than the context is cut on the left, and rolling windows use the context length
of the models (2048 when it is unknown).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import lm_eval.models  # noqa: F401  (the harness's own models first: its registry imports them only while empty)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .backends.base import SAMPLING_PRESETS, SamplingParams, stop_index
from .configs import build, flatten, param_names, params, parse_value
from .models import PER_ROLE, REMOTE_FIELDS, ROLE_OVERRIDES, ModelSpec, is_url, load_all
from .search import SEARCH_METHODS, Sampling
from .search.cbs import MAX_ROWS
from .validation import check_choice, check_range

logger = logging.getLogger(__name__)

TESTED_VERSION = "0.4.13"  # the lm-eval release this module is written against (the extra pins it)
if lm_eval.__version__ != TESTED_VERSION:
    logger.warning("w2s's lm-eval model is tested with lm-eval %s; %s is installed.", TESTED_VERSION,
                   lm_eval.__version__)

# the methods by their model_args name: base is the strong model alone (plain sampling without guides)
METHODS = {"base": Sampling, **SEARCH_METHODS}
UNGUIDED = ("base", "sampling")  # no guides are loaded
SEARCHES = ("cbs", "bon", "adaptive", "pruned_bon")  # sample the strong model by design (no greedy)
LIKELIHOOD = ("base", "sampling", "eft")  # a next-token distribution to score texts with
ROLES = ("strong", "tuned", "untuned")
# lm-eval's default length of an answer (HFLM's max_gen_toks) when neither the task nor model_args name one
MAX_GEN_TOKS = 256
# the context length assumed for a model that does not state its own (HFLM's default max_length)
DEFAULT_CONTEXT = 2048
SAMPLING_NAMES = tuple(n for n in param_names(SamplingParams) if n != "stop")
# gen_kwargs keys with nothing to do: num_beams 1 is transformers' plain decoding
IGNORED_GEN_KWARGS = {"num_beams": 1}


@dataclass
class LMEvalOptions:
    """How the ``w2s`` model of lm-evaluation-harness runs its requests (model_args beside the models' and the
    method's parameters).

    Attributes:
        method: base (the strong model alone, no guides), sampling (the same), cbs, bon, eft, adaptive or
            pruned_bon (required).
        seed: seeds each request's randomness, with its position among the requests that share its
            generation settings (lm-eval's --seed does not reach w2s's generators).
        batch_size: prompts searched together, and sequences scored together; lm-eval's --batch_size sets it
            when model_args do not (its command line sends 1 unless told; auto: this default).
        max_rows: the most large-model rows one prompt may sample at once (W*K for cbs, n for bon); a method
            over it is refused before any model loads.
        sampling_preset: named sampling settings (w2s.SAMPLING_PRESETS) as the defaults of the sampling
            parameters; model_args override them, and both override the tasks' gen_kwargs.
    """

    method: str | None = field(default=None, metadata={"choices": tuple(METHODS)})
    seed: int = 0
    batch_size: int = 8
    max_rows: int = MAX_ROWS
    sampling_preset: str | None = field(default=None, metadata={"choices": tuple(SAMPLING_PRESETS)})

    def __post_init__(self) -> None:
        if self.method is None:
            raise ValueError(f"w2s model_args need a method: method={'|'.join(METHODS)}.")
        check_choice("method", self.method, METHODS)
        check_range("seed", self.seed, integer=True)
        check_range("batch_size", self.batch_size, low=1, integer=True)
        check_range("max_rows", self.max_rows, low=1, integer=True)
        if self.sampling_preset is not None:
            check_choice("sampling_preset", self.sampling_preset, SAMPLING_PRESETS)


def model_keys() -> dict[str, tuple[str | None, str]]:
    """model_args key -> (role, ModelSpec field) of the models' settings; role None: shared by all models."""
    keys: dict[str, tuple[str | None, str]] = {}
    for role in ROLES:
        for name in PER_ROLE:
            if name in REMOTE_FIELDS and role != "strong":  # only the strong model may be an engine
                continue
            keys[role if name == "path" else f"{role}_{name}"] = (role, name)
        for name in ROLE_OVERRIDES:
            keys[f"{role}_{name}"] = (role, name)
    keys["template"] = ("strong", "template")
    for p in params(ModelSpec):
        if p.name not in PER_ROLE and p.name != "role":
            keys[p.name] = (None, p.name)
    return keys


def _all_method_params() -> dict:
    found = {}
    for cls in METHODS.values():
        for p in params(cls):
            found.setdefault(p.name, p)
    return found


@register_model("w2s")
class W2SLM(LM):
    """An lm-evaluation-harness model that generates with a w2s method (see the module docstring)."""

    def __init__(self, **model_args):
        super().__init__()
        values = dict(model_args)
        option_params = {p.name: p for p in params(LMEvalOptions)}
        self.options = build(LMEvalOptions, {k: parse_value(option_params[k], values.pop(k))
                                             for k in list(values) if k in option_params})
        self.method = self.options.method
        self.cls = METHODS[self.method]

        keys, spec_params = model_keys(), {p.name: p for p in params(ModelSpec)}
        shared, own = {}, {role: {} for role in ROLES}
        for key in [k for k in values if k in keys]:
            role, name = keys[key]
            value = parse_value(spec_params[name], values.pop(key), key)
            (shared if role is None else own[role])[name] = value

        method_params = _all_method_params()
        unknown = sorted(set(values) - set(method_params))
        if unknown:
            hint = " (w2s names the large model strong=PATH)" if "pretrained" in unknown else ""
            raise ValueError(
                f"w2s model_args: unknown {', '.join(unknown)}{hint}; the models take {', '.join(keys)}; the run "
                f"takes {', '.join(option_params)}; method={self.method} takes {', '.join(param_names(self.cls))}.")
        mine = set(param_names(self.cls))
        given = {k: (parse_value(method_params[k], v) if k in mine else v) for k, v in values.items()}
        preset = SAMPLING_PRESETS.get(self.options.sampling_preset or "", {})
        self.given = {**{k: v for k, v in preset.items() if k in mine}, **given}
        # validates every value (and refuses another method's parameter) before any model loads
        self.config = build(self.cls, self.given, where=f"method={self.method}")
        if hasattr(self.config, "check_rows"):
            self.config.check_rows(self.options.max_rows, "max_rows")
        self.max_gen_toks = self.given.get("max_new_tokens", MAX_GEN_TOKS)

        roles = ("strong",) if self.method in UNGUIDED else ROLES
        ignored = [r for r in ("tuned", "untuned") if r not in roles and own[r]]
        if ignored:
            logger.warning("method=%s samples the strong model alone: %s ignored.", self.method,
                           " and ".join(ignored))
        if self.method == "eft" and is_url(own["strong"].get("path")):
            raise ValueError("method=eft mixes the strong model's next-token logits with the guides' and needs a "
                             "local strong model; use cbs, bon or sampling with a remote one.")
        self.models = load_all({role: ModelSpec(role=role, **{**shared, **own[role]}) for role in roles})
        self.strong = self.models.strong.model
        self._device = getattr(self.strong, "device", "cpu")
        self.scorer = None
        if self.method not in UNGUIDED and self.method != "eft":
            from .scoring import LogRatioScorer

            m = self.models
            self.scorer = LogRatioScorer(m.tuned.model, m.untuned.model, m.tuned.template, m.untuned.template)
        self._warned: set[str] = set()

    # -- construction from lm-eval's arguments --------------------------------------------------------------
    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "W2SLM":
        """lm-eval's ``--batch_size`` and ``--device`` (its ``additional_config``) where model_args do not set
        them; ``auto`` batch sizes and ``max_batch_size`` have no w2s meaning and are dropped.  lm-eval's command
        line always sends a device, ``cuda:0`` unless told: without CUDA that is the CPU, as for its ``hf`` model."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        extra.pop("max_batch_size", None)
        if "device_map" in arg_dict:
            extra.pop("device", None)
        if str(extra.get("device", "")).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                logger.info("device %s: no CUDA device is available, the models run on the CPU.", extra["device"])
                extra["device"] = "cpu"
        if str(extra.get("batch_size", "")).startswith("auto"):
            logger.warning("batch_size %s: w2s sizes its batches by batch_size (default %d) and "
                           "max_tokens_per_forward, not automatically.", extra["batch_size"], LMEvalOptions.batch_size)
            extra.pop("batch_size")
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "W2SLM":
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    def get_model_info(self) -> dict:
        """What lm-eval records in its results' ``config``."""
        models = {role: {"path": lm.spec.path, "template": lm.template, "dtype": lm.spec.dtype}
                  for role, lm in self.models.items()}
        return {"w2s_method": self.method, "w2s_params": flatten(self.config), "w2s_seed": self.options.seed,
                "w2s_models": models}

    # -- generation ------------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=repr), []).append(i)
        out: list[str | None] = [None] * len(requests)
        for indices in groups.values():
            config, until = self.generation_config(requests[indices[0]].args[1])
            prompts = [requests[i].args[0] for i in indices]
            for i, result in zip(indices, list(self._generate(config, prompts, disable_tqdm))):
                if result.error is not None:
                    logger.warning("request %d gets an empty answer: %s", i, result.error)
                text = result.response
                cut = stop_index(text, until)
                out[i] = text if cut is None else text[:cut]
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def generation_config(self, gen_kwargs: dict):
        """The method's config for requests with ``gen_kwargs``, and their stop strings (see the module docstring)."""
        from lm_eval.models.utils import normalize_gen_kwargs

        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"w2s expects gen_kwargs as a dict, got {gen_kwargs!r}.")
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        until = kwargs.pop("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if not all(isinstance(s, str) for s in until):
            raise ValueError(f"gen_kwargs until must be strings, got {until!r}.")
        until = [s for s in until if s]
        values = dict(self.given)
        values["max_new_tokens"] = kwargs.pop("max_gen_toks")
        values["stop"] = tuple(dict.fromkeys((*values.get("stop", ()), *until)))
        do_sample, temperature = kwargs.pop("do_sample"), float(kwargs.pop("temperature", 0.0))
        for key, value in kwargs.items():
            if key in IGNORED_GEN_KWARGS and value == IGNORED_GEN_KWARGS[key]:
                continue
            if key not in SAMPLING_NAMES:
                raise ValueError(
                    f"gen_kwargs {key}={value!r} has no w2s meaning; w2s takes until, max_gen_toks (or max_new_tokens, "
                    f"max_tokens, max_completion_tokens), do_sample, temperature, {', '.join(SAMPLING_NAMES[1:])} and "
                    "num_beams=1 (set the task's generation_kwargs or --gen_kwargs without it).")
            if key not in self.given:
                values[key] = parse_value(_all_method_params()[key], value, f"gen_kwargs {key}")
        if "temperature" not in self.given:
            greedy = not do_sample or not temperature
            if self.method in SEARCHES and greedy:
                self._warn_once("greedy", f"the task asks for greedy decoding (do_sample=False or temperature 0); "
                                f"method={self.method} searches over samples of the strong model, so it samples at "
                                f"temperature {self.config.sampling.temperature} (set temperature in model_args "
                                "to choose).")
            else:
                values["temperature"] = 0.0 if greedy else parse_value(
                    _all_method_params()["temperature"], temperature, "gen_kwargs temperature")
        return build(self.cls, values, where=f"method={self.method} with gen_kwargs {gen_kwargs}"), until

    def _generate(self, config, prompts: list[str], disable_tqdm: bool):
        m = self.models
        kw = dict(seed=self.options.seed, batch_size=self.options.batch_size, progress=not disable_tqdm)
        if self.method == "eft":
            return config.generate(m.strong.model, m.tuned.model, m.untuned.model, prompts,
                                   strong_template=m.strong.template, tuned_template=m.tuned.template,
                                   untuned_template=m.untuned.template, **kw)
        return config.generate(m.strong.model, self.scorer, prompts, template=m.strong.template,
                               max_rows=self.options.max_rows, **kw)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    # -- chat templates (--apply_chat_template) ----------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        tokenizer = getattr(self.strong, "tokenizer", None)
        return str(getattr(tokenizer, "name_or_path", None) or self.models.strong.spec.path).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        tokenizer = getattr(self.strong, "tokenizer", None)
        return getattr(tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation rendered by the strong model's chat template (lm-eval's --apply_chat_template),
        without the start tokens w2s puts in front of every prompt itself."""
        if self.models.strong.template != "{prompt}":
            raise ValueError(f"--apply_chat_template renders the prompts with the strong model's chat template, and "
                             f"template={self.models.strong.template!r} would render them again: give one of them.")
        tokenizer = getattr(self.strong, "tokenizer", None)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("--apply_chat_template needs the strong model's chat template, and it has none"
                             " (a remote model: pass strong_tokenizer=PATH).")
        text = tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             continue_final_message=not add_generation_prompt)
        prefix = getattr(self.strong, "prefix_ids", None)
        lead = self.strong.decode(prefix) if prefix else ""
        return text[len(lead):] if lead and text.startswith(lead) else text

    # -- log-likelihoods ---------------------------------------------------------------------------------------
    def _scoring_models(self, request_type: str) -> list[tuple[object, str, float]]:
        """(model, template, weight) of each model whose log-softmax the scored distribution sums; refused (a
        ValueError naming the method) where the method has no next-token distribution."""
        if self.method not in LIKELIHOOD:
            raise ValueError(
                f"{request_type} requests (multiple-choice and perplexity tasks) ask for the probability of a given "
                f"text, and method={self.method} has none: a search picks among samples of the strong model by the "
                "guides' score, so the probability that it returns a text is not tractable (and the strong model's "
                "own would score the unguided model under the method's name). Run generative tasks "
                "(output_type: generate_until) with it, or method=base (the strong model's log-likelihoods) or "
                "method=eft (its mixed next-token distribution).")
        if not hasattr(self.strong, "new_rows"):
            raise ValueError(f"{request_type} requests need the strong model's logits, and "
                             f"{self.models.strong.spec.path} is a remote engine; give a local strong model.")
        m = self.models
        if self.method == "eft":
            from .search.eft import check_same_vocabulary

            check_same_vocabulary(m.strong.model, tuned=m.tuned.model, untuned=m.untuned.model)
            beta = self.config.beta
            return [(m.strong.model, m.strong.template, 1.0), (m.tuned.model, m.tuned.template, beta),
                    (m.untuned.model, m.untuned.template, -beta)]
        return [(m.strong.model, m.strong.template, 1.0)]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        models = self._scoring_models("loglikelihood")
        items = [self._pair(models, *request.args) for request in requests]
        out = self._score(models, items)
        for request, result in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        models = self._scoring_models("loglikelihood_rolling")
        length = min(_context_length(lm) for lm, _, _ in models)
        items, owner = [], []
        for r, request in enumerate(requests):
            (text,) = request.args
            windows = get_rolling_token_windows(token_list=self.strong.encode(text), prefix_token=self.strong.start_id,
                                                max_seq_len=length, context_len=1)
            for context, continuation in map(make_disjoint_window, windows):
                items.append([(context + continuation, len(continuation))] * len(models))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (logprob, _) in zip(owner, self._score(models, items)):
            totals[r] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def _pair(self, models, context: str, continuation: str) -> list[tuple[list[int], int]]:
        """Each model's ids of ``context`` (rendered with its template) and ``continuation`` (the strong model's
        tokens), cut on the left to its context, with the number of continuation tokens."""
        strong, template, _ = models[0]
        rendered = strong.render(template, context)
        moved = rendered[len(rendered.rstrip()):]  # trailing whitespace belongs to the continuation (lm-eval)
        rendered, continuation = rendered[: len(rendered) - len(moved)], moved + continuation
        if rendered:
            whole, head = strong.encode_many([rendered + continuation, rendered])
            tokens = whole[len(head):]
        else:
            tokens = strong.encode(continuation)
        out = []
        for lm, tmpl, _ in models:
            text = lm.render(tmpl, context)
            if moved and text.endswith(moved):
                text = text[: len(text) - len(moved)]
            ids = lm.encode_prompt(text, tmpl) + tokens
            limit = _context_length(lm) + 1  # the last token is scored, never run
            if len(tokens) >= limit:
                raise ValueError(f"a continuation of {len(tokens)} tokens does not fit {lm.name}'s context "
                                 f"({limit - 1} tokens).")
            out.append((ids[-limit:], len(tokens)))
        return out

    def _score(self, models, items: list[list[tuple[list[int], int]]]) -> list[tuple[float, bool]]:
        """``(log-probability, greedy)`` of the scored tokens of each item (one ``(ids, scored)`` per model)."""
        import torch

        results: list[tuple[float, bool]] = [(0.0, True)] * len(items)
        todo = sorted((i for i, item in enumerate(items) if item[0][1]), key=lambda i: -len(items[i][0][0]))
        strong = models[0][0]
        width = max(strong.tokenizer.get_vocab().values()) + 1 if len(models) > 1 else None  # EFT's real tokens
        for start in range(0, len(todo), self.options.batch_size):
            batch = todo[start : start + self.options.batch_size]
            if len(models) == 1:  # the model's own log-softmax over its whole row (as lm-eval's hf model)
                sums, greedy = [0.0] * len(batch), [True] * len(batch)

                def visit(r, k, logits, targets):
                    x, t = logits.float(), torch.tensor(targets, device=logits.device)
                    sums[r] += float((x.gather(1, t[:, None])[:, 0] - x.logsumexp(dim=-1)).double().sum())
                    greedy[r] = greedy[r] and bool((x.argmax(dim=-1) == t).all())

                _forward(strong, [items[i][0] for i in batch], visit)
                for r, i in enumerate(batch):
                    results[i] = (sums[r], greedy[r])
                continue
            mixed = [torch.zeros(items[i][0][1], width, device=strong.device) for i in batch]
            for m, (lm, _, weight) in enumerate(models):
                def visit(r, k, logits, targets, weight=weight):
                    x = logits[:, :width].to(strong.device).float().log_softmax(dim=-1)
                    mixed[r][k : k + len(targets)] += weight * x

                _forward(lm, [items[i][m] for i in batch], visit)
            for r, i in enumerate(batch):
                ids, n = items[i][0]
                t = torch.tensor(ids[len(ids) - n :], device=strong.device)
                x = mixed[r]
                results[i] = (float((x.gather(1, t[:, None])[:, 0] - x.logsumexp(dim=-1)).double().sum()),
                              bool((x.argmax(dim=-1) == t).all()))
        return results


def _context_length(lm) -> int:
    return getattr(lm, "context_length", None) or DEFAULT_CONTEXT


def _forward(lm, seqs: list[tuple[list[int], int]], visit) -> None:
    """Run each ``(ids, n)`` of ``seqs`` through ``lm`` (one row each, all but the last token) and hand over the
    logits that score its last ``n`` tokens, model call by model call: ``visit(row, k, logits [m, vocab],
    targets)`` for its scored tokens ``k..k+m``."""
    rows = lm.new_rows()
    rows.add_empty_rows(len(seqs))
    inputs = [ids[:-1] for ids, _ in seqs]
    spans = [(len(x) - n, len(x)) for x, (_, n) in zip(inputs, seqs)]  # queries whose logits score a token

    def read(logits, column: int) -> None:
        width = logits.shape[1]
        for r, (low, high) in enumerate(spans):
            a, b = max(low, column), min(high, column + width)
            if a < b:
                visit(r, a - low, logits[r, a - column : b - column], seqs[r][0][a + 1 : b + 1])

    rows.forward(inputs, last_only=False, read=read)
