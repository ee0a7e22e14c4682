"""The eval report: a markdown table, sample transcripts side by side, and a bar chart."""

from __future__ import annotations

import math


def _f(v: float, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.0%}" if pct else f"{v:.2f}"


def markdown(character: str, examples, rows, references, samples: int = 6) -> str:
    per = max((len(r) for row in rows for r in row.replies), default=1)
    drawn = f" ({per} sampled replies per context)" if per > 1 else ""
    lines = [
        f"# {character}: model comparison on held-out episodes",
        "",
        f"{len(examples)} held-out contexts from episodes never seen in training (val.jsonl).",
        "Perplexity: of the character's real reply given the context (lower is better).",
        f'In character: share of sampled replies a classifier (MiniLM embeddings + logistic regression, trained on '
        f"{character}'s lines vs other speakers' in the training episodes) judges to be {character}'s{drawn}.",
        f"The reference rows are the judge's yardsticks: the share of {character}'s real held-out lines it accepts, "
        "and the share of the other speakers' held-out lines it mistakes for them.",
        "",
        f'Named replies: {character}\'s turns are shown as "{character}: …" and each reply is begun with the name '
        "(as the Discord prompt does); the name is context, not scored.",
        "",
        "| model | persona prompt | named replies | perplexity | in character | distinct-1 | distinct-2 | mean words |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows + references:
        lines.append(f"| {r.label} | {'yes' if r.persona else 'no'} | {'yes' if r.named else 'no'} | {_f(r.perplexity)} | {_f(r.in_character, True)} | {_f(r.distinct_1)} | {_f(r.distinct_2)} | {_f(r.mean_words)} |")
    lines += ["", "![comparison](comparison.png)", "", "## Sample transcripts", ""]
    for i, ex in enumerate(examples[:samples]):
        context = [m for m in ex.messages[:-1] if m["role"] != "system"]
        lines.append(f"### {i + 1}. {ex.episode}")
        lines.append("")
        for m in context[-3:]:
            who = character if m["role"] == "assistant" else ""
            lines.append(f"> {who + ': ' if who else ''}{m['content']}".replace("\n", "  \n> "))
        lines.append("")
        for r in rows + references[:1]:
            lines.append(f"- **{r.label}**: {r.replies[i][0] or '(nothing usable)'}")
        lines.append("")
    return "\n".join(lines) + "\n"


def chart(rows, references, path, character: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=100)
    axes[0].bar(labels, [r.perplexity for r in rows], color="tab:blue")
    axes[0].set_title("reply perplexity (lower is better)")
    axes[1].bar(labels, [100 * r.in_character for r in rows], color="tab:green")
    for ref, style in zip(references, ("--", ":")):
        axes[1].axhline(100 * ref.in_character, color="gray", ls=style, label=ref.label.removesuffix(" (reference)"))
    axes[1].set_title(f"judged in character as {character} (%)")
    axes[1].legend()
    x = range(len(rows))
    axes[2].bar([i - 0.2 for i in x], [r.distinct_1 for r in rows], width=0.4, label="distinct-1")
    axes[2].bar([i + 0.2 for i in x], [r.distinct_2 for r in rows], width=0.4, label="distinct-2")
    axes[2].set_xticks(list(x), labels)
    axes[2].set_title("diversity")
    axes[2].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
