"""A tiny CLIP made here (no weights can be downloaded): a `transformers` CLIPConfig with
2-layer text and vision towers of width 32, 16-d projections, random weights from a
seed, a byte-level BPE tokenizer trained on a few shape words, and a CLIP processor for
32x32 images; saved as a folder sentence-transformers loads as a text-and-image model.
The groundwork of issue 27 (images): its tests embed and search images with it."""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "an", "the", "small", "large", "tiny", "red", "green", "blue", "yellow", "black", "white", "circle", "square", "triangle", "star", "at", "top", "bottom", "left", "right", "center", "of", "photo", "picture", "shape"]  # fmt: skip


def make_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Write the tiny CLIP into `folder` (a model folder sentence-transformers loads)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizerFast,
    )

    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))],
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|startoftext|>", "<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = CLIPTokenizerFast(
        tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=32,
    )  # fmt: skip
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 32, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder
