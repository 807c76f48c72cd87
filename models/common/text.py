"""Caption text for DSVE-loc (models/dsve/trainer.py): the first sentence's word tokens, and fixed word vectors to look them
up in (skip-thoughts' `utable.npy` + `dictionary.txt`, word2vec binary or text, GloVe text, or `random:SEED`).

No NLTK and no download: `sentence_tokens` approximates what the reference runs, NLTK 3.3's punkt (`english.pickle`)
to split sentences, the first sentence kept, then `word_tokenize` (an "improved" Treebank tokenizer). How it differs:

- Sentence split. Punkt's candidates are kept: `.`, `?` or `!` ending a run of non-space characters and followed by
  whitespace and a token, or by one of `?!)";}]*:@'({[`; so are its word tokens (the token before the mark, the one
  after it). `?` and `!` always end a sentence, and a `.` after an ordinary word does too, whatever the case of the
  next word ("a dog. a cat" is two sentences), as in punkt. Punkt's learned parameters (abbreviations, collocations,
  sentence starters, each word's orthographic statistics) are replaced by fixed lists: (1) an abbreviation of the
  short list `ABBREVIATIONS` (Mr, Dr, St, e.g., U.S., a.m., ...; punkt's english model knows hundreds, and its
  collocations such as "Jan. 5") or an ellipsis ("..") ends a sentence only before one of the common sentence
  starters in `SENT_STARTERS` (The, A, He, ...), where punkt asks its statistics of the next word; (2) a one-letter
  initial ("J. Smith") does not end one before a lower-case word or `;:,.!?`, nor before a capitalised word that is
  not in `SENT_STARTERS` (punkt: a word it never saw in lower case); (3) a number ("in 1999.") ends one unless a
  lower-case word or `;:,.!?` follows. Closing quotes and brackets after the mark stay with the sentence, as punkt's
  realignment does. Decimals ("3.5") and marks inside a token ("a.b") never split, as in punkt. Checked against
  NLTK 3.3's punkt without a trained model on 20,000 random strings: the same first sentence except before an
  ellipsis (which the untrained model never splits).
- Word split. NLTK 3.3's Treebank rules are reproduced in order (quotes -> `` and '', punctuation, brackets, `--`,
  clitics 's 'm 'd 'll 're 've n't, "cannot" -> can not, "gonna" -> gon na, ...) with word_tokenize's 3.3 additions
  for Unicode quotes and the final period: the same tokens as NLTK 3.3 on 20,000 random strings of words,
  contractions, numbers and punctuation. Later NLTK versions (3.4.5+, `NLTKWordTokenizer`) changed a few rules; the
  reference pinned 3.3. Case is kept.
- The reference fails on a text with no sentence (empty or blank); here that gives no tokens, and `encode` one zero row.

Word lookup (`WordVectors.lookup`): the exact token, then its lower case (the reference has no such step: a token
missing in its own case but present in lower case gets the lower-case vector here, `UNK` there), then the `UNK` row,
or a zero vector when the vectors have no `UNK` row (word2vec and GloVe files have none; skip-thoughts' has one).
A text under 3 characters is one zero row (the reference's rule for Visual Genome phrases, whose comment says zero but
whose `torch.FloatTensor(1, 620)` is uninitialised memory). A word listed twice maps to its last row, as the
reference's dictionary does (gensim would keep the first).

Files: read with numpy alone (no gensim); `utable.npy` memory-mapped, never unpickled; text files as UTF-8 with
undecodable bytes kept (surrogate escapes), so rows never shift. Not read: compressed files (.gz), gensim's own
`.model`/`.kv` files. A GloVe file whose first line is a number followed by one value would be taken for a word2vec
header.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import mmap
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

UNK = "UNK"
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "e.g", "i.e", "a.m", "p.m", "u.s",
    "u.k", "inc", "ltd", "corp", "jan", "feb", "aug", "sep", "sept", "oct", "nov", "dec", "approx", "dept", "fig"})
SENT_STARTERS = frozenset({
    "The", "A", "An", "This", "That", "These", "Those", "There", "Then", "It", "He", "She", "They", "We", "I", "You",
    "His", "Her", "Their", "Its", "Our", "In", "On", "At", "But", "And", "So", "If", "When", "What", "Who", "How",
    "Why", "Where", "Some", "Many", "Most", "All", "One", "Two", "After", "Before", "However", "Also"})
LAYOUTS = ("a skip-thoughts directory (utable.npy [V, D] + dictionary.txt, one word a line, row i = line i); "
           "a word2vec binary file (.bin); a word2vec text file (first line 'V D', then 'word v1 ... vD'); "
           "a GloVe text file ('word v1 ... vD' lines, no header); or random:SEED (not pretrained)")


class WordVectorsError(ValueError):
    """Word vectors could not be found or read; the message names the file and the layouts accepted."""


# --- tokenizer --------------------------------------------------------------------------------------------------

_NON_WORD = r"[?!)\";}\]*:@'({\[]"  # punkt: characters that end a word token
_MULTI = r"(?:-{2,}|\.{2,}|(?:\.\s){2,}\.)"  # punkt: dashes and ellipses
_CANDIDATE = re.compile(rf"\S*[.?!](?=(?P<after>{_NON_WORD})|\s+(?P<next>\S+))")
# punkt's word tokens: a dash or ellipsis run; a word (not starting with one of `(\"`{[:;&#*@)}]-,`) up to a space,
# a non-word character, a dash or ellipsis run, or a final comma; else one character
_PUNKT_TOKEN = re.compile(rf"{_MULTI}|(?=[^(\"`{{\[:;&#*@)}}\]\-,])\S+?(?=\s|$|{_NON_WORD}|{_MULTI}|,(?=$|\s|"
                          rf"{_NON_WORD}|{_MULTI}))|\S")
_CLOSERS = re.compile(r"\s*([\"')\]}]+)(?=\s|--|$)")
_NUMBER = re.compile(r"-?[.,]?\d[\d,.\-]*\.?")
_INITIAL = re.compile(r"[^\W\d]\.")


def _ends_sentence(candidate: str, following: str) -> bool:
    """Whether the mark that ends `candidate` ends a sentence; `following` is what comes after it (the next
    whitespace-separated token, or the punctuation mark right after it)."""
    token = _PUNKT_TOKEN.findall(candidate)[-1]
    nxt = (_PUNKT_TOKEN.findall(following) or [""])[0]
    if token in ("?", "!"):
        return True
    upper, lower = nxt[:1].isupper(), nxt[:1].islower()
    starter = upper and nxt in SENT_STARTERS
    if re.fullmatch(r"\.\.+", token):  # an ellipsis
        return starter
    word = token[:-1].lower()
    if _INITIAL.fullmatch(token):
        return starter or not (upper or lower or nxt in tuple(";:,.!?"))
    if word in ABBREVIATIONS or word.split("-")[-1] in ABBREVIATIONS:
        return starter
    if _NUMBER.fullmatch(token):
        return not (lower or nxt in tuple(";:,.!?"))
    return True


def first_sentence(text: str) -> str:
    """The first sentence of `text` (see the module's docstring for how it approximates punkt)."""
    for m in _CANDIDATE.finditer(text):
        if _ends_sentence(m.group(), m.group("next") or m.group("after")):
            end = m.end()
            closers = _CLOSERS.match(text, end)
            return text[:closers.end(1) if closers else end]
    return text


def _rules(*pairs: tuple[str, str]) -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(p), r) for p, r in pairs]


