"""glibc keeps freed memory for the CPU inference path
(``mmseg_ovss.utils.cpu_allocator``): set once per process, chosen by the
environment, and freed large tensors are then reused without page
faults. The settings are process-wide, so each case runs in a new
interpreter."""
import os
import subprocess
import sys
import textwrap

import pytest

from mmseg_ovss.utils import cpu_allocator
from mmseg_ovss.utils.cpu_allocator import (ENVIRONMENT_VARIABLE,
                                            cpu_malloc_choice)
from mmseg_ovss.utils.errors import OVSSConfigError

GLIBC = cpu_allocator._glibc_mallopt() is not None

# 24 MiB tensors written, freed and made again: the minor page faults of
# rounds 5-9 (glibc may place the tensors of the first rounds at new
# addresses, each faulted in once, before its freed chunks settle)
FAULTS_OF_REPEATS = textwrap.dedent('''
    import resource
    import torch
    from mmseg_ovss.utils.cpu_allocator import keep_freed_memory
    print('=', keep_freed_memory())
    elements = 6 * 1024 * 1024
    for repeat in range(10):
        if repeat == 5:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        other = torch.ones(elements // 3)  # sizes that move glibc's own
        kept = torch.ones(elements)        # mmap threshold
        del other, kept
    pages = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
    print('=', pages)
''')


def run_python(code: str, choice=None):
    env = dict(os.environ)
    env.pop(ENVIRONMENT_VARIABLE, None)
    env.pop('GLIBC_TUNABLES', None)
    if choice is not None:
        env[ENVIRONMENT_VARIABLE] = choice
    done = subprocess.run([sys.executable, '-c', code], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # the code's own lines start with '= ' (the log may print too)
    return [line[2:] for line in done.stdout.splitlines()
            if line.startswith('= ')]


@pytest.mark.skipif(not GLIBC, reason='the C library is not glibc')
def test_kept_memory_is_reused_without_page_faults():
    outcome, pages = run_python(FAULTS_OF_REPEATS)
    assert outcome == 'kept'
    # five rounds of 32 MiB written: 41 thousand pages if faulted anew;
    # a few hundred at most from the interpreter itself
    assert int(pages) < 1000


@pytest.mark.skipif(not GLIBC, reason='the C library is not glibc')
def test_system_choice_leaves_glibc_alone():
    outcome, _ = run_python(FAULTS_OF_REPEATS, choice='system')
    assert outcome == 'system'


def test_a_bad_choice_names_the_variable_and_the_options(monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, 'big')
    with pytest.raises(OVSSConfigError, match=ENVIRONMENT_VARIABLE) as info:
        cpu_malloc_choice()
    assert "'keep'" in str(info.value) and "'system'" in str(info.value)


def test_the_segmentor_keeps_freed_memory_before_cpu_inference():
    code = textwrap.dedent('''
        import torch
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS
        import mmseg_ovss  # noqa: F401
        from mmseg_ovss.utils import cpu_allocator
        init_default_scope('mmseg')
        model = MODELS.build(dict(
            type='CLIPDenseSegmentor',
            clip=dict(model_name='ovss-tiny-ViT-16', random_init=True),
            backbone=dict(type='OpenCLIPViT',
                          dense_strategy=dict(type='MaskCLIP')),
            text_encoder=dict(type='OpenCLIPTextEncoder',
                              templates='single'))).eval()
        model.set_vocabulary(['cat', 'dog'])
        print('=', cpu_allocator.keep_freed_memory.cache_info().currsize)
        with torch.no_grad():
            model.predict(torch.randn(1, 3, 64, 64))
        print('=', cpu_allocator.keep_freed_memory.cache_info().currsize)
        print('=', cpu_allocator.keep_freed_memory())
    ''')
    before, after, outcome = run_python(code)
    assert (before, after) == ('0', '1')
    assert outcome == ('kept' if GLIBC else 'no glibc')
