"""Dense pre-training of the demo teacher's vision tower, the offline stand-in for SigLIP's pre-training.

nanoVLM starts from a pre-trained SigLIP; our tiny ViT starts from nothing, and trained end to end on VQA
it sat at chance for 800+ steps (the decoder must first find 1-2 relevant patches among 192 image tokens).
Here the ViT learns, per patch, the colour, shape and size of the object under it, on freshly generated
scenes (never the dataset's), with a linear head that is thrown away afterwards.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from vlm.config import ImageSpec
from vlm.demo.scenes import COLORS, SHAPES, SIZE_RANGES, Scene, render_scene, sample_scene
from vlm.geometry import resized_size
from vlm.model import VisionLanguageModel
from vlm.processing import split_image

logger = logging.getLogger(__name__)

COLOR_NAMES = list(COLORS)
SIZE_NAMES = list(SIZE_RANGES)


def object_map(scene: Scene, image: Image.Image) -> torch.Tensor:
    """[H, W] long: 1 + index of the object painted at each pixel, 0 for background."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.int64))  # [H, W, 3]
    out = torch.zeros(scene.height, scene.width, dtype=torch.long)
    for index, obj in enumerate(scene.objects):
        box = pixels[obj.y : obj.y + obj.h, obj.x : obj.x + obj.w]
        match = (box == torch.tensor(COLORS[obj.color])).all(-1)
        out[obj.y : obj.y + obj.h, obj.x : obj.x + obj.w][match] = index + 1
    return out


def patch_labels(scene: Scene, image: Image.Image, spec: ImageSpec, patch: int) -> torch.Tensor:
    """[views, patches, 3] targets (colour, shape, size; 0 = background) in the processor's view order."""
    width, height = resized_size(image.width, image.height, spec)
    ids = object_map(scene, image).float()[None, None]
    ids = F.interpolate(ids, size=(height, width), mode="nearest")[0, 0].long()  # [H', W']
    rows, cols = height // spec.view_size, width // spec.view_size
    # The global view covers the whole image; a 1x1 grid is the global view alone.
    crops = [
        ids[r * spec.view_size : (r + 1) * spec.view_size, c * spec.view_size : (c + 1) * spec.view_size]
        for r in range(rows)
        for c in range(cols)
    ]
    regions = [ids] if rows * cols == 1 else [ids, *crops]
    n = spec.view_size // patch
    table = torch.zeros(len(scene.objects) + 1, 3, dtype=torch.long)
    for index, obj in enumerate(scene.objects):
        table[index + 1] = torch.tensor(
            [
                1 + COLOR_NAMES.index(obj.color),
                1 + SHAPES.index(obj.shape),
                1 + SIZE_NAMES.index(obj.size_name),
            ]
        )
    out = []
    for region in regions:
        # Majority object per patch: one-hot counts pooled over the patch's cells.
        onehot = F.one_hot(region, len(scene.objects) + 1).permute(2, 0, 1).float()[None]
        counts = F.adaptive_avg_pool2d(onehot, n)[0]  # [objects+1, n, n]
        counts[0] *= 0.1  # a patch with a few object pixels is about the object
        out.append(table[counts.argmax(0).flatten()])  # [n*n, 3]
    return torch.stack(out)


def pretrain_vision(
    model: VisionLanguageModel, steps: int = 600, batch_size: int = 32, lr: float = 2e-3, seed: int = 0
) -> float:
    """Train `model.vision_encoder` on per-patch object attributes; returns the final loss."""
    rng = random.Random(f"vision-pretrain/{seed}")
    spec = model.image_spec
    patch = model.cfg.vit_patch_size
    dim = model.cfg.vit_hidden_dim
    heads = nn.ModuleList(
        [nn.Linear(dim, len(COLOR_NAMES) + 1), nn.Linear(dim, len(SHAPES) + 1), nn.Linear(dim, 3)]
    )
    params = list(model.vision_encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    model.vision_encoder.train()
    loss_value = float("nan")
    progress = tqdm(range(steps), desc="pretrain vision")
    for step in progress:
        views, labels = [], []
        for _ in range(batch_size):
            scene = sample_scene(rng)
            image = render_scene(scene)
            v, _ = split_image(image, spec)
            views.append(v)
            labels.append(patch_labels(scene, image, spec, patch))
        features = model.vision_encoder(pixel_values=torch.cat(views)).last_hidden_state  # [N, P, D]
        target = torch.cat(labels)  # [N, P, 3]
        loss = sum(
            F.cross_entropy(head(features).flatten(0, 1), target[..., i].flatten())
            for i, head in enumerate(heads)
        )
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        progress.set_postfix(loss=f"{loss_value:.3f}")
    model.vision_encoder.eval()
    logger.info("vision pre-training: %d steps, final loss %.4f", steps, loss_value)
    return loss_value
