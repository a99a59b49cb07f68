"""Identity losses between encoder embeddings of input and output (thesis L_id, Cole §3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frontalab.models.parallel import whole_batch


def identity_cosine_loss(input_embedding: torch.Tensor, output_embedding: torch.Tensor) -> torch.Tensor:
    """1 - cos(e_in, e_out), batch mean: 0 for the same direction."""
    return (1 - F.cosine_similarity(input_embedding, output_embedding, dim=1, eps=1e-12)).mean()


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise |a - b|_2, kept off 0 so that the gradient of equal rows is finite."""
    return (a - b).pow(2).sum(1).clamp_min(1e-12).sqrt()


def identity_l2_loss(input_embedding: torch.Tensor, output_embedding: torch.Tensor) -> torch.Tensor:
    """|e_in - e_out|_2, batch mean: the distance the same-identity threshold is stated for."""
    return _l2(input_embedding, output_embedding).mean()


def identity_relation_loss(input_embedding: torch.Tensor, output_embedding: torch.Tensor) -> torch.Tensor:
    """Mean |d(out_i, out_j) - d(in_i, in_j)| over the batch's pairs (L2 distances): 0 when the outputs keep
    how far apart every two inputs are; the inputs' mean distance when the outputs are all alike. The
    identity terms compare each output with its own input only, so they leave outputs free to drift
    towards one average face; this term holds different people apart.

    Its pairs are the whole batch's: in a data-parallel trial each worker holds a part of the batch, and the
    parts are gathered here, with their gradients, so that the term is the one-worker term."""
    input_embedding, output_embedding = whole_batch(input_embedding), whole_batch(output_embedding)
    n = input_embedding.shape[0]
    if n < 2:
        return input_embedding.new_zeros(())
    i, j = torch.triu_indices(n, n, offset=1, device=input_embedding.device)
    d_in, d_out = _l2(input_embedding[i], input_embedding[j]), _l2(output_embedding[i], output_embedding[j])
    return (d_out - d_in).abs().mean()

