"""A perceptual term from the frozen face encoder's own feature maps (our addition to both papers).

The identity term compares only the pooled embedding, which images that are no face can match (seen: a
near-white output within dlib's threshold of 21% of LFW inputs). Comparing the trunk's maps at every
resolution, pixel-aligned on the same canonical chip, asks for the target's edges and parts where they are.
"""

from __future__ import annotations

import torch


def perceptual_loss(output_maps: list[torch.Tensor], target_maps: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of E|phi_l(O) - phi_l(T)| / E|phi_l(T)|: each layer counts alike, whatever its scale."""
    if len(output_maps) != len(target_maps) or not output_maps:
        raise ValueError(f"need the same non-empty list of maps, got {len(output_maps)} and {len(target_maps)}")
    terms = [(o - t).abs().mean() / t.abs().mean().clamp_min(1e-8) for o, t in zip(output_maps, target_maps)]
    return torch.stack(terms).mean()
