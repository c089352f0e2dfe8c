"""Unit vocabulary: unit id strings to token indices, extendable for a new session."""
import numpy as np

PAD, START = 0, 1
SPECIALS = ("<pad>", "<start>")


class UnitVocab:
    """Index 0 is padding, 1 is the START token; units follow in the order they were added."""

    def __init__(self, unit_ids=()):
        self.words = list(SPECIALS)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.extend(unit_ids)

    def extend(self, unit_ids):
        """Add ids not yet known (order kept); returns the indices of all of `unit_ids`."""
        for u in map(str, unit_ids):
            if u in SPECIALS:
                raise ValueError(f"unit id {u!r} is reserved")
            if u not in self.index:
                self.index[u] = len(self.words)
                self.words.append(u)
        return self.lookup(unit_ids)

    def lookup(self, unit_ids):
        """Token indices of known unit ids; unknown ids are an error naming them."""
        ids = [str(u) for u in unit_ids]
        unknown = [u for u in ids if u not in self.index]
        if unknown:
            raise KeyError(f"{len(unknown)} unit ids not in the vocabulary "
                           f"(e.g. {unknown[:3]}); extend the vocabulary for a new session")
        return np.array([self.index[u] for u in ids], dtype=np.int64)

    @property
    def unit_ids(self):
        return self.words[len(SPECIALS):]

    def __len__(self):
        return len(self.words)

    def state_dict(self):
        return {"words": list(self.words)}

    @classmethod
    def from_state_dict(cls, state):
        words = list(state["words"])
        if tuple(words[:len(SPECIALS)]) != SPECIALS:
            raise ValueError("vocabulary state does not start with the special tokens")
        return cls(words[len(SPECIALS):])
