"""TGSAM-2: SAM-2 with a text prompt, text-conditioned visual perception (TCVP) and a text-tracking memory
encoder (TTME), after Yuan et al., MICCAI 2025 (``../shared/seeds/TGSAM-2_paper.txt``, section 2).

The model *is* a ``sam2.modeling.sam2_base.SAM2Base``: Hiera image encoder + FPN neck, memory attention,
memory encoder, prompt encoder, mask decoder and SAM-2's tracking step are sam2's own modules. The text enters
at three places, each through a zero-initialised gate or output projection, so that an untrained TGSAM-2
computes exactly what the underlying SAM-2 computes and official SAM-2 checkpoints work from day one:

* Text prompt (Eq. 3), ``TextPromptEmbedding``: token features T (L x C) -> W (C -> D) -> attention-based
  token aggregation -> + a learned prompt-type embedding. The L tokens are appended to the decoder's sparse
  prompt tokens (after any point/box tokens) on every frame. An extra token changes the softmax normalisation
  of every attention that reads it even when its value is zero, so the decoder attentions that use tokens as
  keys (token self-attention and image->token cross-attention) weight text keys multiplicatively by a learned
  gate g >= 0: ``w_j = m_j exp(s_j) / sum_k m_k exp(s_k)`` with m = 1 for SAM-2's tokens and m = g for text
  tokens (0 for padding). g = 0 (the initial value) is exactly SAM-2, and dL/dg is non-zero there.
* TCVP (Eq. 4): multi-head cross-attention between the text tokens and the lowest-resolution map f_N
  (stride 16), then transposed convolutions (+GELU) carrying the conditioning into the two higher-resolution
  FPN levels that SAM-2's decoder uses. The paper writes text as the query (``f_N := MHCA(T, f_N)``), which
  gives L tokens, not a map. Default reading (``tcvp_mode="visual_query"``): every f_N position queries the
  text tokens, and the attended text is added back through a zero-initialised projection. Literal reading
  (``"text_query"``): the text tokens query f_N; each position then reads the updated tokens back by
  similarity. Either way ``f_N + Delta``, ``f_{N-1} + P1(GELU(DeConv1(Delta)))``, ``f_{N-2} +
  P2(DeConv2(GELU(DeConv1(Delta))))`` with P1, P2 zero-initialised 1x1 convolutions.
* TTME (Eqs. 5-6): SAM-2's memory encoder already is the mask downsampler (p=4 x Conv-LN-GELU), the
  ``Conv(mask) + f_N`` sum, and a fuser of q=2 ConvNeXt blocks ``PwConv(LN(DwConv(x)))``; each fuser block
  here adds ``W T`` before its activation (``"sum"``), or uses ``x (1 + W T)`` (``"mul"``) or a projection of
  ``[x, W T]`` (``"concat"``), W zero-initialised.

SAM2Base's private methods do not take text, so the text reaches the prompt encoder, the decoder attentions
and the memory encoder through :meth:`TGSAM2.text_context`. The modules involved are switched to small
subclasses (``_TextPromptEncoder``, ``_KeyGatedAttention``, ``_TextCXBlock``) that add no parameters of
their own, so state-dict keys stay those of SAM-2 plus the adapters (``text_prompt.*``, ``tcvp.*``,
``memory_encoder.fuser.layers.N.tg_*``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from sam2.modeling.memory_encoder import CXBlock
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import Attention
from sam2.modeling.sam2_base import SAM2Base
from torch import Tensor, nn

from .config import TGSAM2Config

# SAM-2's image normalisation (ImageNet statistics on [0, 1] RGB)
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

ADAPTER_PREFIXES = ("text_prompt.", "tcvp.")


def is_adapter_key(key: str) -> bool:
    """True for the parameters TGSAM-2 adds to SAM-2 (everything else loads from a SAM-2 checkpoint)."""
    return key.startswith(ADAPTER_PREFIXES) or ".tg_" in key


@dataclass
class TextFeatures:
    """Encoded prompts, batch P (one row per prompt / object).

    tokens: (P, L, D) decoder sparse tokens (Eq. 3 output + prompt-type embedding)
    proj:   (P, L, D) projected token features W T (used by TCVP)
    mask:   (P, L) bool, True on real tokens
    pooled: (P, D) mean of the real projected tokens (used by TTME)
    """

    tokens: Tensor
    proj: Tensor
    mask: Tensor
    pooled: Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, index: int | slice | Tensor) -> TextFeatures:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TextFeatures(self.tokens[index], self.proj[index], self.mask[index], self.pooled[index])

    def expand(self, batch: int) -> TextFeatures:
        """Repeat a batch-1 text for ``batch`` frames or objects (no copy)."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot broadcast {len(self)} prompts to a batch of {batch}")
        return TextFeatures(
            self.tokens.expand(batch, -1, -1), self.proj.expand(batch, -1, -1),
            self.mask.expand(batch, -1), self.pooled.expand(batch, -1),
        )

    def to(self, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> TextFeatures:
        return TextFeatures(
            self.tokens.to(device, dtype), self.proj.to(device, dtype), self.mask.to(device),
            self.pooled.to(device, dtype),
        )

    def detach(self) -> TextFeatures:
        return TextFeatures(self.tokens.detach(), self.proj.detach(), self.mask, self.pooled.detach())


class TextPromptEmbedding(nn.Module):
    """Eq. 3: T_embed = Softmax(W_Q T_proj (W_K T_proj)^T / sqrt(D)) T_proj, T_proj = W T; plus a type embedding.

    Also owns the decoder gate g (see the module docstring).
    """

    def __init__(self, text_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(text_dim, dim)
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.type_embed = nn.Parameter(torch.randn(dim) * 0.02)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, feats: Tensor, mask: Tensor) -> TextFeatures:
        """feats (P, L, C) token features, mask (P, L) bool -> TextFeatures with D channels."""
        proj = self.proj(feats)
        logits = self.w_q(proj) @ self.w_k(proj).transpose(1, 2) / math.sqrt(proj.shape[-1])
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        tokens = torch.softmax(logits, dim=-1) @ proj + self.type_embed
        weights = mask.to(proj.dtype).unsqueeze(-1)
        pooled = (proj * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return TextFeatures(tokens=tokens, proj=proj, mask=mask, pooled=pooled)

    def key_weight(self, mask: Tensor) -> Tensor:
        """(P, L) multiplicative attention weight of the text keys in the decoder: g on real tokens, 0 on padding."""
        return self.gate.clamp(min=0.0) * mask.to(self.gate.dtype)


class TCVP(nn.Module):
    """Text-conditioned visual perception (Eq. 4) on SAM-2's FPN levels [stride 4, stride 8, stride 16]."""

    def __init__(self, dim: int, num_heads: int, mode: str = "visual_query", levels: int = 3) -> None:
        super().__init__()
        self.mode = mode
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.out = nn.Linear(dim, dim)
        zero_init = [self.out]
        if levels > 1:  # carry the conditioning into SAM-2's two higher-resolution levels
            self.up1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
            self.up2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
            self.act = nn.GELU()
            self.proj1 = nn.Conv2d(dim, dim, kernel_size=1)
            self.proj2 = nn.Conv2d(dim, dim, kernel_size=1)
            zero_init += [self.proj1, self.proj2]
        for layer in zero_init:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, fpn: Sequence[Tensor], pos_n: Tensor, text: TextFeatures) -> list[Tensor]:
        """fpn: [(B, D, 4h, 4w), (B, D, 2h, 2w), (B, D, h, w)] (or the last level alone, LiteMedSAM);
        pos_n (B, D, h, w); text batch 1 or B."""
        f_n = fpn[-1]
        b, c, h, w = f_n.shape
        text = text.expand(b)
        x = f_n.flatten(2).transpose(1, 2)  # (B, hw, D)
        q = x + pos_n.flatten(2).transpose(1, 2)
        pad = ~text.mask
        if self.mode == "visual_query":
            attended, _ = self.attn(q, text.proj, text.proj, key_padding_mask=pad, need_weights=False)
        else:  # the paper's literal notation: text queries vision, then each position reads the updated text
            updated, _ = self.attn(text.proj, q, x, need_weights=False)  # (B, L, D)
            sim = (x @ updated.transpose(1, 2)) / math.sqrt(c)
            attended = torch.softmax(sim.masked_fill(pad[:, None, :], float("-inf")), dim=-1) @ updated
        delta = self.out(attended).transpose(1, 2).reshape(b, c, h, w)
        out = list(fpn)
        out[-1] = f_n + delta
        if len(fpn) > 1:
            up1 = self.act(self.up1(delta))
            up2 = self.up2(up1)
            out[-2] = fpn[-2] + self.proj1(up1)
            out[-3] = fpn[-3] + self.proj2(up2)
        return out


class _TextPromptEncoder(PromptEncoder):
    """SAM-2's prompt encoder; appends the text tokens of the active text context to the sparse embeddings.

    With ``sam1_boxes`` a prompt holding box corners (labels 2 and 3) gets no padding point, as SAM-1 (and so
    LiteMedSAM) encodes a box; SAM2Base passes boxes as points with ``boxes=None``, which would append one.
    """

    text_tokens: Optional[Tensor] = None
    sam1_boxes: bool = False

    def forward(self, points, boxes, masks):  # noqa: D102 (same signature as PromptEncoder)
        if self.sam1_boxes and points is not None and boxes is None and bool((points[1] >= 2).any()):
            coords, labels = points
            sparse = self._embed_points(coords, labels, pad=False)
            if masks is not None:
                dense = self._embed_masks(masks)
            else:
                dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                    coords.shape[0], -1, self.image_embedding_size[0], self.image_embedding_size[1])
        else:
            sparse, dense = super().forward(points, boxes, masks)
        if self.text_tokens is not None:
            tokens = self.text_tokens.to(sparse.dtype)
            sparse = torch.cat([sparse, tokens.expand(sparse.shape[0], -1, -1)], dim=1)
        return sparse, dense


