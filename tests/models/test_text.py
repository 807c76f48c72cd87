"""The download-free tokenizer (first sentence, Treebank tokens as NLTK 3.3 gives them), the word lookup, and the
word-vector readers: each layout built tiny here loads to the same vectors; broken files give one clear error."""
import ast
import logging
import struct
from pathlib import Path

import numpy as np
import pytest

from models.common.text import UNK, WordVectors, WordVectorsError, load_word_vectors, sentence_tokens

# expected tokens: what NLTK 3.3's punkt + word_tokenize give (the word part checked against NLTK 3.3 itself)
CASES = {
    "A man riding a bike.": ["A", "man", "riding", "a", "bike", "."],
    "Two dogs aren't playing; they're sleeping, aren't they?":
        ["Two", "dogs", "are", "n't", "playing", ";", "they", "'re", "sleeping", ",", "are", "n't", "they", "?"],
    "The cat's toy isn't the dog's.": ["The", "cat", "'s", "toy", "is", "n't", "the", "dog", "'s", "."],
    "I can't, we cannot.": ["I", "ca", "n't", ",", "we", "can", "not", "."],
    'He said "hello" to the (small) cat -- twice!':
        ["He", "said", "``", "hello", "''", "to", "the", "(", "small", ")", "cat", "--", "twice", "!"],
    "It costs $3.50 at 5:30.": ["It", "costs", "$", "3.50", "at", "5:30", "."],
    "The DOG's BALL": ["The", "DOG", "'s", "BALL"],
    # two sentences: the first is kept
    "A dog runs. The cat sleeps.": ["A", "dog", "runs", "."],
    "a dog on a couch. a cat nearby.": ["a", "dog", "on", "a", "couch", "."],
    "What? No way.": ["What", "?"],
    "Really?! yes": ["Really", "?", "!"],
    '"Stop!" he said. Then he left.': ["``", "Stop", "!", "''"],
    # abbreviations, initials, decimals, numbers
    "Mr. Smith walks a dog. He is happy.": ["Mr.", "Smith", "walks", "a", "dog", "."],
    "J. R. R. Tolkien wrote it. The end.": ["J.", "R.", "R.", "Tolkien", "wrote", "it", "."],
    "Toys, e.g. a ball, etc. and more. Next": ["Toys", ",", "e.g.", "a", "ball", ",", "etc.", "and", "more", "."],
    "It weighs 3.5 kg. Nice.": ["It", "weighs", "3.5", "kg", "."],
    "Born in 1999. The end.": ["Born", "in", "1999", "."],
    "Built in 1999. the end": ["Built", "in", "1999.", "the", "end"],
    "no end mark here": ["no", "end", "mark", "here"],
    "": [],
    "   ": [],
}


@pytest.mark.parametrize("text", list(CASES))
def test_sentence_tokens(text):
    assert sentence_tokens(text) == CASES[text]


def _vectors(dim: int = 3, unk: bool = True) -> WordVectors:
    words = ["dog", "Cat", "café"] + ([UNK] if unk else [])
    rng = np.random.default_rng(0)
    return WordVectors(words, rng.standard_normal((len(words), dim)).astype(np.float32))


def test_lookup_exact_then_lower_case_then_unk():
    wv = _vectors()
    out = wv.lookup(["dog", "Dog", "Cat", "cat", "zebra", "café"])
    assert out.shape == (6, 3) and out.dtype == np.float32
    rows = [0, 0, 1, 3, 3, 2]  # "Dog" -> "dog"; "cat" has no lower-case entry -> UNK
    np.testing.assert_array_equal(out, wv.vectors[rows])
    assert wv.rows(["Dog", "zebra"]) == [0, 3] and wv.unk == 3 and wv.dim == 3 and len(wv) == 4
    assert wv.lookup([]).shape == (0, 3)


def test_lookup_without_unk_row_gives_zero_vectors():
    wv = _vectors(unk=False)
    out = wv.lookup(["zebra", "dog"])
    np.testing.assert_array_equal(out[0], np.zeros(3))
    np.testing.assert_array_equal(out[1], wv.vectors[0])
    assert wv.unk is None


def test_encode_first_sentence_and_short_texts():
    wv = _vectors()
    np.testing.assert_array_equal(wv.encode("dog Cat. zebra dog"), wv.vectors[[0, 1, 3]])  # dog Cat .(UNK)
    for short in ("", "a", "ab", "   "):
        out = wv.encode(short)
        assert out.shape == (1, 3) and not out.any()
    assert wv.encode("dog").shape == (1, 3) and wv.encode("dog").any()


def test_digest_follows_words_and_vectors():
    wv = _vectors()
    same = WordVectors(list(wv.words), wv.vectors.copy())
    assert wv.digest == same.digest and len(wv.digest) == 64
    other = wv.vectors.copy()
    other[1, 2] += 1e-3
    assert WordVectors(list(wv.words), other).digest != wv.digest
    assert WordVectors(["dog", "cat", "café", UNK], wv.vectors).digest != wv.digest


# --- the file layouts -------------------------------------------------------------------------------------------

def _write_skip_thoughts(folder: Path, wv: WordVectors) -> Path:
    folder.mkdir()
    np.save(folder / "utable.npy", wv.vectors)
    (folder / "dictionary.txt").write_text("".join(w + "\n" for w in wv.words), encoding="utf-8")
    return folder


def _write_word2vec_binary(path: Path, wv: WordVectors) -> Path:
    with open(path, "wb") as f:
        f.write(f"{len(wv)} {wv.dim}\n".encode())
        for w, v in zip(wv.words, wv.vectors):
            f.write(w.encode() + b" " + struct.pack(f"<{wv.dim}f", *v) + b"\n")
    return path


