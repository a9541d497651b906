"""Image rendering shared by ``tools/demo.py`` and
``tools/freecp_visualize.py``: class colours, legend, heat-map and label
overlays, titled tiles and image grids (BGR ``uint8`` arrays, OpenCV)."""
from pathlib import Path
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from mmseg_ovss.utils.errors import OVSSDataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff',
                    '.webp')
#: Width of the legend panel beside an overlay.
LEGEND_WIDTH = 220
LEGEND_ROW = 22
#: Height of the title strip above a tile.
TITLE_HEIGHT = 18
#: Tiles are scaled so that their longer side is this many pixels.
TILE_SIDE = 160
WHITE = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def golden_palette(num_classes: int) -> np.ndarray:
    """(K, 3) distinct BGR colours (golden-angle hues), none black."""
    hues = (np.arange(num_classes) * 137.508) % 180
    hsv = np.stack([hues, np.full(num_classes, 200),
                    np.full(num_classes, 230)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0]


def dataset_palette(cfg, class_names: Sequence[str]
                    ) -> Optional[np.ndarray]:
    """(K, 3) BGR colours of the config's test dataset (mmseg's
    ``METAINFO['palette']``, RGB) when the vocabulary is that dataset's
    classes (same count, the same names up to case and spacing, in order);
    None otherwise (another vocabulary, or no dataset)."""
    from mmseg.registry import DATASETS
    from mmseg_ovss.clip.vocabulary import name_key
    loader = cfg.get('test_dataloader') or {}
    dataset = loader.get('dataset') or {}
    name = dataset.get('type') if isinstance(dataset, dict) else None
    try:
        cls = DATASETS.get(name) if isinstance(name, str) else None
    except KeyError:
        cls = None
    meta = getattr(cls, 'METAINFO', None) or {}
    palette, classes = meta.get('palette'), meta.get('classes')
    if palette is None or classes is None or \
            len(palette) != len(class_names) or \
            [name_key(str(c)) for c in classes] != \
            [name_key(str(c)) for c in class_names]:
        return None
    return np.asarray(palette, dtype=np.uint8)[:, ::-1].copy()


def class_palette(class_names: Sequence[str], cfg=None) -> np.ndarray:
    """The dataset's palette when the vocabulary is its classes
    (:func:`dataset_palette`), else :func:`golden_palette`."""
    palette = dataset_palette(cfg, class_names) if cfg is not None else None
    return golden_palette(len(class_names)) if palette is None else palette


def colour(values) -> Tuple[int, int, int]:
    return tuple(int(v) for v in values)


def legend_panel(entries: Sequence[Tuple[Sequence[int], str]],
                 height: int, width: int = LEGEND_WIDTH) -> np.ndarray:
    """A white panel listing ``(BGR colour, text)`` rows (at least
    ``height`` pixels, taller when the rows need it)."""
    panel = np.full((max(height, LEGEND_ROW * (len(entries) + 1)), width, 3),
                    255, np.uint8)
    for i, (bgr, text) in enumerate(entries):
        y = LEGEND_ROW * i + 6
        cv2.rectangle(panel, (8, y), (26, y + 16), colour(bgr), -1)
        cv2.putText(panel, text, (34, y + 13), FONT, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return panel


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left`` and ``right`` on one white canvas, top-aligned."""
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height, left.shape[1] + right.shape[1], 3), 255,
                     np.uint8)
    canvas[:left.shape[0], :left.shape[1]] = left
    canvas[:right.shape[0], left.shape[1]:] = right
    return canvas


def label_legend(labels: np.ndarray, class_names: Sequence[str],
                 colours: np.ndarray) -> list:
    """Legend rows of the classes present in ``labels``: colour and
    "name share%"."""
    present, counts = np.unique(labels, return_counts=True)
    return [(colours[c], f'{class_names[c][:18]} '
             f'{100.0 * n / labels.size:.0f}%')
            for c, n in zip(present.tolist(), counts.tolist())]


def label_overlay(image: np.ndarray, labels: np.ndarray,
                  colours: np.ndarray, alpha: float) -> np.ndarray:
    """Blend the label colours (``colours[labels]``) over a BGR image."""
    return cv2.addWeighted(image, 1 - alpha, colours[labels], alpha, 0)


def draw_overlay(image: np.ndarray, labels: np.ndarray,
                 class_names: Sequence[str], alpha: float,
                 colours: Optional[np.ndarray] = None) -> np.ndarray:
    """Label colours over a BGR image, with a legend panel of the classes
    present (:data:`LEGEND_WIDTH` wide) on the right."""
    if colours is None:
        colours = golden_palette(len(class_names))
    blended = label_overlay(image, labels, colours, alpha)
    return side_by_side(blended, legend_panel(
        label_legend(labels, class_names, colours), image.shape[0]))


def heat_overlay(image: np.ndarray, heat: np.ndarray,
                 alpha: float = 0.5) -> np.ndarray:
    """A (h, w) map in [0, 1] as a JET heat map over a BGR image (the map
    is resized bilinearly to the image)."""
    heat = np.nan_to_num(np.asarray(heat, np.float32)).clip(0, 1)
    heat = cv2.resize(heat, (image.shape[1], image.shape[0]),
                      interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap((heat * 255).astype(np.uint8),
                                 cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 1 - alpha, coloured, alpha, 0)


def fit(image: np.ndarray, side: int = TILE_SIDE,
        interpolation: int = cv2.INTER_NEAREST) -> np.ndarray:
    """Scale so that the longer side is ``side`` pixels."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=interpolation)


def titled(tile: np.ndarray, title: str,
           border: Optional[Sequence[int]] = None) -> np.ndarray:
    """A tile with a title strip above it (and an optional coloured
    border, e.g. to mark a class as kept or dropped)."""
    if border is not None:
        tile = cv2.copyMakeBorder(tile, 3, 3, 3, 3, cv2.BORDER_CONSTANT,
                                  value=colour(border))
    strip = np.full((TITLE_HEIGHT, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title[:max(1, tile.shape[1] // 7)], (2, 13), FONT,
                0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, tile], axis=0)


def image_grid(tiles: Sequence[np.ndarray], columns: int = 4,
               gap: int = 4) -> np.ndarray:
    """Tiles in rows of ``columns`` on a white canvas, each cell as large
    as the largest tile."""
    if not tiles:
        return np.full((TITLE_HEIGHT, TILE_SIDE, 3), 255, np.uint8)
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    canvas = np.full((rows * cell_h + (rows - 1) * gap,
                      columns * cell_w + (columns - 1) * gap, 3), 255,
                     np.uint8)
    for i, tile in enumerate(tiles):
        y = (i // columns) * (cell_h + gap)
        x = (i % columns) * (cell_w + gap)
        canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return canvas


def heat_grid(image: np.ndarray, maps: np.ndarray, titles: Sequence[str],
              columns: int = 4, normalize: bool = False,
              borders: Optional[Sequence] = None,
              shown: Optional[np.ndarray] = None) -> np.ndarray:
    """One titled heat-map tile per (h, w) map of ``maps`` (K, h, w) over
    ``image``. ``normalize`` min-max scales each map to [0, 1] (for raw
    salience); else the maps are drawn as given, clipped to [0, 1].
    ``shown``: an (h', w') bool grid; its False cells are drawn black (the
    dropped patches of PnP-OVSS's Fig. 4)."""
    base = fit(image, interpolation=cv2.INTER_LINEAR)
    black = None
    if shown is not None:
        black = cv2.resize(np.asarray(shown, np.uint8),
                           (base.shape[1], base.shape[0]),
                           interpolation=cv2.INTER_NEAREST) == 0
    tiles = []
    for i, heat in enumerate(maps):
        heat = np.asarray(heat, np.float32)
        if normalize:
            low, high = float(heat.min()), float(heat.max())
            heat = (heat - low) / (high - low) if high > low else \
                np.zeros_like(heat)
        border = borders[i] if borders is not None else None
        tile = heat_overlay(base, heat)
        if black is not None:
            tile[black] = 0
        tiles.append(titled(tile, titles[i], border))
    return image_grid(tiles, columns)


def read_image(path) -> np.ndarray:
    """A BGR uint8 image (grey and RGBA converted), or an error naming
    the file."""
    import mmcv
    path = Path(path)
    if not path.is_file():
        raise OVSSDataError(f'image {str(path)!r} does not exist')
    try:
        image = mmcv.imread(str(path), flag='color')
    except (cv2.error, OSError, ValueError):
        image = None
    if image is None or image.size == 0:
        raise OVSSDataError(
            f'cannot read image {path}: it is empty, corrupt or not an image '
            f'({", ".join(IMAGE_EXTENSIONS)})')
    return image


def write_image(target, image: np.ndarray) -> None:
    """``cv2.imwrite`` that raises, naming the file, if nothing is
    written."""
    try:
        written = cv2.imwrite(str(target), image)
    except cv2.error:
        written = False
    if not written:
        raise OVSSDataError(
            f'cannot write {target}; check that its folder exists, is '
            'writable and has free space')


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize so the short side is ``short_side`` (ratio kept)."""
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    return cv2.resize(image, (max(1, round(w * scale)),
                              max(1, round(h * scale))),
                      interpolation=cv2.INTER_LINEAR)