# NLTK 3.3's TreebankWordTokenizer as word_tokenize runs it (with its Unicode-quote and final-period additions),
# stage by stage; each pattern pads a token with spaces, and the result is split on whitespace.
_STARTING_QUOTES = _rules(
    (r"([«“‘„]|[`]+)", r" \1 "),
    (r'^"', r"``"),
    (r"(``)", r" \1 "),
    (r"([ (\[{<])(\"|'{2})", r"\1 `` "))
_PUNCTUATION = _rules(
    (r"([^.])(\.)([\])}>\"'»”’ ]*)\s*$", r"\1 \2 \3 "),
    (r"([:,])([^\d])", r" \1 \2"),
    (r"([:,])$", r" \1 "),
    (r"\.\.\.", r" ... "),
    (r"[;@#$%&]", r" \g<0> "),
    (r"([^.])(\.)([\])}>\"']*)\s*$", r"\1 \2\3 "),
    (r"[?!]", r" \g<0> "),
    (r"([^'])' ", r"\1 ' "),
    (r"[\]\[(){}<>]", r" \g<0> "),
    (r"--", r" -- "))
_ENDING_QUOTES = _rules(
    (r"([»”’])", r" \1 "),
    (r'"', " '' "),
    (r"(\S)('')", r"\1 \2 "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "),
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "))
_CONTRACTIONS = _rules(*((p, r" \1 \2 ") for p in (
    r"(?i)\b(can)(not)\b", r"(?i)\b(d)('ye)\b", r"(?i)\b(gim)(me)\b", r"(?i)\b(gon)(na)\b", r"(?i)\b(got)(ta)\b",
    r"(?i)\b(lem)(me)\b", r"(?i)\b(mor)('n)\b", r"(?i)\b(wan)(na)\s", r"(?i) ('t)(is)\b", r"(?i) ('t)(was)\b")))


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: the vocabulary tokenizer of `tokens` views (VASE's and See, Hear, and
    Read's captions). `word_tokens` below is DSVE-loc's reference tokenizer, for word-vector lookups: each method
    keeps its reference's rule, both live here."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", text.lower())


def word_tokens(sentence: str) -> list[str]:
    """Treebank word tokens of one sentence (NLTK 3.3's `word_tokenize` rules, case kept)."""
    text = sentence
    for pattern, repl in _STARTING_QUOTES + _PUNCTUATION:
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _ENDING_QUOTES + _CONTRACTIONS:
        text = pattern.sub(repl, text)
    return text.split()


def sentence_tokens(text: str) -> list[str]:
    """The word tokens of the first sentence of `text`, as the reference's punkt + word_tokenize (approximated)."""
    return word_tokens(first_sentence(text))


# --- word vectors -----------------------------------------------------------------------------------------------

@dataclass(eq=False)
class WordVectors:
    """Fixed word vectors: `words[i]` has row `vectors[i]` (`[V, D]` float32); `index` maps a word to its row (the
    last row of a word listed twice, as the reference's dictionary)."""

    words: list[str]
    vectors: np.ndarray
    source: str = ""
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise ValueError(f"word vectors{' ' + self.source if self.source else ''}: {len(self.words)} words "
                             f"but vectors of shape {self.vectors.shape}")
        if self.vectors.dtype != np.float32:
            self.vectors = self.vectors.astype(np.float32)
        self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def dim(self) -> int:
        """The vectors' dimension D."""
        return int(self.vectors.shape[1])

    @property
    def unk(self) -> int | None:
        """The row of `UNK`, or None (unknown words then get a zero vector)."""
        return self.index.get(UNK)

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the words and the vectors (shape and float32 bytes), for cache keys."""
        h = hashlib.sha256()
        h.update(json.dumps(self.words).encode())
        h.update(json.dumps(list(self.vectors.shape)).encode())
        step = max(1, (1 << 24) // max(1, 4 * self.dim))  # 16 MiB of rows at a time (a memory-mapped table)
        for i in range(0, len(self.vectors), step):
            h.update(np.ascontiguousarray(self.vectors[i:i + step], dtype="<f4").tobytes())
        return h.hexdigest()

    def rows(self, tokens: Sequence[str]) -> list[int | None]:
        """Each token's row: exact word, then its lower case, then `UNK` (None where there is no UNK row)."""
        unk = self.unk
        return [self.index.get(t, self.index.get(t.lower(), unk)) for t in tokens]

    def lookup(self, tokens: Sequence[str]) -> np.ndarray:
        """The vectors `[L, D]` float32 of `tokens` (see `rows`; a zero vector where there is no row)."""
        rows = self.rows(tokens)
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        found = [i for i, r in enumerate(rows) if r is not None]
        if found:
            out[found] = self.vectors[[rows[i] for i in found]]
        return out

    def encode(self, text: str) -> np.ndarray:
        """The vectors `[L, D]` of the first sentence's tokens; one zero row for a text under 3 characters (the
        reference's rule for Visual Genome phrases) or with no token."""
        tokens = sentence_tokens(text) if len(text) >= 3 else []
        return self.lookup(tokens) if tokens else np.zeros((1, self.dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two words' vectors (gensim's `KeyedVectors.similarity`, which the VGS reference uses)."""
        va, vb = (self.vectors[self.index[w]].astype(np.float64) for w in (a, b))
        return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb) or 1.0))


def load_word_vectors(spec: str, vocabulary: Sequence[str] = (), dim: int = 620) -> WordVectors:
    """Word vectors from `spec`: a skip-thoughts directory, a word2vec binary or text file, a GloVe text file, or
    `random:SEED` (random vectors for `vocabulary` + UNK, `dim` wide: not pretrained). `vocabulary` and `dim` are used
    by `random:SEED` only; a file gives all its words at its own dimension."""
    spec = str(spec)
    if spec.startswith("random:"):
        try:
            seed = int(spec.split(":", 1)[1])
            if seed < 0:
                raise ValueError
        except ValueError:
            raise WordVectorsError(f"word vectors '{spec}': expected random:SEED with a non-negative integer seed, "
                                   "e.g. random:0") from None
        return random_word_vectors(seed, vocabulary, dim)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _read_skip_thoughts(path / "utable.npy", path / "dictionary.txt", path)
    if path.suffix == ".npy":  # the table itself: its dictionary.txt is beside it
        return _read_skip_thoughts(path, path.parent / "dictionary.txt", path)
    if not path.is_file():
        raise WordVectorsError(f"word vectors '{spec}': {path} does not exist. Accepted: {LAYOUTS}")
    if path.suffix == ".bin" or _binary_word2vec(path):
        return _read_word2vec_binary(path)
    return _read_text_vectors(path)


def training_vectors(spec: str, texts: Sequence[str], dim: int, min_count: int = 1) -> WordVectors:
    """A trainer's word vectors: the file `spec`, or for `random:SEED` vectors of the words seen at least `min_count`
    times in the training `texts` (their first sentences' tokens)."""
    if not str(spec).startswith("random:"):
        return load_word_vectors(spec, dim=dim)
    from collections import Counter

    counts = Counter(w for t in texts for w in sentence_tokens(t))
    return load_word_vectors(spec, vocabulary=sorted(w for w, n in counts.items() if n >= min_count), dim=dim)


def vectors_state(vectors: WordVectors, spec: str) -> dict[str, object]:
    """What a saved model records of its word vectors: their digest, and the words of `random:SEED` vectors (which
    `restore_vectors` draws again)."""
    return {"words": list(vectors.words) if str(spec).startswith("random:") else [], "vectors_digest": vectors.digest}


def restore_vectors(spec: str, state: dict, dim: int) -> WordVectors:
    """The word vectors a saved model was trained with (see `vectors_state`); a file that changed since is refused."""
    random = str(spec).startswith("random:")
    vectors = load_word_vectors(spec, vocabulary=[w for w in state["words"] if w != UNK] if random else (), dim=dim)
    if vectors.digest != state["vectors_digest"]:
        raise WordVectorsError(f"the word vectors '{spec}' differ from those this model was trained with (digest "
                               f"{vectors.digest[:12]} != {str(state['vectors_digest'])[:12]}): restore that file")
    return vectors


def random_word_vectors(seed: int, vocabulary: Sequence[str], dim: int) -> WordVectors:
    """Vectors drawn N(0, 1/dim) for each word of `vocabulary` (order kept, repeats dropped) and then UNK; a word's
    vector depends only on the seed and the word, so two vocabularies agree on the words they share."""
    words = [w for w in dict.fromkeys(vocabulary) if w != UNK] + [UNK]
    log.warning("WORD VECTORS random:%d ARE NOT PRETRAINED: %d random %d-d vectors, for tests and smoke runs only; "
                "give a skip-thoughts directory, a word2vec or a GloVe file for real results", seed, len(words), dim)
    vectors = np.empty((len(words), dim), dtype=np.float32)
    for i, w in enumerate(words):
        key = int.from_bytes(hashlib.sha256(w.encode("utf-8", "surrogatepass")).digest()[:8], "little")
        vectors[i] = np.random.default_rng([seed, key]).standard_normal(dim) / np.sqrt(dim)
    return WordVectors(words, vectors, f"random:{seed}")


def _error(path: Path, what: str) -> WordVectorsError:
    return WordVectorsError(f"word vectors {path}: {what}. Accepted: {LAYOUTS}")


def _read_skip_thoughts(table: Path, dictionary: Path, spec: Path) -> WordVectors:
    for p in (table, dictionary):
        if not p.is_file():
            raise _error(spec, f"{p} does not exist (a skip-thoughts directory holds utable.npy and dictionary.txt)")
    try:
        vectors = np.load(table, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" not in str(e) and "Python objects" not in str(e):  # np.load's words for object arrays
            raise _error(table, f"not a readable .npy file ({e})") from None
        raise _error(table, "holds a pickled object array (as the published skip-thoughts file may), which is not "
                     "loaded here because unpickling runs code. If you trust the file, convert it once: python -c "
                     "\"import numpy as np; a = np.load('utable.npy', allow_pickle=True, encoding='latin1'); "
                     "np.save('utable_f32.npy', np.vstack(list(a)).astype(np.float32))\", then replace utable.npy "
                     "with utable_f32.npy") from None
    if vectors.ndim != 2 or vectors.dtype.kind != "f":
        raise _error(table, f"expected a 2-D float array [V, D], got {vectors.dtype} of shape {vectors.shape}")
    # the reference reads the dictionary with readlines() in text mode and strips each line
    with open(dictionary, encoding="utf-8", errors="surrogateescape") as f:
        words = [line.strip() for line in f.readlines()]
    if len(words) != len(vectors):
        raise _error(spec, f"{dictionary.name} has {len(words)} lines but {table.name} has {len(vectors)} rows")
    return WordVectors(words, np.asarray(vectors, dtype=np.float32), str(spec))


def _binary_word2vec(path: Path) -> bool:
    """A 'V D' header followed by bytes that are not UTF-8 text (word2vec binary without the .bin suffix)."""
    with open(path, "rb") as f:
        head, chunk = f.readline(), f.read(4096)
    if len(head.split()) != 2 or not all(x.isdigit() for x in head.split()):
        return False
    try:
        chunk.decode("utf-8")
        return False
    except UnicodeDecodeError as e:
        return e.start < len(chunk) - 4  # not merely a character cut at the chunk's end


def _header(line: bytes, path: Path) -> tuple[int, int]:
    fields = line.split()
    if len(fields) != 2 or not all(x.isdigit() for x in fields):
        raise _error(path, f"the first line should be 'V D' (words, dimension), got {line[:60]!r}")
    n, d = int(fields[0]), int(fields[1])
    if d <= 0:
        raise _error(path, f"dimension {d} in the header")
    return n, d


def _read_word2vec_binary(path: Path) -> WordVectors:
    """word2vec's binary layout: 'V D\\n', then V times: the word, a space, D little-endian float32 (and, as the
    original tool writes, a newline)."""
    with open(path, "rb") as f:
        n, d = _header(f.readline(), path)
        start = f.tell()
        size = path.stat().st_size
        if size == start:
            buf: bytes | mmap.mmap = b""
        else:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    words, vectors = [], np.empty((n, d), dtype=np.float32)
    pos, width = start, 4 * d
    try:
        for i in range(n):
            while pos < size and buf[pos:pos + 1] in (b"\n", b"\r"):
                pos += 1
            space = buf.find(b" ", pos)
            if space < 0 or space + 1 + width > size:
                raise _error(path, f"the header promises {n} words of {d} floats but the file ends at word {i + 1} "
                             "(truncated, or not word2vec binary)")
            words.append(bytes(buf[pos:space]).decode("utf-8", "surrogateescape"))
            vectors[i] = np.frombuffer(buf, dtype="<f4", count=d, offset=space + 1)
            pos = space + 1 + width
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
    return WordVectors(words, vectors, str(path))


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for no, line in enumerate(f, 1):
            if line.strip():
                yield no, line


def _read_text_vectors(path: Path) -> WordVectors:
    """word2vec text ('V D' header) or GloVe (no header): 'word v1 ... vD' a line; a word may hold spaces (the
    last D fields are the vector)."""
    lines = _text_lines(path)
    first = next(lines, None)
    if first is None:
        raise _error(path, "the file is empty")
    header: tuple[int, int] | None = None
    fields = first[1].split()
    if len(fields) == 2 and all(x.isdigit() for x in fields):
        header = _header(first[1].encode(), path)
        d = header[1]
    else:
        d = len(fields) - 1
        lines = _chain(first, lines)
        if d < 1:
            raise _error(path, f"line {first[0]} has no vector")
    words: list[str] = []
    blocks: list[np.ndarray] = []
    numbers: list[str] = []

    def flush() -> None:
        try:
            blocks.append(np.array(numbers, dtype=np.float32).reshape(-1, d))
        except ValueError as e:
            raise _error(path, f"a vector holds something that is not a number ({e})") from None
        numbers.clear()

    for no, line in lines:
        parts = line.rsplit(None, d)
        if len(parts) != d + 1 or (" " in parts[0] and _is_number(parts[0].split()[-1])):
            raise _error(path, f"line {no} has {len(line.split()) - 1} values after the word, not {d} (ragged rows)")
        words.append(parts[0].strip())
        numbers.extend(parts[1:])
        if len(numbers) >= 1 << 20:
            flush()
    flush()
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, d), np.float32)
    if header is not None and header[0] != len(words):
        raise _error(path, f"the header promises {header[0]} words but the file holds {len(words)}")
    return WordVectors(words, vectors, str(path))


def _chain(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
