"""Weight loading: one CLIP loader, QuickGELU for OpenAI weights, errors that
name the cause (no offline hint for a shape mismatch), an unreachable hub
that fails within seconds, random weights that are the same in every
process."""
import ast
import fnmatch
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

from mmseg_ovss.blip.loading import load_blip_itm
from mmseg_ovss.blip.reward import (DEFAULT_REWARD_MODEL,
                                    DEFAULT_REWARD_PRETRAINED, ClipReward)
from mmseg_ovss.clip.loading import build_clip_model
from mmseg_ovss.testing.tiny_blip import make_tiny_blip
from mmseg_ovss.testing.tiny_clip import (TINY_QUICK_GELU_TAG,
                                          register_tiny_quick_gelu_tag)
from mmseg_ovss.utils.errors import OVSSWeightsError

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = 'ovss-tiny-ViT-8'
#: generous for any machine; the unreachable hub is given up after 5 s
#: (OVSS_HUB_TIMEOUT), huggingface_hub's retries took 23-166 s here
HUB_BOUND_S = 20


def _activations(model):
    return {type(block.mlp.gelu) for tower in (model.visual.transformer,
                                               model.transformer)
            for block in tower.resblocks}


# ------------------------------------------------------------ QuickGELU
def test_reward_model_of_an_openai_style_tag_gets_quick_gelu(tmp_path):
    """The reward CLIP ran OpenAI ViT-L/14-336 weights with nn.GELU."""
    register_tiny_quick_gelu_tag()
    # the reward's real weights ask for QuickGELU in open_clip's table
    assert open_clip.get_pretrained_cfg(
        DEFAULT_REWARD_MODEL, DEFAULT_REWARD_PRETRAINED)['quick_gelu']
    weights = tmp_path / 'tiny_quickgelu.pt'
    torch.save(build_clip_model(TINY, random_init=True).state_dict(), weights)
    reward = ClipReward(TINY, TINY_QUICK_GELU_TAG, checkpoint=str(weights))
    assert _activations(reward.model) == {QuickGELU}
    # the tag's random stand-in has the same architecture
    stand_in = build_clip_model(TINY, TINY_QUICK_GELU_TAG, random_init=True)
    assert _activations(stand_in) == {QuickGELU}
    # weights of a tag without QuickGELU (random ones here) keep nn.GELU
    assert _activations(ClipReward(TINY, None).model) == {torch.nn.GELU}
    # the reward runs on the loaded weights
    for name, value in reward.model.state_dict().items():
        assert torch.equal(value, torch.load(weights)[name]), name


#: Calls that create a CLIP model or read a TorchScript archive: only the
#: loader (``build_clip_model`` in mmseg_ovss/clip/loading.py) makes them.
LOADER_ONLY_CALLS = ('open_clip.*create_model*',
                     'open_clip.*load_openai_model',
                     'open_clip.*load_checkpoint', 'torch.jit.load')
LOADER = 'mmseg_ovss/clip/loading.py'


