"""tools/demo.py writes colour overlays; bad input gives clear errors."""
from pathlib import Path

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


def _image(path, size=(20, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), 90, np.uint8))
    return path


@pytest.mark.parametrize('argv,match', [
    (['--short-side', '0'], r'--short-side 0 is out of range: give 16..4096'),
    (['--short-side', '-5'], '--short-side -5 is out of range'),
    (['--short-side', '100000'], '--short-side 100000 is out of range'),
    (['--alpha', '1.5'], r'--alpha 1.5 is out of range: give 0'),
    (['--alpha', '-0.1'], '--alpha -0.1 is out of range'),
    (['--alpha', 'nan'], '--alpha nan is out of range'),
    (['--classes', ''], 'empty name'),
    (['--classes', 'cat', ', '], 'empty name'),
    (['--device', 'gpu0'], "--device 'gpu0' is not a torch device"),
    (['--device', 'cuda:99'], '--device cuda:99: this machine has'),
])
def test_demo_arguments_out_of_range(tmp_path, argv, match):
    image = _image(tmp_path / 'x.png')
    argv = [image, '--out-dir', tmp_path / 'out', *TINY, *argv]
    if '--classes' not in argv:
        argv += ['--classes', 'cat']
    with pytest.raises(OVSSConfigError, match=match):
        run_tool('demo', argv)
    assert not (tmp_path / 'out').exists()  # refused before any work


def test_demo_input_errors(tmp_path):
    image = _image(tmp_path / 'x.png')
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.txt').write_text('no image here')
    with pytest.raises(OVSSDataError, match='folder .*empty holds no image'):
        run_tool('demo', [image, tmp_path / 'empty', '--classes', 'cat',
                          *TINY])
    with pytest.raises(OVSSConfigError, match='either --classes or'):
        run_tool('demo', [image, '--classes', 'cat', '--class-file',
                          tmp_path / 'names.txt', *TINY])
    (tmp_path / 'names.txt').write_text('cat\n\ndog\n')
    with pytest.raises(OVSSConfigError, match='names.txt.*line 2 is empty'):
        run_tool('demo', [image, '--class-file', tmp_path / 'names.txt',
                          *TINY])
    with pytest.raises(OVSSDataError, match='--out-dir .* is a file'):
        run_tool('demo', [image, '--classes', 'cat', '--out-dir',
                          tmp_path / 'names.txt', *TINY])
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not an image')
    with pytest.raises(OVSSDataError, match='cannot read image .*broken.jpg'):
        run_tool('demo', [broken, '--classes', 'cat', '--out-dir',
                          tmp_path / 'out', *TINY])


def test_demo_inputs_with_the_same_name_get_distinct_outputs(tmp_path):
    inputs = [_image(tmp_path / 'a' / 'cat.jpg'),
              _image(tmp_path / 'b' / 'cat.jpg', (30, 16)),
              _image(tmp_path / 'b' / 'cat.png', (26, 18)),
              _image(tmp_path / 'b' / 'dog.png')]
    out = tmp_path / 'out'
    written = run_tool('demo', [*inputs, '--classes', 'cat', 'dog',
                                '--out-dir', out, *TINY])
    # names below the deepest common folder of each clashing group
    assert [Path(p).name for p in written] == [
        'a_cat_jpg_overlay.png', 'b_cat_jpg_overlay.png',
        'b_cat_png_overlay.png', 'dog_overlay.png']
    for path, image in zip(written, inputs):  # each from its own input
        overlay = cv2.imread(path)
        assert overlay.shape[1] == cv2.imread(str(image)).shape[1] + 220
    # the same file twice (a folder and a file in it) is segmented once
    again = run_tool('demo', [tmp_path / 'a', inputs[0], '--classes', 'cat',
                              '--out-dir', out, *TINY])
    assert [Path(p).name for p in again] == ['cat_overlay.png']


def test_demo_reports_files_it_cannot_write(tmp_path):
    image = _image(tmp_path / 'x.png')
    out = tmp_path / 'out'
    (out / 'x_overlay.png').mkdir(parents=True)  # a folder blocks the file
    with pytest.raises(OVSSDataError, match='cannot write .*x_overlay.png'):
        run_tool('demo', [image, '--classes', 'cat', '--out-dir', out,
                          *TINY])


def test_demo_never_overwrites_an_input(tmp_path):
    image = _image(tmp_path / 'x.png')
    own_overlay = _image(tmp_path / 'x_overlay.png')
    with pytest.raises(OVSSDataError, match='would overwrite an input'):
        run_tool('demo', [image, own_overlay, '--classes', 'cat',
                          '--out-dir', tmp_path, *TINY])
