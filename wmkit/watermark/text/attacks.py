"""Attacks on text watermarks: what a user (or an adversary) does to marked text before it is checked.

Every attack is a callable object ``attack(texts, rng) -> list[str]`` (batched, so the ones that
run the language model do one pass per batch) with a ``name`` and a ``strength`` for tables:

* :class:`WordDeletion` -- delete a fraction of the words;
* :class:`Typos` -- character edits (swap, drop, insert, replace) in a fraction of the words;
* :class:`Lowercase`;
* :class:`SynonymSubstitution` -- replace a fraction of the words by the default LM's best other
  whole-word token in that left context (WordNet-free; one forward pass per batch);
* :class:`CopyPaste` -- keep only a fraction of the marked text and surround it with human text;
* :class:`Paraphrase` -- ask the default LM to rewrite the text (chat template);
* code edits for Python: :class:`RenameIdentifiers`, :class:`ReformatWhitespace`,
  :class:`ReorderImports` (the code keeps its meaning);
* :class:`~wmkit.watermark.text.evasion.Evasion` -- characters a reader does not see or cannot
  tell apart, by class (script look-alikes, fullwidth and mathematical letters, invisibles, bidi,
  tags, variation selectors, spaces, controls, case flips), built independently of what
  :func:`~wmkit.watermark.text.normalize.normalize_text` undoes.

>>> import random
>>> len(WordDeletion(0.5)(["one two three four"], random.Random(0))[0].split())
2
"""

from __future__ import annotations

import ast
import io
import keyword
import random
import re
import string
import tokenize
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ...errors import InputError

__all__ = [
    "Attack", "WordDeletion", "Typos", "Lowercase", "SynonymSubstitution", "CopyPaste", "Paraphrase",
    "RenameIdentifiers", "ReformatWhitespace", "ReorderImports",
]

_WORD = re.compile(r"\S+\s*")


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise InputError(f"{name}: rate must be in [0, 1], got {rate}")


def _pick(n: int, rate: float, rng: random.Random) -> list[int]:
    """``round(rate * n)`` distinct indices out of ``n``, sorted."""
    return sorted(rng.sample(range(n), round(rate * n)))


@dataclass
class Attack:
    """Base: subclasses implement :meth:`one` (per text) or override ``__call__`` (batched)."""

    name: str = field(init=False, default="attack")

    @property
    def strength(self) -> float:
        """The attack's strength for tables (a rate or fraction; 1.0 for all-or-nothing attacks)."""
        return float(getattr(self, "rate", getattr(self, "fraction", 1.0)))

    def one(self, text: str, rng: random.Random) -> str:
        """Attack a single text."""
        return text

    def __call__(self, texts: Sequence[str], rng: random.Random) -> list[str]:
        return [self.one(t, rng) for t in texts]


@dataclass
class WordDeletion(Attack):
    """Delete ``round(rate * words)`` randomly chosen words."""

    rate: float = 0.3
    name: str = field(init=False, default="word_deletion")

    def __post_init__(self) -> None:
        _check_rate(self.name, self.rate)

    def one(self, text: str, rng: random.Random) -> str:
        words = _WORD.findall(text)
        drop = set(_pick(len(words), self.rate, rng))
        return "".join(w for i, w in enumerate(words) if i not in drop)


@dataclass
class Typos(Attack):
    """One random character edit in each of ``round(rate * words)`` words."""

    rate: float = 0.1
    name: str = field(init=False, default="typos")

    def __post_init__(self) -> None:
        _check_rate(self.name, self.rate)

    def one(self, text: str, rng: random.Random) -> str:
        words = _WORD.findall(text)
        for i in _pick(len(words), self.rate, rng):
            body = words[i].rstrip()
            tail = words[i][len(body):]
            j = rng.randrange(len(body))
            op = rng.choice(("swap", "drop", "insert", "replace")) if len(body) > 1 else "insert"
            c = rng.choice(string.ascii_lowercase)
            if op == "swap":
                j = min(j, len(body) - 2)
                body = body[:j] + body[j + 1] + body[j] + body[j + 2:]
            elif op == "drop":
                body = body[:j] + body[j + 1:]
            elif op == "insert":
                body = body[:j] + c + body[j:]
            else:
                body = body[:j] + c + body[j + 1:]
            words[i] = body + tail
        return "".join(words)


@dataclass
class Lowercase(Attack):
    """Lowercase everything."""

    name: str = field(init=False, default="lowercase")

    def one(self, text: str, rng: random.Random) -> str:
        return text.lower()