class _KeyGatedAttention(Attention):
    """SAM-2's decoder attention with the trailing text keys weighted by ``text_key_weight`` (B, L), and with
    ``readonly_lead`` the first key (SAM-2's object-score token) weighted 0: it reads, nothing reads it."""

    text_key_weight: Optional[Tensor] = None
    readonly_lead: bool = False

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        weight = self.text_key_weight
        if weight is None and not self.readonly_lead:
            return super().forward(q, k, v)
        if weight is None:
            weight = k.new_zeros(k.shape[0], 0)
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, heads, Nq, Nk)
        logits = logits - logits.amax(dim=-1, keepdim=True).detach()
        weight = weight.to(logits.dtype).expand(q.shape[0], -1)
        n_keys, n_text = k.shape[-2], weight.shape[1]
        mult = torch.cat([weight.new_ones(weight.shape[0], n_keys - n_text), weight], dim=1)
        if self.readonly_lead:
            mult = torch.cat([mult[:, :1] * 0, mult[:, 1:]], dim=1)
        mult = mult[:, None, None, :]
        attn = logits.exp() * mult
        attn = attn / attn.sum(dim=-1, keepdim=True)
        if self.training and self.dropout_p > 0:
            attn = F.dropout(attn, p=self.dropout_p)
        return self.out_proj(self._recombine_heads(attn @ v))


