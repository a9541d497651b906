"""tools/benchmark.py on real photos (--images) and the label agreement it
reports between a config and its --baseline."""
import pytest
import torch

from mmseg_ovss.testing.tools import load_tool, run_tool
from mmseg_ovss.utils.errors import OVSSConfigError


def test_label_agreement_counts_equal_pixels():
    tool = load_tool('benchmark')
    same = torch.tensor([[0, 1], [2, 3]])
    one_off = torch.tensor([[0, 1], [0, 3]])
    agreement = tool.label_agreement([same, same], [same, one_off])
    assert agreement['per_image'] == [1.0, 0.75]
    assert agreement['mean'] == 0.875 and agreement['min'] == 0.75


def test_real_images_are_resized_to_the_short_side(repo_root):
    """--images reads the photos, keeps their aspect at --short-side and
    cycles through them; a config against itself agrees on every pixel."""
    from PIL import Image
    samples = repo_root / 'data' / 'samples'
    photos = [samples / 'cat.jpg', samples / 'rocket.jpg']
    config = repo_root / 'configs' / 'baselines' / 'sclip_ade.py'
    result = run_tool('benchmark', [
        config, '--baseline', config, '--random-init', '--model-name',
        'ovss-tiny-ViT-16', '--images', *photos, '--num-images', '3',
        '--warmup', '1', '--short-side', '32', '--num-classes', '5',
        '--templates', 'single', '--flops', 'none', '--device', 'cpu'])
    expected = []
    for index in (1, 0, 1):  # after the warm-up photo, cycling
        width, height = Image.open(photos[index]).size
        scale = 32 / min(width, height)
        expected.append([round(height * scale), round(width * scale)])
    assert result['image_sizes'] == expected
    assert result['image_files'] == [str(p) for p in photos]
    assert result['label_agreement']['per_image'] == [1.0, 1.0, 1.0]


def test_unreadable_image_is_named(tmp_path):
    tool = load_tool('benchmark')
    bad = tmp_path / 'notes.jpg'
    bad.write_text('not an image')
    with pytest.raises(OVSSConfigError, match='notes.jpg'):
        tool.read_image(str(bad), 32)
    with pytest.raises(SystemExit):
        tool.parse_args(['c.py', '--train', '--images', str(bad)])


def test_read_image_keep_ratio_scale_is_the_test_pipeline_resize(tmp_path):
    """The keep-ratio mode (side_by_side.py's --images) fits the image into
    the (long, short) scale as mmcv's keep-ratio Resize does; pixels come
    back in BGR order, as the data preprocessors expect."""
    import numpy as np
    from PIL import Image
    tool = load_tool('benchmark')
    rgb = np.zeros((40, 100, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red in RGB
    path = tmp_path / 'wide.png'
    Image.fromarray(rgb).save(path)
    # 100x40 into (2048, 20): the short side bounds it, factor 0.5
    image = tool.read_image(str(path), keep_ratio_scale=(2048, 20))
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 20, 50)
    assert image[2].eq(200).all() and image[:2].eq(0).all()
    # into (60, 50): the long side bounds it, factor 0.6 (< 50 / 40)
    image = tool.read_image(str(path), keep_ratio_scale=(60, 50))
    assert tuple(image.shape) == (3, 24, 60)
    image = tool.read_image(str(path), short_side=10)
    assert tuple(image.shape) == (3, 10, 25)
    with pytest.raises(ValueError, match='exactly one'):
        tool.read_image(str(path), 10, keep_ratio_scale=(60, 50))


def test_image_metainfo_is_the_unpadded_shape():
    tool = load_tool('benchmark')
    meta = tool.image_metainfo(torch.zeros(3, 7, 9, dtype=torch.uint8))
    assert meta == dict(ori_shape=(7, 9), img_shape=(7, 9),
                        pad_shape=(7, 9), padding_size=[0, 0, 0, 0])


def test_label_agreement_rejects_mismatched_maps():
    tool = load_tool('benchmark')
    with pytest.raises(ValueError, match='shapes'):
        tool.label_agreement([torch.zeros(2, 2)], [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match='same, non-zero number'):
        tool.label_agreement([torch.zeros(2, 2)], [])