@dataclass
class SynonymSubstitution(Attack):
    """Replace ``round(rate * candidates)`` whole-word tokens by the LM's most likely *other*
    whole-word token given the left context (computed in one forward pass over the text)."""

    model: Any = None
    tokenizer: Any = None
    rate: float = 0.3
    name: str = field(init=False, default="synonym")

    def __post_init__(self) -> None:
        _check_rate(self.name, self.rate)
        if self.model is None or self.tokenizer is None:
            raise InputError("synonym: needs the model and tokenizer (wmkit.models.load_lm)")
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self._word = torch.tensor([t.startswith("Ġ") and t[1:].isalpha() for t in vocab])

    def one(self, text: str, rng: random.Random) -> str:
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        if ids.shape[1] < 2:
            return text
        with torch.no_grad():
            logits = self.model(ids).logits[0, :-1].float()  # row i predicts token i + 1
        tok = ids[0, 1:]
        eligible = torch.nonzero(self._word[tok]).flatten().tolist()
        out = ids[0].clone()
        allowed = torch.where(self._word[: logits.shape[1]], 0.0, float("-inf"))
        for i in _pick(len(eligible), self.rate, rng):
            pos = eligible[i]
            row = logits[pos] + allowed
            row[tok[pos]] = float("-inf")
            out[pos + 1] = int(torch.argmax(row))
        return self.tokenizer.decode(out, skip_special_tokens=True)


@dataclass
class CopyPaste(Attack):
    """Keep a random ``fraction`` of the marked text's words (one contiguous span) and surround
    it with human words so that the length stays the same."""

    human: Sequence[str] = ()
    fraction: float = 0.25
    name: str = field(init=False, default="copy_paste")

    def __post_init__(self) -> None:
        _check_rate(self.name, self.fraction)
        self._pool = [w for t in self.human for w in _WORD.findall(t.strip() + " ")]
        if not self._pool:
            raise InputError("copy_paste: needs human text to splice into")

    @property
    def strength(self) -> float:
        """The share of human text, ``1 - fraction``."""
        return 1.0 - self.fraction

    def one(self, text: str, rng: random.Random) -> str:
        words = _WORD.findall(text)
        keep = round(self.fraction * len(words))
        start = rng.randrange(len(words) - keep + 1)
        marked = words[start : start + keep]
        n_human = len(words) - keep
        at = rng.randrange(len(self._pool))
        human = [self._pool[(at + i) % len(self._pool)] for i in range(n_human)]
        cut = rng.randrange(n_human + 1)
        return "".join(human[:cut] + marked + human[cut:]).strip()


PARAPHRASE_PROMPTS = ("Paraphrase the following text. Keep its meaning and length.",
                      "Rewrite this in your own words, changing the wording and sentence structure but not the facts.")


@dataclass
class Paraphrase(Attack):
    """Ask the LM to rewrite the text in its own words (chat template, sampled)."""

    model: Any = None
    tokenizer: Any = None
    max_new_tokens: int = 256
    temperature: float = 0.7
    instruction: str = PARAPHRASE_PROMPTS[0]
    by_sentence: bool = False
    steer: Any = None
    """A scheme-like steering of the paraphraser (e.g. a stolen mark's negative boosts, which scrub:
    :meth:`wmkit.forensics.stealing.StolenMark.steering`); ``None`` paraphrases plainly."""
    name: str = field(init=False, default="paraphrase")

    def __post_init__(self) -> None:
        if self.model is None or self.tokenizer is None:
            raise InputError("paraphrase: needs the model and tokenizer (wmkit.models.load_lm)")

    def __call__(self, texts: Sequence[str], rng: random.Random) -> list[str]:
        """The whole text rewritten in one answer, or (``by_sentence``) each sentence rewritten on its own."""
        from ...engine import generate_completions
        from .semantic.sentences import split_sentences

        parts = [split_sentences(t) if self.by_sentence else [t.strip()] for t in texts]
        flat = [p for ps in parts for p in ps]
        budget = 64 if self.by_sentence else self.max_new_tokens
        out = generate_completions(self.model, self.tokenizer, [f"{self.instruction}\n\n{p}" for p in flat], self.steer,
                                   max_new_tokens=budget, temperature=self.temperature, seed=rng.randrange(2**31),
                                   batch_size=16, chat=True)
        done, i = [], 0
        for ps in parts:
            done.append(" ".join(r["completion"].strip() for r in out[i : i + len(ps)]))
            i += len(ps)
        return done


