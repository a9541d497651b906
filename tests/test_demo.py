"""tools/demo.py writes colour overlays; bad input gives clear errors."""
import cv2
import numpy as np
import pytest

from mmseg_ovss.testing.tools import run_tool
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

TINY = ['--random-init', '--model-name', 'ovss-tiny-ViT-16',
        '--short-side', '32']


def test_demo_on_bundled_sample(tmp_path, repo_root):
    sample = repo_root / 'data' / 'samples' / 'cat.jpg'
    written = run_tool('demo', [sample, '--out-dir', tmp_path, *TINY])
    overlay = cv2.imread(written[0])
    image = cv2.imread(str(sample))
    assert overlay.shape[1] == image.shape[1] + 220  # image + legend
    assert overlay.shape[0] >= image.shape[0]


def test_demo_grayscale_rgba_and_vocabulary(tmp_path):
    gray = (np.arange(40 * 56) % 251).astype(np.uint8).reshape(40, 56)
    rgba = np.dstack([np.full((30, 30, 3), 120, np.uint8),
                      np.full((30, 30), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / 'gray.png'), gray)
    cv2.imwrite(str(tmp_path / 'rgba.png'), rgba)
    written = run_tool('demo', [
        tmp_path / 'gray.png', tmp_path / 'rgba.png', '--out-dir',
        tmp_path / 'out', '--classes', 'background', 'cat, kitten', 'dog',
        *TINY])
    assert [cv2.imread(p).shape[1] for p in written] == [56 + 220, 30 + 220]


def test_demo_errors(tmp_path, repo_root):
    with pytest.raises(OVSSDataError, match='does not exist'):
        run_tool('demo', [tmp_path / 'none.jpg', *TINY])
    image = tmp_path / 'x.png'
    cv2.imwrite(str(image), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(OVSSConfigError, match='--classes'):
        run_tool('demo', [image, '--out-dir', tmp_path, *TINY])
    with pytest.raises(OVSSConfigError, match='duplicate'):
        run_tool('demo', [image, '--out-dir', tmp_path, '--classes', 'cat',
                          'cat', *TINY])
    with pytest.raises(SystemExit, match='--random-init'):
        run_tool('demo', [image, '--classes', 'cat', '--model-name',
                          'ovss-tiny-ViT-16', '--checkpoint',
                          tmp_path / 'missing.pt'])
