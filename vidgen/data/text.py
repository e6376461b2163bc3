"""A word-level tokenizer for closed vocabularies such as the Shapes world's captions."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

WORDS = (  # the Shapes world plus a few common words
    "a an and the red green blue yellow magenta cyan white circle square triangle moves left right up down "
    "stays still cat dog runs jumps over on in of with is"
).split()


def word_tokenizer(words=WORDS, max_length: int = 16) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (``tokenizers`` library) that appends ``</s>``, like T5's."""
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )
