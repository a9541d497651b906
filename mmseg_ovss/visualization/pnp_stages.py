"""PnP-OVSS stage images of one image (Luo et al., CVPR 2024, Figs. 2-4).

:func:`write_pnp_stages` draws a :class:`mmseg_ovss.blip.stages.PnPStages`
(recorded by ``PnPOVSS.segment_stages``) as PNG files and returns the facts
of ``stages.json``:

- ``01_cross_attention.png``: the cross-attention of each class, first pass
  (Fig. 2 (a));
- ``02_gradcam.png``: attention x positive ITM gradient, first pass
  (Eq. 1, Fig. 2 (b); absent without GradCAM);
- ``03_dropout_pass<t>.png``: the maps of pass t with the dropped patches
  black (Eqs. 2-3, Fig. 4), one file per pass;
- ``04_salience_sum.png``: the sum over the passes (Fig. 2 (c));
- ``05_normalized.png``: per-class min-max and threshold T (§3.3);
- ``06_blur.png`` / ``07_crf.png``: each channel after the Gaussian blur /
  DenseCRF (when on; the background channel first);
- ``08_labels.png``: the final labels with a legend.

Raw salience tiles (passes, sum) are min-max scaled per tile; the others
are drawn as they are, in [0, 1].
"""
import json
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from mmseg_ovss.blip.stages import PnPStages
from .render import draw_overlay, heat_grid, write_image


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def write_pnp_stages(stages: PnPStages, image: np.ndarray,
                     class_names: Sequence[str], out_dir, colours,
                     label_names: Sequence[str], labels: np.ndarray,
                     alpha: float = 0.5) -> Dict:
    """Write the stage images of one image into ``out_dir``.

    Args:
        stages: the recorded stages.
        image: (H, W, 3) BGR image the labels are on.
        class_names: name of each vocabulary class.
        colours: (L, 3) BGR colour of each entry of ``label_names``.
        label_names: names of the values of ``labels`` (the vocabulary,
            plus "(no class)" for ignored pixels when the caller adds it).
        labels: (H, W) label indices into ``label_names``.
    Returns:
        The facts written to ``stages.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [class_names[c] for c in stages.class_ids]
    files = []

    def save(name: str, canvas: np.ndarray) -> None:
        write_image(out / name, canvas)
        files.append(name)

    if stages.class_ids:
        save('01_cross_attention.png', heat_grid(
            image, _numpy(stages.attention[0]), names, normalize=True))
        if stages.gradcam:
            save('02_gradcam.png', heat_grid(
                image, _numpy(stages.gradcam[0]), names, normalize=True))
        passes = stages.gradcam or stages.attention
        for t, (maps, keep) in enumerate(zip(passes, stages.keeps), 1):
            save(f'03_dropout_pass{t}.png', heat_grid(
                image, _numpy(maps), [f'{n} pass {t}' for n in names],
                normalize=True, shown=_numpy(keep).astype(bool)))
        save('04_salience_sum.png', heat_grid(
            image, _numpy(stages.salience), names, normalize=True))
        save('05_normalized.png', heat_grid(
            image, _numpy(stages.normalized), names))
        channels = list(names)
        if stages.resized is not None and \
                stages.resized.shape[0] == len(names) + 1:
            channels = ['background (all off)'] + channels
        if stages.blurred is not None:
            save('06_blur.png', heat_grid(image, _numpy(stages.blurred),
                                          channels))
        if stages.crf is not None:
            save('07_crf.png', heat_grid(image, _numpy(stages.crf),
                                         channels))
    save('08_labels.png', draw_overlay(image, labels, label_names, alpha,
                                       colours))
    present, counts = np.unique(labels, return_counts=True)
    facts = dict(
        classes=names,
        class_ids=[int(c) for c in stages.class_ids],
        passes=len(stages.keeps),
        kept_patches=[int(k.sum()) for k in stages.keeps],
        patch_grid=list(stages.keeps[0].shape) if stages.keeps else None,
        gradcam=bool(stages.gradcam),
        blur=stages.blurred is not None,
        crf=stages.crf is not None,
        label_shares={label_names[int(c)]: int(n) / labels.size
                      for c, n in zip(present, counts)},
        files=files)
    (out / 'stages.json').write_text(json.dumps(facts, indent=1))
    return facts