def _imported_as(tree) -> dict:
    """Local name -> the dotted name it was imported as."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split('.')[0]
                names[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and \
                not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = \
                    f'{node.module}.{alias.name}'
    return names


def loader_only_calls(source: str):
    """``(line, dotted name)`` of the calls in ``source`` that only the
    loader may make, import aliases resolved (``import open_clip as oc;
    oc.create_model``, ``from torch.jit import load``)."""
    tree = ast.parse(source)
    names = _imported_as(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts, func = [], node.func
        while isinstance(func, ast.Attribute):
            parts.insert(0, func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            continue
        dotted = '.'.join([names.get(func.id, func.id)] + parts)
        if any(fnmatch.fnmatchcase(dotted, p) for p in LOADER_ONLY_CALLS):
            found.append((node.lineno, dotted))
    return found


@pytest.mark.parametrize('source,expected', [
    ('import open_clip\nopen_clip.create_model("ViT-B-16")',
     'open_clip.create_model'),
    ('import open_clip as oc\noc.create_model_and_transforms("x")',
     'open_clip.create_model_and_transforms'),
    ('from open_clip import create_model_from_pretrained as make\nmake()',
     'open_clip.create_model_from_pretrained'),
    ('from open_clip import factory\nfactory.create_model("x")',
     'open_clip.factory.create_model'),
    ('import open_clip\nopen_clip.load_openai_model("ViT-B-16.pt")',
     'open_clip.load_openai_model'),
    ('import torch\ntorch.jit.load("ViT-B-16.pt")', 'torch.jit.load'),
    ('from torch import jit\njit.load(f)', 'torch.jit.load'),
    ('from torch.jit import load as read\nread(f)', 'torch.jit.load'),
])
def test_the_call_finder_sees_through_aliases(source, expected):
    assert loader_only_calls(source) == [(2, expected)]
    # other calls of the same names are not model creation
    assert not loader_only_calls('import timm\ntimm.create_model("vit")')
    assert not loader_only_calls('import torch\ntorch.load(f)')


def test_the_clip_loader_is_the_only_place_models_are_created():
    """Every CLIP of the package comes from ``build_clip_model``: the
    segmentors, the image backbone (models/backbones), the text encoder
    (models/text_encoders), the PnP-OVSS reward, the tools."""
    files = sorted((REPO_ROOT / 'mmseg_ovss').rglob('*.py')) + sorted(
        (REPO_ROOT / 'tools').rglob('*.py'))
    found = {str(p.relative_to(REPO_ROOT)): loader_only_calls(p.read_text())
             for p in files}
    found = {k: v for k, v in found.items() if v}
    assert list(found) == [LOADER], found


#: The registered CLIP towers of issue 9 (models/backbones,
#: models/text_encoders), with what of the CLIP model each keeps.
CLIP_TOWERS = {'OpenCLIPViT': lambda key: key.startswith('visual.'),
               'OpenCLIPTextEncoder': lambda key: not key.startswith(
                   'visual.')}


def _clip_key_of(key: str, clip_keys) -> list:
    """The CLIP state-dict key a tower's ``key`` holds: the same name, or
    the same name under a prefix of the tower's or of CLIP's."""
    if key in clip_keys:
        return [key]
    return [c for c in clip_keys if key.endswith('.' + c)] or \
        [c for c in clip_keys if c.endswith('.' + key)]


@pytest.mark.parametrize('tower', sorted(CLIP_TOWERS))
def test_registered_towers_hold_the_loaders_weights(tower):
    """A tower built with the loader's arguments holds exactly its part of
    ``build_clip_model``'s weights (the same random seed)."""
    import mmseg_ovss  # noqa: F401  (registers the package's modules)
    from mmseg.registry import MODELS
    if MODELS.get(tower) is None:
        pytest.skip(f'{tower} is not registered in this checkout')
    model = MODELS.build(dict(type=tower, model_name='ovss-tiny-ViT-16',
                              pretrained=None, random_init=True))
    clip = build_clip_model('ovss-tiny-ViT-16', pretrained=None,
                            random_init=True).state_dict()
    held = {}
    for key, value in model.state_dict().items():
        match = _clip_key_of(key, clip)
        assert len(match) == 1, (key, match)
        held[match[0]] = value
    own = {k for k in clip if CLIP_TOWERS[tower](k)}
    assert own <= set(held), sorted(own - set(held))
    for key, value in held.items():
        assert torch.equal(value, clip[key]), key


# ----------------------------------------------------- trusted CLIP files
def _object_pickle(tmp_path, state):
    """A CLIP file that pickles an object besides the tensors (a
    third-party's training state)."""
    import numpy as np
    path = tmp_path / 'third_party_clip.pt'
    torch.save({'state_dict': state, 'rng': np.random.RandomState(0)}, path)
    return path


