"""Tokenizers: CLIP BPE against open_clip, a locally built Hugging Face tokenizer, word level, truncation, checks."""

import pytest
import torch

import probclip
from probclip.tokenizers import (
    ClipBPETokenizer,
    HFTokenizer,
    TextTooLongError,
    TextTruncationWarning,
    WordTokenizer,
    canonicalize_text,
    tokenizer_from_config,
)

WORDS = ["a", "photo", "of", "cat", "dog", "red", "square", "the", "on", "table"]


@pytest.fixture(scope="module")
def local_hf_tokenizer(tmp_path_factory):
    """A T5-like word-level tokenizer (pad 0, eos 1 appended, unk 2, one extra id) saved in a temporary directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab[word] = len(vocab)
    vocab["<extra_id_0>"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=["<extra_id_0>"],
    )
    path = tmp_path_factory.mktemp("hf_tokenizer")
    wrapped.save_pretrained(str(path))
    return path, vocab


def test_canonicalize_cleaning():
    assert canonicalize_text("  A Photo,   of_a  CAT!! &amp;amp; ") == "a photo of a cat"
    assert canonicalize_text("caf\u00c3\u00a9 \t time") == "caf\u00e9 time"  # ftfy repairs mojibake


@pytest.mark.parametrize(
    "text", ["Hello,  World!", "snake_case &amp;amp; \u00c3\u00a9t\u00c3\u00a9", "  A\tB\nC  ", "(x) [y] {z}!?"]
)
def test_canonicalize_agrees_with_open_clip(text):
    from open_clip.tokenizer import get_clean_fn

    assert canonicalize_text(text) == get_clean_fn("canonicalize")(text)


def test_clip_bpe_without_cleaning_keeps_case():
    raw, lowered = ClipBPETokenizer(8, clean=None), ClipBPETokenizer(8)
    assert not torch.equal(raw(["CAT"]), lowered(["CAT"]))
    assert torch.equal(raw(["cat"]), lowered(["cat"]))


def test_clip_bpe_matches_open_clip_including_truncation():
    import open_clip

    texts = ["a red square", "Two BLUE circles, left of a star!", " ".join(["word"] * 40)]
    tokenizer = ClipBPETokenizer(context_length=16)
    with pytest.warns(TextTruncationWarning, match="1 text"):
        ours = tokenizer(texts)
    reference = open_clip.tokenizer.tokenize(texts, context_length=16)
    assert torch.equal(ours, reference)
    assert tokenizer.pad_id == 0 and ours.shape == (3, 16) and ours.dtype == torch.long


def test_truncate_false_names_the_text_and_lengths():
    tokenizer = ClipBPETokenizer(context_length=8)
    with pytest.raises(TextTooLongError, match=r"'one two three four five six seven' has 9 tokens.*context length 8"):
        tokenizer(["short", "one two three four five six seven"], truncate=False)


def test_context_length_checked_against_the_model():
    model_cfg = probclip.models.get_model_config("ProLIP-Tiny")
    with pytest.raises(ValueError, match="exceeds the model's context length 32"):
        tokenizer_from_config(model_cfg.text, context_length=64)
    tokenizer = probclip.get_tokenizer("ProLIP-Tiny")
    assert tokenizer.context_length == 32 and tokenizer.mask_id == 49408
    assert tokenizer(["a cat"], context_length=10).shape == (1, 10)
    with pytest.raises(ValueError, match="outside what this tokenizer/model supports"):
        tokenizer(["a cat"], context_length=40)


def test_tokenizer_that_does_not_fit_the_model_is_refused(official_dir):
    with pytest.raises(ValueError, match=r"vocabulary \(49408 ids\) exceeds the model's vocab_size \(512\)"):
        probclip.get_tokenizer(str(official_dir / "tiny-official"))


def test_hf_tokenizer_from_local_path_with_canonicalize(local_hf_tokenizer):
    path, vocab = local_hf_tokenizer
    tokenizer = HFTokenizer(str(path), context_length=8, clean="canonicalize", mask_token="<extra_id_0>")
    assert tokenizer.pad_id == 0 and tokenizer.mask_id == vocab["<extra_id_0>"] and tokenizer.num_special == 1
    ids = tokenizer(["A Photo, of_a CAT!", "the dog"])
    expected_first = [vocab[w] for w in ["a", "photo", "of", "a", "cat"]] + [1, 0, 0]
    assert ids[0].tolist() == expected_first
    assert ids[1].tolist() == [vocab["the"], vocab["dog"], 1, 0, 0, 0, 0, 0]
    with pytest.warns(TextTruncationWarning):
        long_ids = tokenizer(["a photo of a red square on the table"])
    assert long_ids[0].tolist() == [vocab[w] for w in ["a", "photo", "of", "a", "red", "square", "on"]] + [1]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer(str(path), context_length=8, mask_token="<extra_id_7>")


def test_model_configured_with_a_local_hf_tokenizer(local_hf_tokenizer):
    path, vocab = local_hf_tokenizer
    model = probclip.create_model(
        "ProLIP-Tiny",
        text={"tokenizer": {"type": "hf", "name": str(path), "clean": "canonicalize"}, "vocab_size": len(vocab),
              "pad_id": 0, "mask_id": vocab["<extra_id_0>"], "context_length": 12},
    )
    tokenizer = probclip.get_tokenizer(model)
    assert tokenizer.context_length == 12 and tokenizer.mask_id == vocab["<extra_id_0>"]
    assert model.encode_text(tokenizer(["a cat on the table"])).shape == (1, 64)


def test_missing_hf_tokenizer_error_names_it(tmp_path):
    with pytest.raises(OSError, match="could not load the Hugging Face tokenizer"):
        HFTokenizer(str(tmp_path / "nothing-here"), context_length=8)


def test_word_tokenizer_ids_unknown_and_model_vocab():
    tokenizer = WordTokenizer(WORDS, context_length=6)
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.mask_id, tokenizer.vocab_size) == (0, 1, 2, 13)
    ids = tokenizer(["A red, red Square!", "zebra cat"])
    assert ids.tolist() == [[3, 8, 8, 9, 0, 0], [1, 6, 0, 0, 0, 0]]
    assert tokenizer.unknown_words("zebra cat") == ["zebra"]
    assert tokenizer.decode(ids[0]) == "a red red square"
    model = probclip.create_model("ProLIP-Tiny-Word", word_vocab=WORDS)
    assert model.config.text.vocab_size == 13
    model_tok = probclip.get_tokenizer(model)
    assert torch.equal(model_tok(["a red square"])[:, :6], tokenizer(["a red square"]))
    with pytest.raises(ValueError, match="duplicates"):
        WordTokenizer(["cat", "Cat"])


def test_unknown_tokenizer_source_lists_models():
    with pytest.raises(KeyError, match="ProLIP-Tiny"):
        probclip.get_tokenizer("no-such-model")