@dataclass
class RuleParaphrase(Attack):
    """A rule-based paraphrase: ``rate`` of the words replaced as :class:`SynonymSubstitution` does,
    then the sentences reordered, and some split at a comma or merged with the next."""

    model: Any = None
    tokenizer: Any = None
    rate: float = 0.5
    name: str = field(init=False, default="rule_paraphrase")

    def __post_init__(self) -> None:
        self._synonyms = SynonymSubstitution(self.model, self.tokenizer, self.rate)

    def one(self, text: str, rng: random.Random) -> str:
        from .semantic.sentences import split_sentences

        sentences = split_sentences(self._synonyms.one(text, rng))
        rng.shuffle(sentences)
        out: list[str] = []
        for s in sentences:
            r = rng.random()
            if r < 0.25 and ", " in s:  # split at a comma
                a, _, b = s.partition(", ")
                out += [a + ".", b[:1].upper() + b[1:]]
            elif r < 0.5 and out:  # merge with the sentence before
                out[-1] = out[-1].rstrip(".!?") + ", and " + s[:1].lower() + s[1:]
            else:
                out.append(s)
        return " ".join(out)


# ----------------------------------------------------------------------------- code edits


def _parse(code: str, name: str) -> ast.Module:
    try:
        return ast.parse(code)
    except SyntaxError as e:
        raise InputError(f"{name}: input is not valid Python ({e.msg}, line {e.lineno})") from None


@dataclass
class RenameIdentifiers(Attack):
    """Rename a ``rate`` fraction of the local names (function arguments and assigned variables)
    consistently; builtins, imports, attributes and keywords are left alone."""

    rate: float = 1.0
    name: str = field(init=False, default="rename_identifiers")

    def __post_init__(self) -> None:
        _check_rate(self.name, self.rate)

    def one(self, text: str, rng: random.Random) -> str:
        tree = _parse(text, self.name)
        local: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.arg):
                local.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                local.add(node.id)
        imported = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        names = sorted(local - imported - set(dir(__builtins__)) - {"self", "cls"})
        chosen = [names[i] for i in _pick(len(names), self.rate, rng)]
        taken = {tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.NAME}
        mapping = {}
        for i, old in enumerate(chosen):
            new = f"v{i}_{rng.randrange(10**6)}"
            while new in taken or keyword.iskeyword(new):
                new += "_"
            mapping[old] = new
        out, prev = [], None
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            is_attr = prev is not None and prev.type == tokenize.OP and prev.string == "."
            if tok.type == tokenize.NAME and tok.string in mapping and not is_attr:
                tok = tok._replace(string=mapping[tok.string])
            out.append(tok)
            if tok.type not in (tokenize.NL, tokenize.COMMENT):
                prev = tok
        return tokenize.untokenize(out)


@dataclass
class ReformatWhitespace(Attack):
    """Re-indent with 2 spaces, pad operators and commas, drop blank lines; same program."""

    name: str = field(init=False, default="reformat_whitespace")

    def one(self, text: str, rng: random.Random) -> str:
        _parse(text, self.name)
        inside = set()  # lines within a multi-line string: their text is data, leave it alone
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                inside.update(range(tok.start[0] + 1, tok.end[0] + 1))
        lines = []
        for no, line in enumerate(text.splitlines(), start=1):
            if no in inside:
                lines.append(line)
                continue
            if not line.strip():
                continue
            body = line.lstrip(" ")
            n = len(line) - len(body)
            if "'" not in body and '"' not in body:
                body = re.sub(r",(?=\S)", ", ", body)
            lines.append(" " * (n // 4 * 2 + n % 4) + body.rstrip())
        out = "\n".join(lines) + "\n"
        return out if _same_program(text, out) else text


@dataclass
class ReorderImports(Attack):
    """Shuffle the leading block of top-level import statements."""

    name: str = field(init=False, default="reorder_imports")

    def one(self, text: str, rng: random.Random) -> str:
        tree = _parse(text, self.name)
        lines = text.splitlines(keepends=True)
        block = []
        for node in tree.body:
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or (node.module if isinstance(node, ast.ImportFrom) else "") == "__future__":
                break
            block.append(node)
        if len(block) < 2:
            return text
        first, last = block[0].lineno - 1, block[-1].end_lineno
        stmts = ["".join(lines[n.lineno - 1 : n.end_lineno]) for n in block]
        rng.shuffle(stmts)
        return "".join(lines[:first] + stmts + lines[last:])


def _same_program(a: str, b: str) -> bool:
    """Do two sources parse to the same AST (ignoring formatting)?"""
    try:
        return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
    except SyntaxError:
        return False

