"""Many candidate continuations of one prompt in one forward pass, as a prefix tree.

Scoring k labels or choices after a prompt needs, for every candidate, the log-probability of
each of its tokens after the prompt and the candidate's earlier tokens. The prompt runs once
(its keys/values cached); the candidates' tokens then go in one more pass, laid out as a tree:
one position per distinct prefix, each attending to the prompt and to its own ancestors only (a
4-D attention mask), at the position it would have in the candidate's own sequence. Candidates
that share a prefix ("card_arrival", "card_linking") share its positions, and no row copies the
prompt's keys/values: with Banking77's 77 labels the copies were gigabytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runner.model.forward import virtual_tokens
from runner.model.load import causal_lm


@dataclass
class Tree:
    """The continuation pass of a batch of prompts: inputs [rows, nodes] (padded), each node's
    depth (1 = the candidate's first token) and ancestors, and where every candidate's tokens
    are scored."""

    inputs: torch.Tensor  # [rows, nodes] token ids, pad beyond a row's nodes
    depth: torch.Tensor  # [rows, nodes] 1-based depth below the prompt; 0 for padding
    sees: torch.Tensor  # [rows, nodes, nodes] bool: node n attends to node m (ancestor or itself)
    # (flat candidate index, row, node, token): the candidate's `token` follows that node.
    targets: list[tuple[int, int, int, int]]


def build_tree(candidates: list[list[list[int]]], pad: int) -> Tree:
    """The prefix tree of each row's candidates (row i: the candidates of prompt i). A candidate
    of n tokens needs n - 1 nodes: its first token is scored from the prompt's last position."""
    rows: list[list[tuple[int, int]]] = []  # per row: (token, parent node or -1)
    targets = []
    flat = 0
    for row, cands in enumerate(candidates):
        nodes: list[tuple[int, int]] = []
        index: dict[tuple[int, ...], int] = {}
        for tokens in cands:
            parent = -1
            for d in range(1, len(tokens)):
                prefix = tuple(tokens[:d])
                if prefix not in index:
                    index[prefix] = len(nodes)
                    nodes.append((tokens[d - 1], parent))
                parent = index[prefix]
                targets.append((flat, row, parent, tokens[d]))
            flat += 1
        rows.append(nodes)
    width = max((len(n) for n in rows), default=0)
    inputs = torch.full((len(rows), width), pad, dtype=torch.long)
    depth = torch.zeros((len(rows), width), dtype=torch.long)
    sees = torch.zeros((len(rows), width, width), dtype=torch.bool)
    for r, nodes in enumerate(rows):
        for n, (token, parent) in enumerate(nodes):
            inputs[r, n] = token
            depth[r, n] = 1 if parent < 0 else int(depth[r, parent]) + 1
            sees[r, n] = sees[r, parent] if parent >= 0 else False
            sees[r, n, n] = True
        for n in range(len(nodes), width):
            sees[r, n, n] = True  # padding attends to itself: no row of the mask is empty
    return Tree(inputs, depth, sees, targets)


def tree_mask(prompt_mask: torch.Tensor, tree: Tree, float_dtype: torch.dtype | None) -> torch.Tensor:
    """[rows, 1, nodes, prompt + nodes]: each node sees its row's real prompt tokens and its own
    ancestors. Boolean (True = attend) for SDPA; additive (0 or the dtype's minimum) when
    `float_dtype` is given, as eager attention adds the mask to its scores."""
    nodes = tree.inputs.shape[1]
    prompt = prompt_mask.bool()[:, None, :].expand(-1, nodes, -1)
    mask = torch.cat([prompt, tree.sees.to(prompt.device)], dim=-1)[:, None]
    if float_dtype is None:
        return mask
    return torch.zeros(mask.shape, dtype=float_dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(float_dtype).min
    )


def tree_attention(model: torch.nn.Module) -> str | None:
    """'sdpa' or 'eager' when the model's attention takes a custom 4-D mask as given; None for
    the rest, which score candidates on copies of the prompt's keys/values: flash attention takes
    no arbitrary mask, and prompt tuning's virtual tokens widen the mask as a 2-D one."""
    if virtual_tokens(model):
        return None
    kind = getattr(getattr(causal_lm(model), "config", None), "_attn_implementation", None) or "eager"
    return kind if kind in ("sdpa", "eager") else None


def tree_size(candidates: list[list[int]]) -> int:
    """Nodes of one prompt's tree: its candidates' distinct prefixes, last tokens left out."""
    return len({tuple(tokens[:d]) for tokens in candidates for d in range(1, len(tokens))})


def score_tree(forward_pass, prompt_mask: torch.Tensor, tree: Tree, kind: str, total: int) -> torch.Tensor:
    """[total] summed log-likelihood of every candidate's tokens after its first (flat numbering,
    as in `tree.targets`; the first token is scored from the prompt's own pass), from one pass
    over the tree. `forward_pass(input_ids, attention_mask, position_ids)` runs the model after
    the prompts' cached keys/values and returns logits."""
    device = prompt_mask.device
    mask = tree_mask(prompt_mask, tree, None if kind == "sdpa" else torch.float32)
    positions = prompt_mask.sum(-1, keepdim=True) + (tree.depth.to(device) - 1).clamp(min=0)
    logits = forward_pass(tree.inputs.to(device), mask, positions)
    # log p = logit - logsumexp: the normaliser once per node, a row at a time, so the float copy
    # of the logits is one row's, not the batch's.
    norm = torch.stack([row.float().logsumexp(-1) for row in logits])
    flat, rows, nodes, tokens = (torch.tensor(column, device=device) for column in zip(*tree.targets))
    picked = logits[rows, nodes, tokens].float() - norm[rows, nodes]
    return torch.zeros(total, device=device).index_add_(0, flat, picked)
