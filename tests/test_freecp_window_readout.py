"""FreeCP's ``box_encoder='window_readout'``: Eq. 8's boxes embedded from
the windows' own tokens instead of crop forwards (a speed option).

The readout is checked against open_clip's own block run on the region's
tokens alone, the pipeline and head against their crop path's contract
(same outputs' shapes, no crop encoded), and the options' errors."""
import math

import pytest
import torch
from mmseg.registry import MODELS

import mmseg_ovss  # noqa: F401
from mmseg_ovss.clip.attention import RegionCLSReadout
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.clip.dense_head import resolve_layer_indices
from mmseg_ovss.freecp.pipeline import FreeCPWindowPipeline
from mmseg_ovss.utils.errors import OVSSConfigError
from mmseg_ovss.utils.profiler import StageProfiler

CLASSES = (('sky', 'wall'), ('cat', ), ('dog', ), ('grass', ), ('car', ))
INIT_SCALE = (torch.ones([]) * math.log(1 / 0.07)).exp()


@pytest.fixture(scope='module')
def windows():
    torch.manual_seed(3)
    return torch.randn(2, 3, 64, 80)  # grid 4 x 5


def last_block_input(backbone, images):
    """The tokens entering the last block, through open_clip's own blocks."""
    with torch.no_grad():
        x, _ = backbone.embed(images)
        for block in backbone.blocks[:-1]:
            x = block(x)
    return x


def tolerance(reference, backbone):
    # a block and the projection: reductions of at most 4 x width terms
    # (the MLP) and one softmax over the window's tokens, in float32
    width = backbone.embed_dims
    scale = float(reference.abs().max())
    return 4 * width * torch.finfo(torch.float32).eps * max(scale, 1.0)


def test_readout_equals_the_last_block_on_the_region_tokens(tiny_towers,
                                                            windows):
    backbone, _ = tiny_towers
    with torch.no_grad():
        feats = backbone.forward_dense(windows)
    # pixel boxes (x0, y0, x1, y1), exclusive ends; grid 4 x 5 of 16 px
    boxes = torch.tensor([[0, 0, 80, 64],     # the whole window
                          [16, 16, 48, 48],   # patches x 1-2, y 1-2
                          [5, 20, 17, 33],    # touches x 0-1, y 1-2
                          [64, 48, 80, 64],   # one patch
                          [16, 16, 48, 48]])
    window_index = torch.tensor([0, 1, 0, 1, 0])
    with torch.no_grad():
        read = feats.encode_regions(window_index, boxes)
    assert read.shape == (5, backbone.out_dims)
    tokens = last_block_input(backbone, windows)
    cells = {0: [(y, x) for y in range(4) for x in range(5)],
             1: [(y, x) for y in (1, 2) for x in (1, 2)],
             2: [(y, x) for y in (1, 2) for x in (0, 1)],
             3: [(3, 4)],
             4: [(y, x) for y in (1, 2) for x in (1, 2)]}
    for r, window in enumerate(window_index.tolist()):
        keep = [0] + [1 + y * 5 + x for y, x in cells[r]]
        with torch.no_grad():
            region = backbone.blocks[-1](tokens[window:window + 1, keep])
            direct = backbone.project(region[:, 0])[0]
        torch.testing.assert_close(read[r], direct, rtol=0,
                                   atol=tolerance(direct, backbone))
    # the whole-window box is the window's own unmodified CLS embedding
    with torch.no_grad():
        whole = backbone.encode_cls(windows[:1])[0]
    torch.testing.assert_close(read[0], whole, rtol=0,
                               atol=tolerance(whole, backbone))
    assert feats.encode_regions(window_index[:0], boxes[:0]).shape == \
        (0, backbone.out_dims)
    # later calls (Eq. 8's rounds) reuse each window's projected keys and
    # values: the same embeddings as reading every box at once
    with torch.no_grad():
        rounds = torch.cat([feats.encode_regions(window_index[:2], boxes[:2]),
                            feats.encode_regions(window_index[2:], boxes[2:])])
    torch.testing.assert_close(rounds, read, rtol=0,
                               atol=tolerance(read, backbone))