def test_clip_file_with_objects_needs_trust(tmp_path):
    state = build_clip_model(TINY, pretrained=None, random_init=True,
                             seed=5).state_dict()
    path = _object_pickle(tmp_path, state)
    with pytest.raises(OVSSWeightsError) as info:
        build_clip_model(TINY, pretrained=None, checkpoint=str(path))
    message = str(info.value)
    assert str(path) in message
    assert 'numpy.random._pickle.__randomstate_ctor' in message
    assert 'clip.trusted=True' in message and 'trusted=True' in message
    model = build_clip_model(TINY, pretrained=None, checkpoint=str(path),
                             trusted=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_segmentor_clip_trusted_reaches_both_towers(tmp_path):
    """``model.clip.trusted=True`` loads such a file into the image and
    the text tower of a segmentor; without it the build is refused."""
    from mmseg.registry import MODELS
    state = build_clip_model(TINY, pretrained=None, random_init=True,
                             seed=5).state_dict()
    path = _object_pickle(tmp_path, state)
    cfg = dict(type='CLIPDenseSegmentor',
               clip=dict(model_name=TINY, pretrained=None,
                         checkpoint=str(path)),
               text_encoder=dict(templates='single'))
    with pytest.raises(OVSSWeightsError, match='clip.trusted=True'):
        MODELS.build(cfg)
    cfg['clip']['trusted'] = True
    model = MODELS.build(cfg)
    loaded = {f'visual.{k}': v
              for k, v in model.backbone.visual.state_dict().items()}
    loaded.update(model.text_encoder.state_dict())
    assert set(loaded) == set(state)  # every weight, in one tower or the other
    for name, value in loaded.items():
        assert torch.equal(value, state[name]), name


def test_torchscript_archive_loads_without_trust(tmp_path):
    """OpenAI's CLIP files are TorchScript archives: torch.jit.load reads
    them (no pickled Python runs), so they need no opt-in."""
    clip = build_clip_model(TINY, pretrained=None, random_init=True, seed=5)
    path = tmp_path / 'ViT-tiny.pt'
    torch.jit.save(torch.jit.script(_TensorHolder(clip.state_dict())), path)
    model = build_clip_model(TINY, pretrained=None, checkpoint=str(path))
    for name, value in model.state_dict().items():
        assert torch.equal(value, clip.state_dict()[name]), name


class _TensorHolder(torch.nn.Module):
    """A scriptable module whose state dict is ``state`` (the keys of an
    OpenAI TorchScript CLIP file are the model's own)."""

    def __init__(self, state):
        super().__init__()
        for key, value in state.items():
            owner = self
            *path, leaf = key.split('.')
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.register_buffer(leaf, value.clone())

    def forward(self, x):
        return x


# -------------------------------------------------------------- errors
def test_shape_mismatch_is_not_blamed_on_the_network(tmp_path):
    """A file of another architecture (a ViT-L file in a ViT-B config)."""
    path = tmp_path / 'tiny16.pt'
    torch.save(build_clip_model('ovss-tiny-ViT-16', random_init=True)
               .state_dict(), path)
    with pytest.raises(OVSSWeightsError) as info:
        build_clip_model(TINY, pretrained=None, checkpoint=str(path))
    message = str(info.value)
    assert 'do not fit ovss-tiny-ViT-8' in message
    assert 'differ in shape' in message
    # the file's patch embedding: width 64, patch 16 = the tiny ViT-16
    assert 'width 64, patch 16' in message and 'ovss-tiny-ViT-16' in message
    assert 'network' not in message and 'Offline' not in message


@pytest.mark.parametrize('kind', ['jpeg', 'truncated'])
def test_bad_local_clip_file_is_named(tmp_path, kind):
    if kind == 'jpeg':
        path = Path(shutil.copy(REPO_ROOT / 'data/samples/cat.jpg',
                                tmp_path / 'ViT-B-16.pt'))
        phrase = 'is a JPEG image'
    else:
        whole = tmp_path / 'whole.pt'
        torch.save(build_clip_model(TINY, random_init=True).state_dict(),
                   whole)
        path = tmp_path / 'cut.pt'
        path.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
        phrase = 'is truncated'
    with pytest.raises(OVSSWeightsError, match=phrase) as info:
        build_clip_model(TINY, pretrained=None, checkpoint=str(path))
    assert str(path) in str(info.value)
    assert 'network' not in str(info.value)


def test_blip_folder_with_mismatched_weights(tmp_path):
    folder = Path(make_tiny_blip(tmp_path / 'blip'))
    config = json.loads((folder / 'config.json').read_text())
    config['vision_config']['intermediate_size'] *= 2
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(OVSSWeightsError, match='differ in shape') as info:
        load_blip_itm(str(folder))
    assert 'huggingface-cli download' not in str(info.value)
    assert str(folder) in str(info.value)


# -------------------------------------------------------- offline hub
_LOAD = {
    'clip': ('from mmseg_ovss.clip.loading import build_clip_model',
             "build_clip_model('ViT-B-16', pretrained='openai')"),
    'blip': ('from mmseg_ovss.blip.loading import load_blip_itm',
             "load_blip_itm('large-flickr')"),
}
_SCRIPT = """
import time
{imports}
start = time.perf_counter()
try:
    {call}
except Exception as err:
    print(type(err).__name__, err)
print('elapsed', time.perf_counter() - start)
"""


def _silent_server():
    """A loopback port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, held


def _closed_port():
    probe = socket.socket()
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connections are refused
    return port


@pytest.mark.parametrize('hub', ['refused', 'silent'])
@pytest.mark.parametrize('loader', ['clip', 'blip'])
def test_unreachable_hub_fails_fast(loader, hub, tmp_path):
    """No network, HF_HUB_OFFLINE unset: the clear message within seconds
    (huggingface_hub retried for 23 s to 166 s)."""
    server = None
    if hub == 'silent':
        server, held = _silent_server()
        port = server.getsockname()[1]
    else:
        port = _closed_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')
           and not k.lower().endswith('_proxy')}
    env.update(HF_ENDPOINT=f'http://127.0.0.1:{port}',
               HF_HOME=str(tmp_path / 'hf'), NO_PROXY='127.0.0.1',
               OVSS_HUB_TIMEOUT='5')
    imports, call = _LOAD[loader]
    script = _SCRIPT.format(imports=imports, call=call)
    try:
        proc = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        if server is not None:
            server.close()
    out = proc.stdout
    assert 'OVSSWeightsError' in out, proc.stdout + proc.stderr[-3000:]
    assert f'127.0.0.1:{port} is unreachable' in out
    hint = ('clip.checkpoint=/path' if loader == 'clip'
            else "model.blip.pretrained='<folder>'")
    assert hint in out
    elapsed = float(out.rsplit('elapsed', 1)[1])
    assert elapsed < HUB_BOUND_S, out


# ------------------------------------------------------- random weights
_DIGEST = """
import hashlib, sys, torch
torch.manual_seed(int(sys.argv[1]))  # a different global RNG per process
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
import mmseg_ovss
from mmseg_ovss.clip.loading import build_clip_model

def digest(model_or_state):
    state = model_or_state if isinstance(model_or_state, dict) \
        else model_or_state.state_dict()
    h = hashlib.sha256()
    for name in sorted(state):  # the same order for both layouts
        h.update(name.encode())
        h.update(state[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()

print('loader', digest(build_clip_model('ovss-tiny-ViT-16', random_init=True)))
print('seed1', digest(build_clip_model('ovss-tiny-ViT-16', random_init=True,
                                       seed=1)))
# what tools/demo.py --random-init and tools/benchmark.py build
cfg = Config.fromfile('configs/baselines/sclip_voc21.py')
init_default_scope('mmseg')
cfg.model.clip.model_name = 'ovss-tiny-ViT-16'
cfg.model.clip.random_init = True
segmentor = MODELS.build(cfg.model)
# the two towers together, under open_clip's own state-dict names
towers = {'visual.' + name: value for name, value
          in segmentor.backbone.visual.state_dict().items()}
towers.update(segmentor.text_encoder.state_dict())
print('config', digest(towers))
# a BLIP config without weights (pretrained=None), e.g. the benchmarks'
from mmseg_ovss.blip.loading import load_blip_itm
from mmseg_ovss.testing.tiny_blip import tiny_blip_config, tiny_vocab
blip, _ = load_blip_itm(None, config=tiny_blip_config(len(tiny_vocab())),
                        tokenizer=sys.argv[2])
print('blip', digest(blip))
# ProxyCLIP's random vision foundation model (timm)
from mmseg_ovss.clip.strategies import build_dense_strategy
print('vfm', digest(build_dense_strategy(dict(
    type='ProxyCLIP', random_init=True, vfm_model='vit_tiny_patch16_224')).vfm))
"""


def test_random_init_is_the_same_in_two_processes(tmp_path):
    from mmseg_ovss.testing.tiny_blip import write_tiny_tokenizer
    tokenizer = write_tiny_tokenizer(tmp_path / 'tokenizer')
    procs = [subprocess.Popen([sys.executable, '-c', _DIGEST, str(seed),
                               str(tokenizer)],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for seed in (11, 22)]
    digests = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        digests.append(dict(line.split() for line in out.splitlines()
                            if line.startswith(('loader', 'seed1',
                                                'config', 'blip', 'vfm'))))
    first, second = digests
    assert first == second and len(first) == 5
    assert first['loader'] == first['config']
    assert first['seed1'] != first['loader']  # the seed can be overridden


def test_random_init_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    build_clip_model(TINY, random_init=True)
    assert torch.equal(torch.get_rng_state(), state)