def _write_text(path: Path, wv: WordVectors, header: bool) -> Path:
    lines = [f"{len(wv)} {wv.dim}"] if header else []
    lines += [w + " " + " ".join(repr(float(x)) for x in v) + " " for w, v in zip(wv.words, wv.vectors)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_every_layout_loads_to_the_same_vectors(tmp_path):
    wv = _vectors(dim=4)
    specs = [_write_skip_thoughts(tmp_path / "st", wv), tmp_path / "st" / "utable.npy",
             _write_word2vec_binary(tmp_path / "vectors.bin", wv),
             _write_word2vec_binary(tmp_path / "vectors.w2v", wv),  # binary without the .bin suffix
             _write_text(tmp_path / "vectors.txt", wv, header=True),
             _write_text(tmp_path / "glove.txt", wv, header=False)]
    for spec in specs:
        loaded = load_word_vectors(str(spec))
        assert loaded.words == wv.words, spec
        assert loaded.vectors.dtype == np.float32
        np.testing.assert_array_equal(loaded.vectors, wv.vectors, err_msg=str(spec))
        assert loaded.digest == wv.digest
        np.testing.assert_array_equal(loaded.encode("Dog and café"), wv.vectors[[0, 3, 2]])


def test_glove_words_may_hold_spaces(tmp_path):
    path = tmp_path / "glove.840B.txt"
    path.write_text("the 0.5 -1\n. . . 1e-3 2\nnew york 3 4\n", encoding="utf-8")
    wv = load_word_vectors(str(path))
    assert wv.words == ["the", ". . .", "new york"]
    np.testing.assert_array_equal(wv.vectors, np.array([[0.5, -1], [1e-3, 2], [3, 4]], np.float32))


def test_random_vectors_are_seeded_per_word_and_cover_the_vocabulary(caplog):
    with caplog.at_level(logging.WARNING, logger="models.common.text"):
        a = load_word_vectors("random:3", ["dog", "cat", "dog", UNK], dim=16)
    assert "NOT PRETRAINED" in caplog.text
    assert a.words == ["dog", "cat", UNK] and a.vectors.shape == (3, 16) and a.vectors.dtype == np.float32
    b = load_word_vectors("random:3", ["dog", "cat"], dim=16)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.digest == b.digest
    c = load_word_vectors("random:3", ["zebra", "cat"], dim=16)  # a word's vector is the same in any vocabulary
    np.testing.assert_array_equal(c.vectors[1], a.vectors[1])
    assert not np.allclose(load_word_vectors("random:4", ["dog", "cat"], dim=16).vectors, a.vectors)
    big = load_word_vectors("random:0", [f"w{i}" for i in range(400)], dim=64)
    assert abs(big.vectors.std() - 1 / 8) < 0.01  # N(0, 1/dim)
    for bad in ("random:x", "random:-1"):
        with pytest.raises(WordVectorsError, match="random:SEED"):
            load_word_vectors(bad)


def _file(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _dir_without_dictionary(path: Path) -> Path:
    path.mkdir()
    np.save(path / "utable.npy", np.zeros((2, 3), np.float32))
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: _dir_without_dictionary(p / "st"), "dictionary.txt does not exist"),
    (lambda p: _file(p / "g.txt", "dog 1 2 3\ncat 1 2\n"), "line 2 has 2 values"),
    (lambda p: _file(p / "g.txt", "dog 1 2 3\ncat 1 2 3 4\n"), "line 2 has 4 values"),
    (lambda p: _file(p / "g.txt", "dog 1 2 3\ncat 1 x 3\n"), "not a number"),
    (lambda p: _file(p / "w.txt", "3 2\ndog 1 2\ncat 1 2\n"), "promises 3 words"),
    (lambda p: _file(p / "w.bin", b"2 3\ndog " + struct.pack("<3f", 1, 2, 3) + b"\ncat \x00\x00"), "ends at word 2"),
    (lambda p: _file(p / "w.bin", "not a header\n"), "'V D'"),
    (lambda p: _file(p / "empty.txt", ""), "empty"),
])
def test_broken_files_give_one_clear_error(tmp_path, make, message):
    spec = make(tmp_path)
    with pytest.raises(WordVectorsError, match=message) as e:
        load_word_vectors(str(spec))
    assert str(spec) in str(e.value) and "skip-thoughts" in str(e.value) and "GloVe" in str(e.value)


def test_skip_thoughts_rows_must_match_lines(tmp_path):
    folder = _write_skip_thoughts(tmp_path / "st", _vectors())
    (folder / "dictionary.txt").write_text("dog\ncat\n")
    with pytest.raises(WordVectorsError, match="2 lines but utable.npy has 4 rows"):
        load_word_vectors(str(folder))


def test_pickled_utable_is_refused_with_a_conversion_hint(tmp_path):
    folder = tmp_path / "st"
    folder.mkdir()
    rows = np.empty(2, dtype=object)
    rows[0], rows[1] = np.ones(3, np.float32), np.zeros(3, np.float32)
    np.save(folder / "utable.npy", rows, allow_pickle=True)
    (folder / "dictionary.txt").write_text("dog\ncat\n")
    with pytest.raises(WordVectorsError, match="pickled object array") as e:
        load_word_vectors(str(folder))
    assert "np.vstack" in str(e.value) and "encoding='latin1'" in str(e.value)


def test_text_module_never_imports_torch():
    tree = ast.parse((Path(__file__).resolve().parents[2] / "models" / "common" / "text.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(n.split(".")[0] == "torch" for n in names)
