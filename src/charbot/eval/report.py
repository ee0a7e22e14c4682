"""The eval report: a markdown table, the judge's own quality, sample replies next to the real line, a chart."""

from __future__ import annotations

import math

from charbot.eval.metrics import ratio_interval


def _x(v: float) -> str:
    return "∞" if math.isinf(v) else f"{v:.1f}"


def _f(v: float, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.0%}" if pct else f"{v:.2f}"


def sampling(sampler, rows) -> str:
    """How the replies were drawn, in words."""
    if sampler.do_sample and sampler.temperature > 0:
        how = f"sampled at temperature {sampler.temperature:g}, top-k {sampler.top_k}, top-p {sampler.top_p:g}"
    else:
        how = "greedy decoding"
    if sampler.no_repeat_ngram_size:
        how += f", no repeated {sampler.no_repeat_ngram_size}-grams"
    if sampler.repetition_penalty != 1.0:
        how += f", repetition penalty {sampler.repetition_penalty:g}"
    caps = sorted({r.max_new_tokens for r in rows if r.max_new_tokens})
    cap = f"; at most {'/'.join(map(str, caps))} tokens per reply" if caps else ""
    return f"Replies {how}{cap} (by default the longest real reply among these contexts, so no reply is cut shorter than the character's own)."


def markdown(character: str, examples, rows, references, quality, scored, sampler, samples: int = 6) -> str:
    per = max((len(r) for row in rows for r in row.replies), default=1)
    drawn = f" ({per} sampled replies per context)" if per > 1 else ""
    real_words = references[0].mean_words if references else float("nan")
    where = ("the test split (test.jsonl): episodes, scenes or blocks that neither training, early stopping nor any "
             "recipe search read") if scored.split == "test" else "val.jsonl"
    lines = [f"# {character}: model comparison on held-out data", ""]
    if scored.note:
        lines += [f"> **Note**: {scored.note}.", ""]
    lines += [
        f"{len(examples)} contexts from {where}.",
        "",
        "* **perplexity**: of the character's real reply given the context (lower is better).",
        "* **hits@1 / MRR**: response selection (ConvAI2 style): the real reply among 19 distractors, other lines of the "
        "character's from elsewhere in the test split (fixed seed), ranked by how much the context raises each one's mean "
        "log-probability per token (given the context minus given no dialogue: the reply's tokens and its end-of-turn marker). "
        "Chance: hits@1 0.05, MRR 0.18. **hits@1 (log-lik)**: ranked by the mean log-probability given the context alone, which "
        "favours lines likely anywhere (short exclamations); shown for comparison.",
        f"* **judge ratio**: the judge's mean score of the sampled replies{drawn} ÷ its mean score of {character}'s real replies "
        "to the same contexts (1.00: scored like the real lines). **in character**: the share it scores above 0.5.",
        "* **distinct-1/2**: unique n-grams / all n-grams of the replies; **words**: mean length, and as a share of the real lines'.",
        "",
        sampling(sampler, rows),
        "",
        f"The judge (MiniLM embeddings + logistic regression, trained on {character}'s lines vs other speakers' in the training "
        f"split), on real test lines: ROC-AUC **{_f(quality.auc)}** ({quality.own_lines} of {character}'s lines vs "
        f"{quality.other_lines} of other speakers'); it accepts {_f(quality.accepts_real, True)} of {character}'s real lines "
        f"and {_f(quality.accepts_others, True)} of the others'.",
        "",
        f'Named replies: {character}\'s turns are shown as "{character}: …" and each reply is begun with the name '
        "(as the Discord prompt does); the name is context, not scored.",
        "",
        "| model | persona prompt | named replies | perplexity | hits@1 | MRR | hits@1 (log-lik) | judge ratio | in character | distinct-1 | distinct-2 | words | words vs real |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows + references:
        vs_real = r.mean_words / real_words if real_words else float("nan")
        lines.append(f"| {r.label} | {'yes' if r.persona else 'no'} | {'yes' if r.named else 'no'} | {_f(r.perplexity)} | {_f(r.hits_at_1)} | "
                     f"{_f(r.mrr)} | {_f(r.loglik_hits_at_1)} | {_f(r.judge_ratio)} | {_f(r.in_character, True)} | {_f(r.distinct_1)} | {_f(r.distinct_2)} | "
                     f"{_f(r.mean_words)} | {_f(vs_real, True)} |")
    lines += ["", "![comparison](comparison.png)", ""]
    lines += targets(rows, references)
    lines += ["## Sample replies next to the real line", ""]
    for i, ex in enumerate(examples[:samples]):
        context = [m for m in ex.messages[:-1] if m["role"] != "system"]
        lines.append(f"### {i + 1}. {ex.episode}")
        lines.append("")
        for m in context[-3:]:
            who = character if m["role"] == "assistant" else ""
            lines.append(f"> {who + ': ' if who else ''}{m['content']}".replace("\n", "  \n> "))
        lines.append("")
        for r in references[:1] + rows:
            lines.append(f"- **{r.label}**: {r.replies[i][0] or '(nothing usable)'}")
        lines.append("")
    return "\n".join(lines) + "\n"


def targets(rows, references) -> list[str]:
    """Each model against the plain base and the real lines, by the targets a character model has to meet: a
    model that repeats a catchphrase fails on diversity or length even where the judge likes it."""
    base = next((r for r in rows if not r.persona), None)
    real = references[0] if references else None
    if base is None or real is None or len(rows) < 2:
        return []
    out = [
        "## Targets", "",
        "Perplexity ≥ 40% below the plain base; hits@1 ≥ 2× the plain base's; judge ratio ≥ 1.00 together with distinct-2 "
        "≥ 0.85× and mean length within ±30% of the real lines'. In brackets: the hits@1 ratio's 95% interval, by a paired "
        "bootstrap over the contexts.", "",
        "| model | perplexity vs base | hits@1 vs base | judge ratio | distinct-2 vs real | words vs real | all met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r is base:
            continue
        ppl = 1 - r.perplexity / base.perplexity
        hits = r.hits_at_1 / base.hits_at_1 if base.hits_at_1 else float("inf") if r.hits_at_1 else float("nan")
        d2 = r.distinct_2 / real.distinct_2 if real.distinct_2 else float("nan")
        length = r.mean_words / real.mean_words if real.mean_words else float("nan")
        ranked = not math.isnan(r.hits_at_1) and not math.isnan(base.hits_at_1)  # eval --no-selection: not measured, not failed
        met = [ppl >= 0.4, hits >= 2 or not ranked, r.judge_ratio >= 1.0, d2 >= 0.85, abs(length - 1) <= 0.3]
        mark = lambda ok: "" if ok else " ✗"  # noqa: E731
        hits_text = "not ranked" if not ranked else "—" if math.isnan(hits) else "∞×" if math.isinf(hits) else f"{hits:.1f}×"
        if r.ranks and len(r.ranks) == len(base.ranks):
            low, high = ratio_interval([k == 1 for k in base.ranks], [k == 1 for k in r.ranks])
            hits_text += f" ({_x(low)}–{_x(high)})"
        out.append(f"| {r.label} | {ppl:.0%} below{mark(met[0])} | {hits_text}{mark(met[1])} | {_f(r.judge_ratio)}{mark(met[2])} | "
                   f"{d2:.2f}×{mark(met[3])} | {length:.2f}×{mark(met[4])} | {('yes' if ranked else 'yes, hits@1 aside') if all(met) else 'no'} |")
    return out + [""]


def chart(rows, references, path, character: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in rows]
    x = range(len(rows))
    fig, axes = plt.subplots(1, 4, figsize=(17, 4), dpi=100)
    axes[0].bar(labels, [r.perplexity for r in rows], color="tab:blue")
    axes[0].set_title("test perplexity (lower is better)")
    axes[1].bar([i - 0.2 for i in x], [r.hits_at_1 for r in rows], width=0.4, label="hits@1/20")
    axes[1].bar([i + 0.2 for i in x], [r.mrr for r in rows], width=0.4, label="MRR")
    axes[1].axhline(0.05, color="gray", ls=":", label="chance (hits@1)")
    axes[1].set_xticks(list(x), labels)
    axes[1].set_title("response selection")
    axes[1].legend()
    axes[2].bar(labels, [r.judge_ratio for r in rows], color="tab:green")
    axes[2].axhline(1.0, color="gray", ls="--", label=f"{character}'s real lines")
    if len(references) > 1:
        axes[2].axhline(references[1].judge_ratio, color="gray", ls=":", label="other speakers' lines")
    axes[2].set_title(f"judge ratio ({character})")
    axes[2].legend()
    axes[3].bar([i - 0.2 for i in x], [r.distinct_1 for r in rows], width=0.4, label="distinct-1")
    axes[3].bar([i + 0.2 for i in x], [r.distinct_2 for r in rows], width=0.4, label="distinct-2")
    if references:
        axes[3].axhline(references[0].distinct_2, color="gray", ls="--", label="distinct-2 of the real lines")
    axes[3].set_xticks(list(x), labels)
    axes[3].set_title("diversity")
    axes[3].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