class _TextCXBlock(CXBlock):
    """A memory-encoder fuser block with text tracking (Eq. 6): Act(PwConv(LN(DwConv(x))) (+|*|cat) W T)."""

    text_vec: Optional[Tensor] = None
    fusion: str = "sum"

    def forward(self, x: Tensor) -> Tensor:
        text = self.text_vec
        if text is None:
            return super().forward(x)
        shortcut = x
        x = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # (B, H, W, C)
        x = self.pwconv1(x)
        t = self.tg_text(text.to(x.dtype))[:, None, None, :].expand(x.shape[0], -1, -1, -1)
        if self.fusion == "sum":
            x = x + t
        elif self.fusion == "mul":
            x = x * (1.0 + t)
        else:
            x = x + self.tg_concat(torch.cat([x, t.expand_as(x)], dim=-1))
        x = self.pwconv2(self.act(x))
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


def _pool_tokens(tokens: Tensor, h: int, w: int, pool: int) -> Tensor:
    """(h*w, B, C) tokens -> (h/pool * w/pool, B, C) by average pooling on the map."""
    b = tokens.shape[1]
    grid = tokens.permute(1, 2, 0).reshape(b, -1, h, w)
    return F.avg_pool2d(grid, pool).flatten(2).permute(2, 0, 1)


