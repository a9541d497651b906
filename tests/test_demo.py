"""tools/demo.py writes colour overlays (CLIP and PnP-OVSS configs) and the
PnP-OVSS stage maps; bad input gives clear errors."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

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


# ------------------------------------------------------------- PnP-OVSS
@pytest.fixture(scope='module')
def blip_folder(tmp_path_factory):
    from mmseg_ovss.testing.tiny_blip import make_tiny_blip
    return make_tiny_blip(tmp_path_factory.mktemp('tiny_blip'))


# the tiny random BLIP's maps are non-zero at its first layer only
PNP = ['--config', 'configs/pnp_ovss/blip_voc20.py', '--short-side', '32',
       '--cfg-options', 'model.crf=None', 'model.cross_attention_layer=1']


def test_demo_runs_pnp_configs_and_writes_the_stages(tmp_path, blip_folder):
    image = np.random.RandomState(0).randint(0, 255, (40, 56, 3), np.uint8)
    cv2.imwrite(str(tmp_path / 'photo.png'), image)
    written = run_tool('demo', [
        tmp_path / 'photo.png', '--out-dir', tmp_path / 'out', '--classes',
        'background', 'cat', 'dog', '--checkpoint', blip_folder, '--stages',
        *PNP])
    overlay = cv2.imread(written[0])
    assert overlay.shape[1] == 56 + 220 and overlay.shape[0] >= 40
    folder = tmp_path / 'out' / 'photo_stages'
    facts = json.loads((folder / 'stages.json').read_text())
    # 4 median passes on the 2 x 3 patch grid (32 x 45 px input)
    assert facts['classes'] == ['cat', 'dog'] and facts['passes'] == 4
    assert facts['kept_patches'] == [6, 3, 1, 0]
    assert facts['gradcam'] and facts['blur'] and not facts['crf']
    assert facts['files'] == [
        '01_cross_attention.png', '02_gradcam.png',
        *[f'03_dropout_pass{t}.png' for t in range(1, 5)],
        '04_salience_sum.png', '05_normalized.png', '06_blur.png',
        '08_labels.png']
    assert written[1:] == [str(folder / f) for f in facts['files']]
    assert sum(facts['label_shares'].values()) == pytest.approx(1)
    for name in facts['files'][:-1]:  # tiles of 2 classes (3 after blur)
        grid = cv2.imread(str(folder / name))
        assert grid.shape[1] == (3 if name == '06_blur.png' else 2) * 160 \
            + (2 if name == '06_blur.png' else 1) * 4
    labels = cv2.imread(str(folder / '08_labels.png'))
    assert labels.shape == overlay.shape
    # the stage labels are the overlay's: same legend rows and colours
    assert np.array_equal(labels, overlay)


def test_demo_pnp_without_background_marks_unlabelled_pixels(tmp_path,
                                                             blip_folder):
    """Without a "background" class the all-off pixels are ignore_index;
    the legend names them "(no class)"."""
    from mmseg_ovss.visualization.models import (build_segmentor,
                                                 load_config, model_sample)
    image = np.random.RandomState(1).randint(0, 255, (40, 56, 3), np.uint8)
    cv2.imwrite(str(tmp_path / 'photo.png'), image)
    run_tool('demo', [tmp_path / 'photo.png', '--out-dir', tmp_path,
                      '--classes', 'cat', 'dog', '--checkpoint', blip_folder,
                      *PNP])
    cfg = load_config(PNP[1], {'model.crf': None,
                               'model.cross_attention_layer': 1,
                               'model.blip.pretrained': str(blip_folder)})
    model = build_segmentor(cfg)
    model.set_vocabulary(['cat', 'dog'])
    inputs, sample = model_sample(model, image, 32)
    with torch.no_grad():
        labels = model.predict(inputs, [sample])[0].pred_sem_seg.data[0]
    assert 255 in labels.unique().tolist()
    from mmseg_ovss.testing.tools import load_tool
    demo = load_tool('demo')
    shown, names, colours = demo.label_names_and_colours(
        model, labels.numpy(), ['cat', 'dog'], cfg)
    assert names == ['cat', 'dog', '(no class)'] and len(colours) == 3
    assert np.array_equal(shown == 2, labels.numpy() == 255)
    # the overlay's legend lists one row per label present
    overlay = cv2.imread(str(tmp_path / 'photo_overlay.png'))
    legend = overlay[:, 56:]
    rows = [y for y in range(6, legend.shape[0], 22)
            if (legend[y + 8, 10:24] != 255).any()]
    assert len(rows) == len(np.unique(shown))


def test_demo_config_errors(tmp_path, blip_folder):
    image = _image(tmp_path / 'x.png')
    with pytest.raises(OVSSConfigError, match='--stages writes the PnP-OVSS'
                       '.*tools/freecp_visualize.py'):
        run_tool('demo', [image, '--classes', 'cat', '--stages', *TINY,
                          '--out-dir', tmp_path])
    with pytest.raises(OVSSConfigError, match='is a PnP-OVSS config.*'
                       '--checkpoint'):
        run_tool('demo', [image, '--classes', 'cat', '--out-dir', tmp_path,
                          '--random-init', *PNP])
    other = tmp_path / 'seg.py'
    other.write_text("model = dict(type='EncoderDecoder')\n")
    with pytest.raises(OVSSConfigError, match='neither model.clip'):
        run_tool('demo', [image, '--classes', 'cat', '--out-dir', tmp_path,
                          '--config', other])
    trained = tmp_path / 'trained.py'
    trained.write_text("model = dict(type='CLIPRCSegmentor', "
                       "clip=dict(model_name='ViT-B-16'))\n")
    with pytest.raises(OVSSConfigError, match='CLIPRCSegmentor.*tools/test'):
        run_tool('demo', [image, '--classes', 'cat', '--out-dir', tmp_path,
                          '--config', trained])
    empty = tmp_path / 'empty.py'
    empty.write_text('x = 1\n')
    with pytest.raises(OVSSConfigError, match='has no model'):
        run_tool('demo', [image, '--classes', 'cat', '--out-dir', tmp_path,
                          '--config', empty])


def test_demo_pnp_stages_with_dense_crf(tmp_path, blip_folder):
    from mmseg_ovss.utils.crf import crf_available
    if not crf_available():
        pytest.skip('pydensecrf (pydensecrf2) not installed')
    image = _image(tmp_path / 'x.png', (40, 56))
    written = run_tool('demo', [
        image, '--out-dir', tmp_path / 'out', '--classes', 'background',
        'cat', '--checkpoint', blip_folder, '--stages',
        *PNP[:-2], 'model.crf.iterations=1',
        'model.cross_attention_layer=1', 'model.blur_sigma=None'])
    facts = json.loads((tmp_path / 'out' / 'x_stages' /
                        'stages.json').read_text())
    assert facts['crf'] and not facts['blur']
    assert '07_crf.png' in facts['files'] and '06_blur.png' not in \
        facts['files']
    crf = cv2.imread(str(tmp_path / 'out' / 'x_stages' / '07_crf.png'))
    assert crf.shape[1] == 2 * 160 + 4  # background + cat channels
    assert len(written) == 1 + len(facts['files'])
