"""Write wmkit/data/words_en.txt.gz: the English word list of the case restore in
wmkit/watermark/text/normalize.py, from the default tokenizer's vocabulary (SmolLM2's byte-level
BPE): every whole-word token of 2+ ASCII letters, lowercase ("river"), and, on a second section
after a line "#mixed", the tokens whose case is neither lower, Title nor UPPER ("iPhone",
"McDonald", "DataFrame"; not a two-letter one whose lower case is a list word, such as the
fragment "iT"): genuine mixed-case words the restore leaves alone.

    python scripts/make_wordlist.py
"""

import gzip
import re
from pathlib import Path

from wmkit.models import load_tokenizer

OUT = Path(__file__).resolve().parent.parent / "wmkit" / "data" / "words_en.txt.gz"


def main() -> None:
    lower, mixed = set(), set()
    for token in load_tokenizer().get_vocab():
        word = token[1:] if token.startswith("\u0120") else token
        if not re.fullmatch(r"[A-Za-z]{2,}", word):
            continue
        if word.islower():
            lower.add(word)
        elif not (word.istitle() or word.isupper()):
            mixed.add(word)
    # two-letter BPE fragments ("iT", "oS") are not words a writer means; the list word wins
    mixed = {w for w in mixed if len(w) > 2 or w.lower() not in lower}
    text = "\n".join(sorted(lower)) + "\n#mixed\n" + "\n".join(sorted(mixed)) + "\n"
    with gzip.GzipFile(OUT, "wb", mtime=0) as f:  # mtime 0: the same bytes on every run
        f.write(text.encode("ascii"))
    print(f"{OUT}: {len(lower)} words, {len(mixed)} mixed-case words")


if __name__ == "__main__":
    main()
