"""Fully connected CRF (Krähenbühl & Koltun, 2011) over class probabilities.

Wraps ``pydensecrf`` (PyPI ``pydensecrf2``, an optional extra). Defaults are
PnP-OVSS's, "from CutLER without tuning" (paper §4, implementation details;
the authors' ``densecrf`` in ``PnP_OVSS_0514_updated_segmentation.py`` of
letitiabanana/PnP-OVSS): 10 mean-field iterations, Gaussian kernel sxy 3 /
compat 7, bilateral kernel sxy 50 / srgb 5 / compat 10.
"""
import numpy as np

from mmseg_ovss.utils.errors import OVSSConfigError

INSTALL_HINT = ("pip install 'Cython<3' && pip install --no-build-isolation "
                "pydensecrf2==1.1")


def crf_available() -> bool:
    """Whether ``pydensecrf`` can be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def require_crf() -> None:
    """Raise a clear error when DenseCRF is asked for but not installed."""
    if not crf_available():
        raise OVSSConfigError(
            'DenseCRF is enabled but pydensecrf is not installed. Install it '
            f'with `{INSTALL_HINT}`, or switch the CRF off (e.g. '
            '`--cfg-options model.crf=None`).')


def dense_crf(image: np.ndarray, probs: np.ndarray, iterations: int = 10,
              gaussian_sxy: float = 3, gaussian_compat: float = 7,
              bilateral_sxy: float = 50, bilateral_srgb: float = 5,
              bilateral_compat: float = 10) -> np.ndarray:
    """Refine per-pixel class probabilities with a dense CRF.

    Args:
        image: (H, W, 3) uint8 RGB image.
        probs: (C, H, W) class probabilities (summing to 1 over C).
    Returns:
        (C, H, W) float32 marginals after mean-field inference.
    """
    require_crf()
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise OVSSConfigError(
            f'dense_crf needs an (H, W, 3) uint8 RGB image, got '
            f'{image.shape} {image.dtype}.')
    num_classes, height, width = probs.shape
    if image.shape[:2] != (height, width):
        raise OVSSConfigError(
            f'dense_crf: image {image.shape[:2]} and probabilities '
            f'{(height, width)} differ in size; resize one to the other.')
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = unary_from_softmax(probs.astype(np.float32))
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb,
                             rgbim=np.ascontiguousarray(image),
                             compat=bilateral_compat)
    q = crf.inference(iterations)
    return np.asarray(q, dtype=np.float32).reshape(num_classes, height, width)
