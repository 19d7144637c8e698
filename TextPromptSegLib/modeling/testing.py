"""Small random-weight models for tests, benchmarks and the Slicer self-test (no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORDS = (
    "a an the of in on with and or to is are from left right upper lower bright dark disc square round circle "
    "small large object region organ structure lesion tumour tumor mass left atrium heart spleen liver kidney "
    "lung aorta bladder prostate polyp sarcoma necrosis edema oedema enhancing core whole brain bone muscle "
    "vessel cyst nodule wall colon reddish protrusion bean shaped abdomen gland cavity chamber"
).split()


def make_tiny_text_encoder(folder: Path, hidden_size: int = 32, seed: int = 0) -> Path:
    """Save a tiny BERT (1 layer, ``hidden_size``) with a small WordPiece vocabulary into ``folder``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS), *"abcdefghijklmnopqrstuvwxyz"]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden_size, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_model(text_encoder_dir: Path, seed: int = 0, **config_overrides: Any):
    """A randomly initialised tiny TGSAM-2 (adapters at zero) on CPU in eval mode."""
    import torch

    from .build import build_model
    from .config import TextEncoderConfig, get_config

    config = get_config("tiny", **config_overrides)
    config.text = TextEncoderConfig(model_id_or_path=str(text_encoder_dir), max_length=16)
    torch.manual_seed(seed)
    return build_model(config, device="cpu")


def build_tiny_tpp(text_encoder_dir: Path, seed: int = 0, **config_overrides: Any):
    """A randomly initialised tiny TPP (``tpp_config("tiny")``, 128 px) with the tiny text encoder, on CPU in eval
    mode."""
    import torch

    from .tpp import build_tpp, tpp_config

    config = tpp_config("tiny", text={"model_id_or_path": str(text_encoder_dir), "max_length": 16}, **config_overrides)
    torch.manual_seed(seed)
    return build_tpp(config)
