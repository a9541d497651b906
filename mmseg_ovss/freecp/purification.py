"""Class purification: redundancy (Eq. 5) and ambiguity (Eqs. 6-8).

All functions work on a batch of windows; the per-window candidate sets are
boolean ``keep`` masks of shape (B, K) and nothing loops over classes.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from mmseg_ovss.utils.boxes import score_map_boxes
from mmseg_ovss.utils.profiler import count_detail, profile_detail
from .consistency import pairwise_consistency, spatial_consistency
from .crops import crop_and_resize

ELIMINATION_MODES = ('window', 'local')


def redundancy_purification(cams: Tensor, refined: Tensor, keep: Tensor,
                            threshold: float,
                            metric: str = 'half_dice',
                            return_scores: bool = False):
    """Eq. 5: keep class c where SC(M_c, refined_c) > ``threshold``.

    Args:
        cams: (B, K, h, w) activation maps (the authors use the softmax
            maps of Eq. 1 here, before normalisation).
        refined: (B, K, h, w) refined maps.
        keep: (B, K) current candidates.
        return_scores: also return the (B, K) scores.
    Returns:
        (B, K) updated candidates (and the scores).
    """
    scores = spatial_consistency(cams.float(), refined.float(), metric)
    keep = keep & (scores > threshold)
    return (keep, scores) if return_scores else keep


@dataclass
class AmbiguityGroups:
    """Connected groups (size > 1) of mutually ambiguous classes.

    Attributes:
        window: (G, ) window index of each group.
        members: (G, K) bool, the classes of each group.
    """
    window: Tensor
    members: Tensor

    def __len__(self) -> int:
        return self.window.numel()


def ambiguity_groups(refined: Tensor, keep: Tensor, threshold: float,
                     metric: str = 'soft_iou',
                     components: str = 'auto') -> AmbiguityGroups:
    """Eqs. 6-7: pairwise consistency among candidates, thresholded
    (``P >= threshold`` as the authors' code), and the connected components
    of that graph with more than one class (``scipy.sparse.csgraph``; all
    windows of the batch form one block-diagonal graph, one call). On an
    accelerator (``components='auto'``) the components are found with torch
    ops instead (:func:`_groups_by_reachability`, same groups in the same
    order), so that the graph does not travel to the host.
    """
    b, k = keep.shape
    device = refined.device
    counts = keep.sum(dim=1)
    width = int(counts.max()) if b else 0
    if width < 2:
        return AmbiguityGroups(
            torch.zeros(0, dtype=torch.long, device=device),
            torch.zeros(0, k, dtype=torch.bool, device=device))
    # candidates first, in class order, padded to ``width``
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)
    slots = order[:, :width]
    valid = torch.arange(width, device=device)[None] < counts[:, None]
    maps = torch.gather(
        refined.float(), 1,
        slots[:, :, None, None].expand(-1, -1, *refined.shape[2:]))
    maps = maps * valid[:, :, None, None]
    edges = pairwise_consistency(maps, metric) >= threshold
    edges &= valid[:, :, None] & valid[:, None, :]
    edges &= ~torch.eye(width, dtype=torch.bool, device=device)
    if _use_device_path(device, components):
        return _groups_by_reachability(edges, valid, slots, k)
    return _groups_by_scipy(edges, valid, slots, k)


COMPONENT_BACKENDS = ('auto', 'scipy', 'torch')


def _use_device_path(device: torch.device, backend: str) -> bool:
    """``'auto'``: torch ops on accelerators (no host round trip), scipy on
    the CPU; ``'scipy'`` / ``'torch'`` force one."""
    if backend not in COMPONENT_BACKENDS:
        raise ValueError(f'components={backend!r} is not one of '
                         f'{COMPONENT_BACKENDS}')
    if backend == 'auto':
        return torch.device(device).type != 'cpu'
    return backend == 'torch'


def _groups_by_scipy(edges: Tensor, valid: Tensor, slots: Tensor,
                     k: int) -> AmbiguityGroups:
    """Components of the (B, W, W) candidate graphs with
    ``scipy.sparse.csgraph`` (all windows as one block-diagonal graph)."""
    b, width = valid.shape
    device = edges.device
    win, src, dst = (t.cpu().numpy()
                     for t in torch.nonzero(edges, as_tuple=True))
    num_nodes = b * width
    graph = coo_matrix(
        (np.ones(len(win)), (win * width + src, win * width + dst)),
        shape=(num_nodes, num_nodes))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels, minlength=num_nodes)
    node_ok = valid.reshape(-1).cpu().numpy() & (sizes[labels] > 1)
    nodes = np.flatnonzero(node_ok)
    _, group_of_node = np.unique(labels[nodes], return_inverse=True)
    num_groups = int(group_of_node.max()) + 1 if len(nodes) else 0
    node_t = torch.from_numpy(nodes).to(device)
    group_t = torch.from_numpy(group_of_node.reshape(-1)).to(device)
    node_win = node_t // width
    node_cls = slots.reshape(-1)[node_t]
    members = torch.zeros(num_groups, k, dtype=torch.bool, device=device)
    members[group_t, node_cls] = True
    window = torch.zeros(num_groups, dtype=torch.long, device=device)
    window[group_t] = node_win
    return AmbiguityGroups(window, members)


def _groups_by_reachability(edges: Tensor, valid: Tensor, slots: Tensor,
                            k: int) -> AmbiguityGroups:
    """The same components with torch ops on the graphs' device: the
    reachability matrix by ceil(log2 W) squarings of (A + I), each node's
    component named by its lowest reachable slot. Groups come out in the
    order of the scipy path (by window, then by lowest member slot); the
    only device-to-host step is the size of the result."""
    b, width = valid.shape
    device = edges.device
    eye = torch.eye(width, dtype=torch.bool, device=device)
    reach = (edges | eye).float()
    for _ in range(max(int(width - 1).bit_length(), 1)):
        reach = (torch.bmm(reach, reach) > 0).float()
    # first reachable slot (argmax returns the first maximum)
    root = reach.argmax(dim=2)
    node_ok = valid & (reach.sum(dim=2) > 1)
    slot_ids = torch.arange(width, device=device)
    is_root = node_ok & (root == slot_ids[None])
    flat_root = is_root.reshape(-1)
    group_of_slot = torch.cumsum(flat_root.long(), 0) - 1
    num_groups = int(flat_root.sum())  # the result's size
    group = group_of_slot.view(b, width).gather(1, root)
    group = torch.where(node_ok, group, torch.full_like(group, num_groups))
    members = torch.zeros(num_groups + 1, k, dtype=torch.bool, device=device)
    members[group.reshape(-1), slots.reshape(-1)] = True
    window = torch.arange(b, device=device).repeat_interleave(width)
    window = window[flat_root]
    return AmbiguityGroups(window, members[:num_groups])


@dataclass
class CropVotes:
    """The outcome of classifying the boxes of every ambiguity group.

    Attributes:
        group: (n, ) group of each box.
        boxes: (n, 4) patch-grid boxes ``(x0, y0, x1, y1)``.
        degenerate: (n, ) boxes with no area (not classified).
        winner: (n, ) class chosen for each box; -1 when degenerate or not
            needed (``winner_sets_only``).
    """
    group: Tensor
    boxes: Tensor
    degenerate: Tensor
    winner: Tensor


def _rank_in_group(box_group: Tensor, selected: Tensor,
                   num_groups: int) -> Tensor:
    """Position of each selected box among its group's selected boxes
    (boxes sorted by group, as :func:`score_map_boxes` returns them)."""
    counts = torch.bincount(box_group[selected], minlength=num_groups)
    first = torch.cumsum(counts, 0) - counts
    return torch.cumsum(selected.long(), 0) - 1 - first[box_group]


def classify_group_crops(groups: AmbiguityGroups, refined: Tensor,
                         images: Tensor, patch_size: int,
                         encode_image: Callable[[Tensor], Tensor],
                         class_embeddings: Tensor,
                         crop_size: int = 112,
                         box_threshold: float = 0.4,
                         clip_last: bool = True,
                         include_holes: bool = True,
                         winner_sets_only: bool = False,
                         first_round: int = 8,
                         deduplicate: bool = True,
                         components: str = 'auto',
                         encode_regions: Optional[Callable[[Tensor, Tensor],
                                                           Tensor]] = None
                         ) -> CropVotes:
    """Eq. 8 for the boxes of every group, crops batched across groups.

    Each group's refined maps are averaged, boxed like CLIP-ES (at
    ``box_threshold`` x max, every contour), the boxes scaled by the patch
    size are cropped from the window image and resized to ``crop_size``,
    encoded by the unmodified CLIP path, and matched against the group
    members' description embeddings; the best member wins the box.

    ``include_holes`` keeps the hole contours' boxes (``RETR_TREE``, the
    reference). ``winner_sets_only`` is for the ``'window'`` elimination,
    which reads only which members win at least one box: a group with a
    degenerate box is kept whole there, so its boxes are not classified,
    and the other groups' boxes are classified in rounds of ``first_round``,
    then twice as many, ... boxes per group (outer contours first), a group
    leaving as soon as every member has won a box. The winners' sets equal
    those of classifying every box (up to batch-size effects of the
    encoder's floating point on near ties); the crops saved are the hole
    boxes of noisy maps (hundreds per window with random weights).

    ``deduplicate`` encodes each distinct crop of a round once
    (:func:`encode_unique_crops`): the same box of one window in two
    groups, or the same image region seen by two overlapping windows whose
    grids align, gives the same pixels, hence the same embedding.

    ``encode_regions`` (``(window_index, pixel_boxes) -> (n, D)``), when
    given, replaces the crops: each box is embedded from the window's own
    tokens (``DenseCLIPFeatures.encode_regions``, an approximation of
    Eq. 8's crop; no pixels are cropped or re-encoded).
    """
    device = refined.device
    fused = torch.einsum('gk,gkhw->ghw', groups.members.float(),
                         refined[groups.window].float())
    fused = fused / groups.members.sum(dim=1).clamp(min=1)[:, None, None]
    boxes, box_group = score_map_boxes(fused, box_threshold,
                                       include_holes=include_holes,
                                       clip_last=clip_last,
                                       labelling=components)
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    winner = torch.full((len(boxes), ), -1, dtype=torch.long, device=device)
    votes = CropVotes(box_group, boxes, degenerate, winner)
    todo = ~degenerate
    text = F.normalize(class_embeddings.float().to(device), dim=-1)

    def embed(index: Tensor) -> Tensor:
        windows = groups.window[box_group[index]]
        if encode_regions is not None:
            with profile_detail('region_readout', items=len(index)):
                return encode_regions(windows, boxes[index] * patch_size)
        crops = crop_and_resize(images, windows, boxes[index] * patch_size,
                                crop_size)
        return encode_unique_crops(crops.to(images.dtype), encode_image,
                                   deduplicate)

    def classify(index: Tensor) -> None:
        feats = F.normalize(embed(index).float(), dim=-1)
        scores = (feats @ text.t()).masked_fill(
            ~groups.members[box_group[index]], float('-inf'))
        winner[index] = scores.argmax(dim=1)

    if not winner_sets_only:
        usable = torch.nonzero(todo, as_tuple=True)[0]
        if usable.numel():
            classify(usable)
        return votes
    spoiled = torch.zeros(len(groups), dtype=torch.bool, device=device)
    spoiled[box_group[degenerate]] = True
    todo &= ~spoiled[box_group]
    rank = _rank_in_group(box_group, todo, len(groups))
    won = torch.zeros_like(groups.members)
    start, size = 0, max(int(first_round), 1)
    while True:
        undecided = (groups.members & ~won).any(dim=1)
        pick = todo & undecided[box_group] & (rank >= start) & \
            (rank < start + size)
        index = torch.nonzero(pick, as_tuple=True)[0]  # one sync per round
        if index.numel() == 0:
            return votes
        classify(index)
        won[box_group[index], winner[index]] = True
        start, size = start + size, 2 * size


def encode_unique_crops(crops: Tensor, encode_image: Callable[[Tensor],
                                                                Tensor],
                        deduplicate: bool = True) -> Tensor:
    """``encode_image(crops)`` with each distinct crop encoded once.

    Crops are compared pixel for pixel (``torch.unique`` over the flattened
    rows), so a repeated crop gets exactly the embedding of its first copy;
    only the batch the encoder sees shrinks.

    Args:
        crops: (n, C, S, S).
    Returns:
        (n, D) embeddings.
    """
    count_detail('crops_asked', len(crops))
    if not deduplicate or len(crops) < 2:
        return _encode_crops(crops, encode_image)
    distinct, inverse = torch.unique(crops.flatten(1), dim=0,
                                     return_inverse=True)
    if len(distinct) == len(crops):
        return _encode_crops(crops, encode_image)
    return _encode_crops(distinct.view(-1, *crops.shape[1:]),
                         encode_image)[inverse]


def _encode_crops(crops: Tensor, encode_image: Callable[[Tensor], Tensor]
                  ) -> Tensor:
    """``encode_image(crops)``, timed as the ``crop_encoder`` detail of the
    benchmark's profiler (items: the crops encoded)."""
    with profile_detail('crop_encoder', items=len(crops)):
        return encode_image(crops)


def eliminate_ambiguity(groups: AmbiguityGroups, votes: CropVotes,
                        keep: Tensor, grid: Tuple[int, int],
                        mode: str = 'window'
                        ) -> Tuple[Tensor, Optional[Tensor]]:
    """Apply the crop votes.

    ``mode='window'`` (the authors' code): a group member that wins no box
    is removed from the window; if a group has no box or a degenerate one,
    the whole group stays. ``mode='local'`` (the paper): inside each box
    the members that lost are zeroed; elsewhere nothing changes.

    Returns:
        keep: (B, K) updated candidates.
        suppress: (B, K, h, w) bool, positions to zero (``'local'`` only,
            else None).
    """
    if mode not in ELIMINATION_MODES:
        raise ValueError(f'unknown ambiguity elimination {mode!r}; choose '
                         f'one of {ELIMINATION_MODES}.')
    num_groups, k = groups.members.shape
    device = keep.device
    h, w = grid
    won = torch.zeros(num_groups, k, dtype=torch.bool, device=device)
    ok = votes.winner >= 0
    won[votes.group[ok], votes.winner[ok]] = True
    if mode == 'window':
        has_box = torch.zeros(num_groups, dtype=torch.bool, device=device)
        has_box[votes.group] = True
        spoiled = torch.zeros_like(has_box)
        spoiled[votes.group[votes.degenerate]] = True
        keep_all = ~has_box | spoiled
        dropped = groups.members & ~won & ~keep_all[:, None]
        g_idx, c_idx = torch.nonzero(dropped, as_tuple=True)
        keep = keep.clone()
        keep[groups.window[g_idx], c_idx] = False
        return keep, None
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    x0, y0, x1, y1 = (votes.boxes[ok][:, i].view(-1, 1, 1) for i in range(4))
    region = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    box_group = votes.group[ok]
    losers = groups.members[box_group].clone()
    rows = torch.arange(len(box_group), device=device)
    losers[rows, votes.winner[ok]] = False
    suppress = torch.zeros(keep.shape[0], k, h * w, device=device)
    suppress.index_add_(
        0, groups.window[box_group],
        losers[:, :, None].float() * region.flatten(1)[:, None].float())
    return keep, suppress.view(-1, k, h, w) > 0
