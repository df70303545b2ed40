"""Stream Aligner latency: our loop against the authors' scheme, measured side by side in one run.

- ours: the upstream stops at the end of each sentence and keeps its KV cache between rounds;
- authors': every round the upstream regenerates the rest of the answer (up to ``--rest-tokens``)
  from scratch, and the first sentence of it is kept.

Both decode greedily, so they produce the same sentences, and both pay one real aligner call per
sentence (a small model generating ``--correction-tokens`` tokens; its output is discarded so that the
answers stay the upstream's).  Figures, as ratios:
- first_over_sentence_plus_call: our time to the first corrected sentence / (one upstream sentence +
  one aligner call, each timed alone); target: close to 1;
- total_ours_over_authors and first_ours_over_authors;
- speculation (the shipped positive-rewrite aligner, sampling at temperature 0.7 with the same seeds in
  both runs, so both give the same answers): total_speculative_over_plain, and drafts_kept, the share
  of sentences after the first that the upstream had already sampled while the aligner worked.

Usage:  python benchmarks/bench_stream.py --out benchmarks/results/stream.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import w2s
from w2s import defaults
from w2s.backends.gguf import strong_model_dir
from w2s.aligner import first_sentence_end, split_sentences, stream_aligner_input
from w2s.backends import SamplingParams

QUESTIONS = ["Why is the sky blue?", "How do plants make their food?", "What should I pack for a beach holiday?"]
GREEDY = SamplingParams(temperature=0.0)
SPECULATION_QUESTIONS = ["What are the dangers of cats?", "Why is hiking so annoying?",
                         "Describe a bad experience with job interviews.", "What makes public speaking difficult?"]


def small_aligner(upstream: w2s.TransformersModel) -> w2s.TransformersModel:
    torch.manual_seed(0)
    tok = upstream.tokenizer
    config = LlamaConfig(vocab_size=upstream.model.config.vocab_size, hidden_size=256, intermediate_size=768,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return w2s.TransformersModel(LlamaForCausalLM(config).eval(), tok, name="small aligner")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=4)
    ap.add_argument("--rest-tokens", type=int, default=128, help="authors' scheme: tokens regenerated per round")
    ap.add_argument("--correction-tokens", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/stream.json")
    args = ap.parse_args()

    upstream = w2s.load_model(strong_model_dir())
    aligner_model = small_aligner(upstream)

    def aligner(question, prefix, sentence):  # one real aligner call; keeps the upstream's sentence
        text = aligner_model.render("chat", stream_aligner_input(question, prefix, sentence))
        aligner_model.generator(1, GREEDY, [0], "chat").generate({0: text}, args.correction_tokens)
        return sentence

    def context(question, prefix):
        return upstream.render("chat", question) + prefix

    def ours(question):
        loop = w2s.StreamAligner(max_sentences=args.sentences, sampling=GREEDY)
        start, first, text = time.perf_counter(), None, ""
        for step in loop.stream(upstream, aligner, question):
            first = first or time.perf_counter() - start
            text += step.corrected
        return first, time.perf_counter() - start, text

    def authors(question):
        start, first, prefix = time.perf_counter(), None, ""
        for _ in range(args.sentences):
            rest, ended = upstream.generator(1, GREEDY, [0], "chat").generate({0: context(question, prefix)},
                                                                                 args.rest_tokens)[0]
            pieces = split_sentences(rest)
            if not pieces or not pieces[0].strip():
                break
            sentence = pieces[0].rstrip()
            lead = sentence[: len(sentence) - len(sentence.lstrip())]
            prefix += lead + aligner(question, prefix, sentence.strip())
            first = first or time.perf_counter() - start
            if ended and len(pieces) == 1:
                break
        return first, time.perf_counter() - start, prefix

    def sentence_plus_call(question):
        t = time.perf_counter()
        text, _ = upstream.generator(1, GREEDY, [0], "chat").generate(
            {0: context(question, "")}, 128, stop=first_sentence_end)[0]
        t_sentence = time.perf_counter() - t
        t = time.perf_counter()
        aligner(question, "", text.strip())
        return t_sentence, time.perf_counter() - t

    shipped = w2s.load_model(defaults.aligner_dir("stream"))

    def speculation(question, speculative):
        loop = w2s.StreamAligner(max_sentences=args.sentences, speculative=speculative)
        start = time.perf_counter()
        steps = list(loop.stream(upstream, shipped, question, seed=1, aligner_template=defaults.ALIGNER_TEMPLATE))
        return time.perf_counter() - start, steps

    ours(QUESTIONS[0])  # warm-up
    speculation(QUESTIONS[0], True)
    spec_rows = []
    for q in SPECULATION_QUESTIONS:
        plain_s, plain = speculation(q, False)
        spec_s, spec = speculation(q, True)
        spec_rows.append({"question": q, "plain_s": plain_s, "speculative_s": spec_s,
                          "sentences": len(spec), "drafts_kept": sum(s.drafted for s in spec),
                          "same_answer": [s.corrected for s in plain] == [s.corrected for s in spec]})
    rows = []
    for q in QUESTIONS:
        t_sentence, t_call = sentence_plus_call(q)
        first_o, total_o, text_o = ours(q)
        first_a, total_a, text_a = authors(q)
        rows.append({"question": q, "sentence_s": t_sentence, "aligner_call_s": t_call, "ours_first_s": first_o,
                     "ours_total_s": total_o, "authors_first_s": first_a, "authors_total_s": total_a,
                     "same_answer": text_o.strip() == text_a.strip(), "answer": text_o})
    mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    report = {
        "figures": {
            "first_over_sentence_plus_call": mean("ours_first_s") / (mean("sentence_s") + mean("aligner_call_s")),
            "first_ours_over_authors": mean("ours_first_s") / mean("authors_first_s"),
            "total_ours_over_authors": mean("ours_total_s") / mean("authors_total_s"),
            "total_speculative_over_plain": sum(r["speculative_s"] for r in spec_rows)
            / sum(r["plain_s"] for r in spec_rows),
            "drafts_kept": sum(r["drafts_kept"] for r in spec_rows)
            / max(sum(r["sentences"] - 1 for r in spec_rows), 1),
        },
        "setup": {"upstream": upstream.name, "aligner_parameters": aligner_model.num_parameters,
                  "sentences": args.sentences, "rest_tokens": args.rest_tokens,
                  "correction_tokens": args.correction_tokens, "threads": torch.get_num_threads()},
        "questions": rows,
        "speculation": spec_rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["figures"], indent=2))
    print("same answers in both schemes:", [r["same_answer"] for r in rows])
    print("same answers with and without speculation:", [r["same_answer"] for r in spec_rows])


if __name__ == "__main__":
    main()
