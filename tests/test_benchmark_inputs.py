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
