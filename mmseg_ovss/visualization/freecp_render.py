"""PNG images and ``summary.json`` of :class:`FreeCPStages` (FreeCP,
Figs. 2, 4 and 5). File names, per drawn window ``w`` (``window<w>_``):

- ``1_initial_cams``: the softmax CAM of each foreground class (Eq. 1),
  min-max scaled per tile;
- ``2_refined``: the refined maps (Eq. 3);
- ``3_redundancy``: the refined maps titled with SC(M_c, refined_c)
  (Eq. 5), green border = kept by redundancy purification, red = dropped;
- ``4_group<g>``: one ambiguity group (Eqs. 6-7): the window with the crop
  boxes (coloured by the winning class, grey when not classified), the crops
  (titled with their winner, Eq. 8) and the members' refined maps
  (kept / dropped);
- ``5_purified``: the maps after purification;

``image_1_initial_cams`` / ``image_2_refined`` / ``image_5_purified``: the
window maps stitched over the image (averaged where windows overlap, as
mmseg's slide inference; window scope with several windows only; green =
kept in at least one window), and ``final_labels.png`` (the segmentor's
labels, legend) for the image.
Every grid carries a legend: class colour, name and fate.

A folder that holds files of these names from an earlier run is refused
(the two runs would mix), unless ``overwrite``: then the files that run's
``summary.json`` lists are removed first; nothing else is ever removed.
"""
import json
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np

from mmseg_ovss.utils.errors import OVSSDataError
from .freecp_stages import FreeCPStages, WindowStages
from .render import (TITLE_HEIGHT, colour, draw_overlay, fit, heat_grid,
                     heat_overlay, image_grid, legend_panel, side_by_side,
                     titled, write_image)

KEPT_BGR = (60, 170, 60)
DROPPED_BGR = (40, 40, 220)
UNCLASSIFIED_BGR = (150, 150, 150)
#: Crops drawn per group (the classified ones first); summary.json counts
#: them all.
MAX_CROP_TILES = 24
#: The names of the files :func:`write_freecp_stages` writes.
STAGE_FILE = re.compile(
    r'window\d+_(1_initial_cams|2_refined|3_redundancy|4_group\d+|'
    r'5_purified)\.png|image_(1_initial_cams|2_refined|5_purified)\.png|'
    r'final_labels\.png|summary\.json')


