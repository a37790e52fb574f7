"""The tokenizer a family trains with: the tokenize stage's tokenizer plus the objective's own tokens.

T5's span corruption needs sentinel tokens (`<extra_id_0>`, `<extra_id_1>`, ...), BERT's masking a mask
token. They are added to a copy of the tokenizer, which is exported with the model, so the model's
vocabulary and its tokenizer always agree.
"""

from __future__ import annotations

from pipelines.models import Vocab
from pipelines.train.objectives import ObjectiveSpec

MASK_TOKEN = "<mask>"


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


def family_tokenizer(tokenizer, family: str, num_sentinels: int = 100):
    """Add the objective's tokens to `tokenizer` (in place) and return it."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # packing pads with eos when the tokenizer has no pad
    if family == "encoder-decoder":
        missing = [
            sentinel(i)
            for i in range(num_sentinels)
            if tokenizer.convert_tokens_to_ids(sentinel(i)) in (None, tokenizer.unk_token_id)
        ]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
    elif family == "encoder" and tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    return tokenizer


def objective_spec(
    tokenizer,
    family: str,
    vocab_size: int,
    *,
    num_sentinels: int = 100,
    mlm_probability: float = 0.15,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> ObjectiveSpec:
    """The objective's token ids, from a tokenizer `family_tokenizer` prepared."""
    sentinels = ()
    if family == "encoder-decoder":
        sentinels = tuple(tokenizer.convert_tokens_to_ids(sentinel(i)) for i in range(num_sentinels))
    return ObjectiveSpec(
        family=family,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        vocab_size=vocab_size,
        special_ids=tuple(sorted(set(tokenizer.all_special_ids) | set(sentinels))),
        mask_id=tokenizer.mask_token_id if family == "encoder" else None,
        sentinel_ids=sentinels,
        mlm_probability=mlm_probability,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
    )


def vocab_of(tokenizer) -> Vocab:
    return Vocab(
        size=len(tokenizer),
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        bos_id=tokenizer.bos_token_id,
    )