class TGSAM2(SAM2Base):
    """SAM-2 with text. See the module docstring; build it with ``modeling.build.build_model``.

    Images given to the model are normalised (B, 3, S, S) tensors (``normalize_images``); masks come back as
    logits at S x S (``pred_masks_high_res``) and at S/4 (``pred_masks``).
    """

    def __init__(self, config: TGSAM2Config, text_encoder: Optional[nn.Module], text_dim: int, **sam2_kwargs: Any):
        super().__init__(**sam2_kwargs)
        self.config = config
        self.text_encoder = text_encoder
        dim = self.hidden_dim
        self.text_prompt = TextPromptEmbedding(text_dim, dim)
        levels = 1 if config.backbone == "litemedsam" else 3  # the image encoder's levels (used or not by SAM)
        self.tcvp = TCVP(dim, config.tcvp_heads, config.tcvp_mode, levels) if config.use_tcvp else None
        self._gated_attention: list[_KeyGatedAttention] = []
        self._text_blocks: list[_TextCXBlock] = []
        if config.use_text_prompt or config.sam1_box_encoding:
            self.sam_prompt_encoder.__class__ = _TextPromptEncoder
            self.sam_prompt_encoder.sam1_boxes = config.sam1_box_encoding
        if config.use_text_prompt or config.obj_token_readonly:
            for layer in self.sam_mask_decoder.transformer.layers:
                for attn in (layer.self_attn, layer.cross_attn_image_to_token):
                    attn.__class__ = _KeyGatedAttention
                    attn.readonly_lead = config.obj_token_readonly
                    self._gated_attention.append(attn)
        if config.backbone == "litemedsam":
            with torch.no_grad():  # a conditioning frame is then exactly LiteMedSAM's (SAM2Base adds no_mem_embed)
                self.no_mem_embed.zero_()
        if config.memory_pool > 1:  # the memory's change reaches the decoder through a zero-initialised projection
            self.memory_delta = nn.Conv2d(dim, dim, kernel_size=1)
            nn.init.zeros_(self.memory_delta.weight)
            nn.init.zeros_(self.memory_delta.bias)
        if config.use_ttme:
            for block in self.memory_encoder.fuser.layers:
                block.__class__ = _TextCXBlock
                block.fusion = config.ttme_fusion
                hidden = block.pwconv1.out_features
                block.tg_text = nn.Linear(dim, hidden)
                if config.ttme_fusion == "concat":
                    block.tg_concat = nn.Linear(2 * hidden, hidden)
                    nn.init.zeros_(block.tg_concat.weight)
                    nn.init.zeros_(block.tg_concat.bias)
                else:
                    nn.init.zeros_(block.tg_text.weight)
                    nn.init.zeros_(block.tg_text.bias)
                self._text_blocks.append(block)
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    # ---------------------------------------------------------------- text
    def encode_text(self, prompts: Sequence[str]) -> TextFeatures:
        """Prompts -> TextFeatures (P rows). The frozen encoder runs without grad; the projection is trainable."""
        if self.text_encoder is None:
            raise RuntimeError("this model was built without a text encoder")
        feats, mask = self.text_encoder(list(prompts))
        return self.text_prompt(feats.to(self.image_mean.device), mask.to(self.image_mean.device))

    @contextmanager
    def text_context(self, text: Optional[TextFeatures]) -> Iterator[None]:
        """Make ``text`` (batch 1 or the tracking batch) visible to the sparse prompt and TTME inside."""
        self._set_text(text)
        try:
            yield
        finally:
            self._set_text(None)

    def _set_text(self, text: Optional[TextFeatures]) -> None:
        tokens = weight = pooled = None
        if text is not None:
            tokens = text.tokens
            weight = self.text_prompt.key_weight(text.mask)
            pooled = text.pooled
        if self.config.use_text_prompt:
            self.sam_prompt_encoder.text_tokens = tokens
            for attn in self._gated_attention:
                attn.text_key_weight = weight
        for block in self._text_blocks:
            block.text_vec = pooled

    # ---------------------------------------------------------------- images
    def normalize_images(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) RGB in [0, 1] -> SAM-2's normalised input (LiteMedSAM takes [0, 1] as it is)."""
        if self.config.backbone == "litemedsam":
            return images
        return (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype)

    def encode_backbone(self, images: Tensor) -> dict[str, Any]:
        """Hiera + FPN on normalised images (B, 3, S, S). Text-independent, so it can be batched and cached.

        Returns sam2's backbone_out: ``backbone_fpn`` [(B, D, S/4, S/4), (B, D, S/8, S/8), (B, D, S/16, S/16)],
        ``vision_pos_enc`` (same shapes), ``vision_features`` (= the last level), before the decoder's
        conv_s0 / conv_s1 projections.
        """
        return self.image_encoder(images)

    def condition_backbone(self, backbone_out: dict[str, Any], text: Optional[TextFeatures]) -> dict[str, Any]:
        """TCVP (when enabled and text is given) then the decoder's high-res projections.

        With ``text=None`` (or TCVP disabled) this is exactly SAM-2's ``forward_image`` output.
        """
        fpn = list(backbone_out["backbone_fpn"])
        pos = list(backbone_out["vision_pos_enc"])
        if text is not None and self.tcvp is not None:
            fpn = self.tcvp(fpn, pos[-1], text.to(fpn[-1].device))
        out = dict(backbone_out, backbone_fpn=fpn, vision_pos_enc=pos, vision_features=fpn[-1])
        if self.use_high_res_features_in_sam:
            fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return out

    def forward_image(self, img_batch: Tensor) -> dict[str, Any]:
        """SAM-2's entry point, kept for sam2's predictors (no text: plain SAM-2 features)."""
        return self.condition_backbone(self.encode_backbone(img_batch), None)

    def prepare_frame_features(self, conditioned: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list]:
        """Flatten conditioned features for ``track_step``: (vision_feats, vision_pos_embeds, feat_sizes)."""
        _, feats, pos, sizes = self._prepare_backbone_features(conditioned)
        return feats, pos, sizes

    # ---------------------------------------------------------------- memory on a pooled token map
    def _prepare_memory_conditioned_features(self, frame_idx, is_init_cond_frame, current_vision_feats,
                                             current_vision_pos_embeds, feat_sizes, output_dict, num_frames,
                                             track_in_reverse=False):
        """SAM-2's memory attention; with ``memory_pool`` p > 1 it runs on the map average-pooled p x p, and the
        decoder gets the full-resolution features plus the memory's change, projected (1 x 1, zero-initialised) and
        upsampled bilinearly: ``f + up(P(MemAttn(pool(f)) - pool(f)))``. A conditioning frame without memory is
        SAM-2's (``f`` + ``no_mem_embed``)."""
        pool = self.config.memory_pool
        if pool == 1 or is_init_cond_frame or self.num_maskmem == 0:
            return super()._prepare_memory_conditioned_features(
                frame_idx, is_init_cond_frame, current_vision_feats, current_vision_pos_embeds, feat_sizes,
                output_dict, num_frames, track_in_reverse)
        (h, w), feat = feat_sizes[-1], current_vision_feats[-1]
        pooled = _pool_tokens(feat, h, w, pool)
        pooled_pos = _pool_tokens(current_vision_pos_embeds[-1], h, w, pool)
        size = (h // pool, w // pool)
        with_mem = super()._prepare_memory_conditioned_features(
            frame_idx, False, [pooled], [pooled_pos], [size], output_dict, num_frames, track_in_reverse)
        b = feat.shape[1]
        change = self.memory_delta(with_mem - pooled.permute(1, 2, 0).reshape(b, -1, *size))
        full = feat.permute(1, 2, 0).reshape(b, -1, h, w)
        return full + F.interpolate(change, size=(h, w), mode="bilinear", align_corners=False)

    def _encode_new_memory(self, current_vision_feats, feat_sizes, pred_masks_high_res, object_score_logits,
                           is_mask_from_pts):
        """SAM-2's memory encoder, on the pooled token map when ``memory_pool`` > 1 (its mask downsampler is
        built with the matching total stride)."""
        pool = self.config.memory_pool
        if pool > 1:
            (h, w), feat = feat_sizes[-1], current_vision_feats[-1]
            current_vision_feats, feat_sizes = [_pool_tokens(feat, h, w, pool)], [(h // pool, w // pool)]
        return super()._encode_new_memory(current_vision_feats, feat_sizes, pred_masks_high_res,
                                          object_score_logits, is_mask_from_pts)

    def _forward_sam_heads(self, backbone_features, point_inputs=None, mask_inputs=None, high_res_features=None,
                           multimask_output=False):
        """SAM-2's heads. A decoder on a stride-4 embedding (LiteMedSAM) returns its masks at the image size;
        the low-resolution outputs are brought to S/4, the size every other path (SAM-2's mask-as-output, the
        engine's dense prompts and stored logits) uses. The high-resolution masks are the decoder's own."""
        out = super()._forward_sam_heads(backbone_features, point_inputs, mask_inputs, high_res_features,
                                         multimask_output)
        low = self.image_size // 4
        if out[0].shape[-1] == low:
            return out
        low_multi, high_multi, ious, low_res, high_res, obj_ptr, score = out
        low_multi, low_res = (F.interpolate(x, size=(low, low), mode="bilinear", align_corners=False, antialias=True)
                              for x in (low_multi, low_res))
        return low_multi, high_multi, ious, low_res, high_res, obj_ptr, score

    # ---------------------------------------------------------------- tracking
    def step(self, frame_idx: int, is_init_cond_frame: bool, feats: list[Tensor], pos: list[Tensor], sizes: list,
             output_dict: dict, num_frames: int, point_inputs: Optional[dict] = None,
             mask_inputs: Optional[Tensor] = None, track_in_reverse: bool = False,
             run_mem_encoder: bool = True, prev_sam_mask_logits: Optional[Tensor] = None) -> dict[str, Any]:
        """One tracking step like ``SAM2Base.track_step`` that also returns ``ious`` and ``object_score_logits``
        in training mode. ``prev_sam_mask_logits`` (B, 1, S/4, S/4): the frame's current mask logits, SAM-2's
        dense prompt for corrective clicks (needs ``point_inputs``). Call inside :meth:`text_context`."""
        current_out, sam_outputs, _, _ = self._track_step(
            frame_idx, is_init_cond_frame, feats, pos, sizes, point_inputs, mask_inputs, output_dict, num_frames,
            track_in_reverse, prev_sam_mask_logits,
        )
        _, _, ious, low_res, high_res, obj_ptr, object_score_logits = sam_outputs
        current_out.update(pred_masks=low_res, pred_masks_high_res=high_res, obj_ptr=obj_ptr, ious=ious,
                           object_score_logits=object_score_logits)
        self._encode_memory_in_output(feats, sizes, point_inputs, run_mem_encoder, high_res, object_score_logits,
                                      current_out)
        return current_out

    def backbone_from_features(self, features: Tensor) -> dict[str, Any]:
        """sam2's backbone dict from cached single-level embeddings (N, D, h, w) (LiteMedSAM: the frozen encoder's
        output, computed once per training slice)."""
        pos = self.image_encoder.position_encoding(features).to(features.dtype)
        return {"vision_features": features, "vision_pos_enc": [pos], "backbone_fpn": [features]}

    def forward_sequence(self, images: Optional[Tensor], text: Optional[TextFeatures],
                         mask_prompt: Optional[Tensor] = None, point_prompt: Optional[dict] = None,
                         use_memory: bool = True, prev_mask_logits: Optional[Tensor] = None,
                         features: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Differentiable clip forward (training and tests).

        images: (B, T, 3, S, S) in [0, 1], or ``features`` (B, T, D, h, w): cached embeddings of a frozen
        single-level encoder (then ``images`` is None); text: batch B (or 1); frame 0 is the conditioning frame and
        may carry a mask prompt (B, 1, S, S) and/or point prompt {"point_coords": (B, P, 2) pixels (x, y),
        "point_labels": (B, P)}; with points, ``prev_mask_logits`` (B, 1, S/4, S/4) is the frame's current mask
        (corrective clicks).
        ``use_memory=False`` treats every frame as an independent first frame (ablation).
        Returns ``mask_logits`` (B, T, 1, S, S), ``object_score_logits`` (B, T, 1), ``ious`` (B, T, M).
        """
        if features is not None:
            b, t = features.shape[:2]
            backbone = self.backbone_from_features(features.flatten(0, 1))
        else:
            b, t = images.shape[:2]
            backbone = self.encode_backbone(self.normalize_images(images.flatten(0, 1)))
        logits, scores, ious = [], [], []
        output_dict: dict[str, dict] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        with self.text_context(text):
            for i in range(t):
                frame = {
                    "backbone_fpn": [x.unflatten(0, (b, t))[:, i] for x in backbone["backbone_fpn"]],
                    "vision_pos_enc": [x.unflatten(0, (b, t))[:, i] for x in backbone["vision_pos_enc"]],
                }
                feats, pos, sizes = self.prepare_frame_features(self.condition_backbone(frame, text))
                first = i == 0
                memory = output_dict if use_memory else {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
                out = self.step(i if use_memory else 0, first or not use_memory, feats, pos, sizes, memory, t,
                                point_inputs=point_prompt if first else None,
                                mask_inputs=mask_prompt if first else None, run_mem_encoder=use_memory,
                                prev_sam_mask_logits=prev_mask_logits if first else None)
                if use_memory:
                    output_dict["cond_frame_outputs" if first else "non_cond_frame_outputs"][i] = out
                logits.append(out["pred_masks_high_res"])
                scores.append(out["object_score_logits"])
                ious.append(out["ious"])
        return {
            "mask_logits": torch.stack(logits, 1),
            "object_score_logits": torch.stack(scores, 1),
            "ious": torch.stack(ious, 1),
        }

    # ---------------------------------------------------------------- parameters
    def package_keys(self) -> frozenset[str]:
        """State-dict keys read from the installed LiteMedSAM package at build time and not stored in our
        checkpoints (all of its encoder, prompt encoder and decoder unless ``config.finetuned`` names them)."""
        if self.config.backbone != "litemedsam":
            return frozenset()
        from .litemedsam import is_pretrained_key

        stored = {"encoder": ("image_encoder.",), "decoder": ("sam_mask_decoder.", "sam_prompt_encoder.")}
        keep = tuple(p for part in self.config.finetuned for p in stored[part])
        return frozenset(k for k in self.state_dict() if is_pretrained_key(k) and not k.startswith(keep or ("\0",)))

    def frozen_parameter_names(self) -> frozenset[str]:
        """Parameters that training must leave alone: the package's pretrained parts (unless fine-tuned) and, on
        that backbone, ``no_mem_embed`` (zero, so that a conditioning frame stays the pretrained model's)."""
        if self.config.backbone != "litemedsam":
            return frozenset()
        params = {n for n, _ in self.named_parameters()}
        return frozenset((self.package_keys() & params) | {"no_mem_embed"})

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if is_adapter_key(n))

    def sam2_state_dict(self) -> dict[str, Tensor]:
        """The weights that belong to SAM-2 itself (no adapters, no text encoder)."""
        state = self.state_dict().items()
        return {k: v for k, v in state if not is_adapter_key(k) and not k.startswith("text_encoder.")}