def earlier_run_files(out_dir, image_path=None, overwrite: bool = False
                      ) -> List[Path]:
    """Check ``out_dir`` before writing the stages of ``image_path``.

    Returns the files of an earlier run there, for ``overwrite`` to
    remove (``summary.json`` last). Raises OVSSDataError when the input
    image would be overwritten, when an earlier run's files are there
    without ``overwrite``, or when files named like this module's are not
    listed in the folder's ``summary.json`` (not known to be its own).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OVSSDataError(
            f'--out-dir {out} is a file; give a folder (created if missing)')
    if not out.is_dir():
        return []
    names = sorted(p.name for p in out.iterdir() if STAGE_FILE.fullmatch(
        p.name))
    if image_path is not None:
        image = Path(image_path).resolve()
        same = [n for n in names if (out / n).resolve() == image]
        if image.parent == out.resolve() and STAGE_FILE.fullmatch(image.name):
            same.append(image.name)
        if same:
            raise OVSSDataError(
                f'--out-dir {out}: writing {same[0]} would overwrite the '
                f'input image {image_path}; give another --out-dir')
    if not names:
        return []
    if not overwrite:
        raise OVSSDataError(
            f'--out-dir {out} holds the files of an earlier run '
            f'({", ".join(names[:4])}{", ..." if len(names) > 4 else ""}); '
            "this run's files would mix with them. Give an empty or new "
            "--out-dir, or --overwrite to remove that run's files first")
    listed = _listed_files(out / 'summary.json')
    unknown = [n for n in names if n not in listed]
    if unknown:
        raise OVSSDataError(
            f'--out-dir {out}: {unknown[:5]} are named like the stage files '
            f'but {out / "summary.json"} does not list them (an interrupted '
            "run or another tool's files), so --overwrite does not remove "
            'them; move them away or give another --out-dir')
    names.sort(key=lambda n: n == 'summary.json')
    return [out / n for n in names]


def _listed_files(summary: Path) -> set:
    """The files a ``summary.json`` lists, itself included (empty when it
    is missing or is not one of this module's)."""
    try:
        files = json.loads(summary.read_text()).get('files')
    except (OSError, ValueError, AttributeError):
        return set()
    if not isinstance(files, list):
        return set()
    return {f for f in files if isinstance(f, str)} | {summary.name}


def _np(tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _fates(window: WindowStages) -> list:
    """Per channel: 'kept', 'dropped (RP)' or 'dropped (AP)'."""
    fates = []
    for i in range(len(window.classes)):
        if bool(window.keep[i]):
            fates.append('kept')
        elif window.keep_after_rp is not None and \
                not bool(window.keep_after_rp[i]):
            fates.append('dropped (RP)')
        else:
            fates.append('dropped (AP)')
    return fates


def _legend(grid: np.ndarray, entries) -> np.ndarray:
    return side_by_side(grid, legend_panel(entries, grid.shape[0]))


def _box_image(image: np.ndarray, window: WindowStages, colours
               ) -> np.ndarray:
    """The window with every crop box drawn (colour of its winner)."""
    drawn = image.copy()
    p = window.patch_size
    for _, (x0, y0, x1, y1), winner, _ in window.crops:
        bgr = UNCLASSIFIED_BGR if winner < 0 else \
            colour(colours[window.classes[winner]])
        cv2.rectangle(drawn, (x0 * p, y0 * p), (x1 * p - 1, y1 * p - 1),
                      bgr, 1)
    return drawn


def window_summary(window: WindowStages, names) -> Dict:
    fates = _fates(window)
    channel = [names[c] for c in window.classes]
    out = dict(index=window.index, box_yyxx=list(window.box),
               classes=channel, fates=dict(zip(channel, fates)))
    if window.rp_scores is not None:
        out['sc_scores'] = {n: round(float(s), 6) for n, s in
                            zip(channel, window.rp_scores)}
        out['dropped_by_rp'] = [n for n, f in zip(channel, fates)
                                if f == 'dropped (RP)']
    out['kept_after_rp'] = [n for i, n in enumerate(channel)
                            if window.keep_after_rp is None or
                            bool(window.keep_after_rp[i])]
    groups = []
    for g, members in enumerate(window.groups):
        crops = [c for c in window.crops if c[0] == g]
        wins = {}
        for _, _, winner, _ in crops:
            if winner >= 0:
                wins[channel[winner]] = wins.get(channel[winner], 0) + 1
        groups.append(dict(
            members=[channel[m] for m in members], crops=len(crops),
            degenerate_crops=sum(c[3] for c in crops), crop_wins=wins,
            kept=[channel[m] for m in members if bool(window.keep[m])]))
    out['ambiguity_groups'] = groups
    out['kept'] = [n for n, f in zip(channel, fates) if f == 'kept']
    return out


def write_window(window: WindowStages, image: np.ndarray, names,
                 colours, out: Path) -> list:
    """The stage images of one window; the file names written."""
    files = []
    prefix = f'window{window.index}_'
    channel = [names[c] for c in window.classes]
    fates = _fates(window)
    fate_border = [KEPT_BGR if f == 'kept' else DROPPED_BGR for f in fates]
    legend = [(colours[c], f'{n[:14]} {f}') for c, n, f in
              zip(window.classes, channel, fates)]

    def save(name, grid):
        write_image(out / (prefix + name), _legend(grid, legend))
        files.append(prefix + name)

    save('1_initial_cams.png', heat_grid(image, _np(window.cams), channel,
                                         normalize=True, borders=fate_border))
    save('2_refined.png', heat_grid(image, _np(window.refined), channel,
                                    borders=fate_border))
    if window.rp_scores is not None:
        rp_border = [KEPT_BGR if bool(k) else DROPPED_BGR
                     for k in window.keep_after_rp]
        titles = [f'{n[:10]} SC {float(s):.3f}'
                  for n, s in zip(channel, window.rp_scores)]
        save('3_redundancy.png', heat_grid(image, _np(window.refined),
                                           titles, borders=rp_border))
    base = fit(image, interpolation=cv2.INTER_LINEAR)
    for g, members in enumerate(window.groups):
        tiles = [titled(fit(_box_image(image, window, colours),
                            interpolation=cv2.INTER_NEAREST),
                        f'group {g}: crops')]
        p = window.patch_size
        crops = [c for c in window.crops if c[0] == g and not c[3]]
        crops.sort(key=lambda c: c[2] < 0)  # classified first (stable)
        if len(crops) > MAX_CROP_TILES:
            tiles[0] = titled(tiles[0][TITLE_HEIGHT:],
                              f'group {g}: {MAX_CROP_TILES}/{len(crops)}')
        for _, (x0, y0, x1, y1), winner, _ in crops[:MAX_CROP_TILES]:
            crop = image[y0 * p:y1 * p, x0 * p:x1 * p]
            if winner < 0:
                tiles.append(titled(fit(crop), 'not classified',
                                    UNCLASSIFIED_BGR))
            else:
                tiles.append(titled(fit(crop), f'-> {channel[winner]}',
                                    colours[window.classes[winner]]))
        for m in members:
            tiles.append(titled(heat_overlay(base, _np(window.refined[m])),
                                f'{channel[m][:12]} {fates[m]}',
                                fate_border[m]))
        save(f'4_group{g}.png', image_grid(tiles))
    save('5_purified.png', heat_grid(image, _np(window.purified), channel,
                                     borders=fate_border))
    return files


def write_stitched(stages: FreeCPStages, image: np.ndarray, colours,
                   input_size, out: Path) -> list:
    """The CAMs, refined and purified maps of every window stitched over
    the image; the file names written."""
    import torch
    from mmseg_ovss.clip.dense_head import StitchedMaps
    windows = stages.windows
    classes = windows[0].classes
    names = [stages.class_names[c] for c in classes]
    kept = torch.stack([w.keep for w in windows]).any(dim=0)
    border = [KEPT_BGR if bool(k) else DROPPED_BGR for k in kept]
    legend = [(colours[c], f'{n[:14]} {"kept" if bool(k) else "dropped"}')
              for c, n, k in zip(classes, names, kept)]
    size = tuple(windows[0].image.shape[-2:])
    files = []
    for name, field, normalize in (('1_initial_cams', 'cams', True),
                                   ('2_refined', 'refined', False),
                                   ('5_purified', 'purified', False)):
        grids = torch.stack([getattr(w, field).float() for w in windows])
        maps = StitchedMaps(grids, [w.box for w in windows], input_size,
                            size, 'bilinear').render()[0]
        grid = heat_grid(image, _np(maps), names, normalize=normalize,
                         borders=border)
        write_image(out / f'image_{name}.png', _legend(grid, legend))
        files.append(f'image_{name}.png')
    return files


def write_freecp_stages(stages: FreeCPStages, out_dir,
                        window_image: Callable, image: np.ndarray,
                        colours: np.ndarray, draw: Sequence[int],
                        alpha: float = 0.5, extra: Dict = None,
                        overwrite: bool = False,
                        image_path: Optional[str] = None) -> Dict:
    """Write the images and ``summary.json``; returns the summary.

    Args:
        window_image: (3, H, W) model input -> BGR uint8 image.
        image: the BGR image the final labels are drawn on (their size).
        colours: (K, 3) BGR colour per vocabulary class.
        draw: indices of the windows to draw.
        overwrite: remove the files of an earlier run in ``out_dir``
            first (see :func:`earlier_run_files`); without it they are
            an error.
        image_path: the input image file, never overwritten.
    """
    out = Path(out_dir)
    for stale in earlier_run_files(out, image_path, overwrite):
        stale.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    names = stages.class_names
    files = []
    for window in stages.windows:
        if window.index in draw and window.image is not None:
            files += write_window(window, window_image(window.image), names,
                                  colours, out)
    if stages.scope == 'window' and len(stages.windows) > 1 and \
            stages.windows[0].image is not None:
        files += write_stitched(stages, image, colours,
                                stages.input_size, out)
    labels = stages.labels.cpu().numpy()
    write_image(out / 'final_labels.png',
                draw_overlay(image, labels, names, alpha, colours))
    files.append('final_labels.png')
    present, counts = np.unique(labels, return_counts=True)
    summary = dict(
        classes=names, background_class=stages.background_class,
        options=stages.options, num_windows=len(stages.windows),
        drawn_windows=sorted(int(i) for i in draw),
        windows=[window_summary(w, names) for w in stages.windows],
        final_label_shares={names[int(c)]: int(n) / labels.size
                            for c, n in zip(present, counts)},
        files=files, **(extra or {}))
    (out / 'summary.json').write_text(json.dumps(summary, indent=1,
                                                 default=str))
    return summary