def test_readout_at_another_precision_reads_its_own_tokens(tiny_towers,
                                                           windows):
    backbone, _ = tiny_towers
    with torch.no_grad():
        exact = backbone.forward_dense(windows[:1])
        half = backbone.forward_dense(windows[:1], dtype=torch.bfloat16)
        box = torch.tensor([[16, 16, 48, 48]])
        a = exact.encode_regions(torch.tensor([0]), box)
        b = half.encode_regions(torch.tensor([0]), box)
    assert b.dtype == torch.float32
    # bf16 keeps 8 bits: the embeddings agree to its precision
    cosine = torch.nn.functional.cosine_similarity(a, b).item()
    assert cosine > 1 - 64 * 2.0**-8


def build_head(**kwargs):
    cfg = dict(type='FreeCPHead', rp_threshold=0.0, ap_threshold=0.0,
               descriptions='data/descriptions/coco_object.json', crop_size=32,
               box_encoder='window_readout')
    cfg.update(kwargs)
    return MODELS.build(cfg)


def head_features(backbone, head, images):
    layers = resolve_layer_indices(head.required_attention_layers,
                                   backbone.num_layers)
    with torch.no_grad():
        feats = backbone.forward_dense(images, attention_layers=layers,
                                       attention_heads=head.attention_heads)
    feats.logit_scale = INIT_SCALE
    return feats


@pytest.mark.filterwarnings('ignore:no FreeCP description')
def test_head_reads_boxes_from_the_windows_and_encodes_no_crop(tiny_towers,
                                                               windows):
    backbone, text = tiny_towers
    vocab = text(Vocabulary(CLASSES, 0))
    head = build_head()
    feats = head_features(backbone, head, windows)
    asked = []

    def no_crops(crops, dtype=None):
        raise AssertionError('a crop was encoded')

    def recording(window_index, boxes):
        asked.append((window_index.clone(), boxes.clone()))
        return read(window_index, boxes)

    read = feats.encode_regions
    feats.encode_image = no_crops
    feats.encode_regions = recording
    profiler = StageProfiler(cuda_sync=False)
    with torch.no_grad(), profiler:
        maps = head(feats, vocab)
    assert maps.shape == (2, 5, 4, 5)
    assert maps.min() >= 0 and maps.max() <= 1
    # every class pair is ambiguous at ap_threshold 0: boxes were read
    assert asked
    read_boxes = sum(len(index) for index, _ in asked)
    assert profiler.detail_items['region_readout'] == read_boxes
    for index, boxes in asked:
        assert set(index.tolist()) <= {0, 1}
        assert torch.all(boxes[:, 2] > boxes[:, 0])
        assert torch.all(boxes[:, 3] > boxes[:, 1])
        assert torch.all(boxes % 16 == 0)  # patch boxes of the window grid
    # the same windows with crops: the same outputs' contract
    crop_head = build_head(box_encoder='crop')
    with torch.no_grad():
        crop_maps = crop_head(head_features(backbone, crop_head, windows),
                              vocab)
    assert crop_maps.shape == maps.shape


def test_window_readout_errors(tiny_towers, windows):
    with pytest.raises(OVSSConfigError, match='box_encoder'):
        FreeCPWindowPipeline(box_encoder='pixels')
    with pytest.raises(OVSSConfigError, match="purification_scope='image'"):
        build_head(purification_scope='image')
    pipeline = FreeCPWindowPipeline(rp_threshold=0.0, ap_threshold=0.0,
                                    purification='ap',
                                    box_encoder='window_readout')
    maps = torch.rand(1, 3, 4, 5)
    with pytest.raises(OVSSConfigError, match='encode_regions'):
        pipeline.purify(maps, maps, [1, 2, 3], windows[:1], 16,
                        encode_image=lambda crops: crops.mean((2, 3)),
                        class_embeddings=torch.randn(4, 8))
    backbone, _ = tiny_towers
    readout = RegionCLSReadout(backbone.blocks[-1],
                               torch.randn(1, 21, backbone.embed_dims))
    with pytest.raises(OVSSConfigError, match='token_mask'):
        readout(torch.tensor([0]), torch.ones(1, 20, dtype=torch.bool))
