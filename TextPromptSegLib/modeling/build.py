"""One factory for TGSAM-2: config (preset name, dataclass, or checkpoint folder) -> model in eval mode.

SAM-2's modules are constructed directly from our dataclass config with the hyper-parameters of the official
SAM-2.1 YAML files (no Hydra compose). Importing ``sam2`` initialises Hydra globally; that happens here, when a
model is built, never when TextPromptSegLib is imported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

from .config import TGSAM2Config, get_config

log = logging.getLogger(__name__)

ConfigLike = Union[str, Path, TGSAM2Config]


def _sam2_components(cfg: TGSAM2Config) -> dict:
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.transformer import RoPEAttention

    h, d, fs = cfg.hiera, cfg.d_model, cfg.memory_size
    if cfg.backbone == "litemedsam":
        from .litemedsam import TinyViTEncoder

        image_encoder = TinyViTEncoder()
    else:
        trunk = Hiera(
            embed_dim=h.embed_dim, num_heads=h.num_heads, stages=tuple(h.stages),
            global_att_blocks=tuple(h.global_att_blocks),
            window_pos_embed_bkg_spatial_size=tuple(h.window_pos_embed_bkg_spatial_size),
            window_spec=tuple(h.window_spec),
        )
        channels = [h.embed_dim * 2**i for i in (3, 2, 1, 0)]
        neck = FpnNeck(
            position_encoding=PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None, temperature=10000),
            d_model=d, backbone_channel_list=channels, fpn_top_down_levels=[2, 3], fpn_interp_model="nearest",
        )
        image_encoder = ImageEncoder(trunk=trunk, neck=neck, scalp=1)

    def rope(**extra):
        return RoPEAttention(rope_theta=10000.0, feat_sizes=[fs, fs], embedding_dim=d, num_heads=1,
                             downsample_rate=1, dropout=0.1, **extra)

    layer = MemoryAttentionLayer(
        activation="relu", cross_attention=rope(rope_k_repeat=True, kv_in_dim=cfg.mem_dim), d_model=d,
        dim_feedforward=cfg.memory_attention_ff, dropout=0.1, pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False, self_attention=rope(),
    )
    memory_attention = MemoryAttention(d_model=d, pos_enc_at_input=True, layer=layer,
                                       num_layers=cfg.memory_attention_layers)
    memory_encoder = MemoryEncoder(
        out_dim=cfg.mem_dim,
        position_encoding=PositionEmbeddingSine(num_pos_feats=cfg.mem_dim, normalize=True, scale=None,
                                                temperature=10000),
        # the mask (image_size) is brought down to the memory's token map
        mask_downsampler=MaskDownSampler(embed_dim=d, kernel_size=3, stride=2, padding=1,
                                         total_stride=cfg.image_size // cfg.memory_size),
        fuser=Fuser(CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
                    num_layers=2),
        in_dim=d,
    )
    return {
        "image_encoder": image_encoder,
        "memory_attention": memory_attention,
        "memory_encoder": memory_encoder,
        "num_maskmem": cfg.num_maskmem,
        "image_size": cfg.image_size,
        "backbone_stride": cfg.backbone_stride,
        "sigmoid_scale_for_mem_enc": 20.0,
        "sigmoid_bias_for_mem_enc": -10.0,
        "use_mask_input_as_output_without_sam": True,
        "directly_add_no_mem_embed": True,
        "no_obj_embed_spatial": True,
        "use_high_res_features_in_sam": cfg.high_res_features,
        "multimask_output_in_sam": cfg.multimask_output,
        "iou_prediction_use_sigmoid": cfg.backbone != "litemedsam",  # SAM-1's IoU head has no sigmoid
        "use_obj_ptrs_in_encoder": True,
        "add_tpos_enc_to_obj_ptrs": True,
        "proj_tpos_enc_in_obj_ptrs": True,
        "use_signed_tpos_enc_to_obj_ptrs": True,
        "only_obj_ptrs_in_the_past_for_eval": True,
        "pred_obj_scores": True,
        "pred_obj_scores_mlp": True,
        "fixed_no_obj_ptr": True,
        "multimask_output_for_tracking": cfg.multimask_output,
        "use_multimask_token_for_obj_ptr": True,
        "multimask_min_pt_num": 0,
        "multimask_max_pt_num": 1,
        "use_mlp_for_obj_ptr_proj": True,
        "compile_image_encoder": False,
    }


def build_sam2(config: ConfigLike, device: str = "cpu"):
    """A plain ``SAM2Base`` with the same architecture (the reference for equivalence tests)."""
    from sam2.modeling.sam2_base import SAM2Base

    cfg = config if isinstance(config, TGSAM2Config) else get_config(str(config))
    model = SAM2Base(**_sam2_components(cfg))
    return model.to(device).eval()


def build_model(config: ConfigLike = "hiera_s", checkpoint: Optional[Union[str, Path]] = None,
                device: str = "cpu", text_encoder=None):
    """Build a TGSAM-2 in eval mode.

    config: a preset name (``tiny``, ``small``, ``hiera_t|s|b+|l``), a ``TGSAM2Config``, or a checkpoint folder
        (``config.json`` + ``model.safetensors``; then ``checkpoint`` defaults to it).
    checkpoint: our safetensors checkpoint (file or folder) or an official SAM-2 ``.pt`` (SAM-2 part only).
    text_encoder: an already built ``TextEncoder`` to share (else built from ``config.text``).
    """
    from .checkpoint import load_checkpoint, load_official_sam2, read_config
    from .text_encoder import TextEncoder
    from .tgsam2 import TGSAM2

    if isinstance(config, (str, Path)) and Path(config).exists():
        checkpoint = checkpoint or config
        cfg = read_config(Path(config))
    elif isinstance(config, TGSAM2Config):
        cfg = config
    else:
        cfg = get_config(str(config))
    if text_encoder is None:
        text_encoder = TextEncoder(cfg.text)
    cfg.text.hidden_size = text_encoder.hidden_size
    model = TGSAM2(cfg, text_encoder, text_encoder.hidden_size, **_sam2_components(cfg))
    if cfg.backbone == "litemedsam":
        from .litemedsam import load_pretrained

        load_pretrained(model)  # from the installed package, SHA-256 checked; our checkpoint holds the rest
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.suffix == ".pt":
            load_official_sam2(model, path)
        else:
            load_checkpoint(model, path)
    log.debug("built %s (%d parameters)", cfg.name, sum(p.numel() for p in model.parameters()))
    return model.to(device).eval()
