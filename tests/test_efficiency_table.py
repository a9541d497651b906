"""``tools/analysis/efficiency_table.py`` on tiny versions of the shipped
DCP-CLIP and CAT-Seg ADE-150 evaluation configs (generated images, CPU).

The first test skips FLOPs (``--no-flops``) and checks the parameter
counts and the reported number of selected classes; the second pins the
selection to K = 1 and 3 classes per view (``--num-selected``) and checks
that the DCP-CLIP FLOPs grow linearly in K and the fit the table prints.
"""
import importlib.util
import json
from pathlib import Path

from mmseg_ovss.testing.cost_volume_configs import write_tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def _tool():
    path = REPO_ROOT / 'tools/analysis/efficiency_table.py'
    spec = importlib.util.spec_from_file_location('efficiency_table', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_efficiency_table_rows(tmp_path, capsys):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg_ovss.engine.parameters import count_parameters
    import mmseg_ovss.testing.tiny_clip  # noqa: F401
    configs = [write_tiny_config(
        REPO_ROOT / f'configs/{m}/vit-b16_coco-stuff171_80k_ade150.py',
        tmp_path / f'{m}.py') for m in ('dcpclip', 'catseg')]
    out = tmp_path / 'rows.json'
    _tool().main([*map(str, configs), '--dataset', 'ade150', '--images', '2',
                  '--generated', '--size', '64', '64', '--device', 'cpu',
                  '--no-flops', '--out', str(out), '--cfg-options',
                  'model.test_cfg.mode=whole'])
    printed = capsys.readouterr().out
    assert '| config | learnable (M) | total (M)' in printed
    assert 'generated' in printed and 'Ratios of dcpclip.py' in printed
    rows = json.loads(out.read_text())['rows']
    assert [Path(r['config']).name for r in rows] == ['dcpclip.py',
                                                      'catseg.py']
    init_default_scope('mmseg')
    for row, config in zip(rows, configs):
        counts = count_parameters(MODELS.build(Config.fromfile(
            str(config)).model))
        assert abs(row['learnable_m'] - counts['learnable'] / 1e6) < 1e-6
        assert abs(row['total_m'] - counts['total'] / 1e6) < 1e-6
        assert row['main']['images'] == 2 and row['main']['seconds'] > 0
        assert row['paper'] is None          # tiny configs: no paper anchor
    # DCP-CLIP reports the classes its head computed per view; CAT-Seg has
    # no selection
    assert 1 <= rows[0]['main']['selected_per_view'] <= 150
    assert rows[1]['main']['selected_per_view'] is None


def test_pinned_selection_counts_and_flops_fit(tmp_path, capsys):
    configs = [write_tiny_config(
        REPO_ROOT / f'configs/{m}/vit-b16_coco-stuff171_80k_ade150.py',
        tmp_path / f'{m}.py') for m in ('dcpclip', 'catseg')]
    out = tmp_path / 'rows.json'
    _tool().main([*map(str, configs), '--dataset', 'ade150', '--images', '1',
                  '--generated', '--size', '64', '64', '--device', 'cpu',
                  '--num-selected', '1', '2', '3', '--out', str(out),
                  # one counter convention for the K at CAT-Seg's fraction
                  '--flop-counter', 'dispatch',
                  '--cfg-options', 'model.test_cfg.mode=whole'])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    rows = data['rows']
    assert [r['num_selected'] for r in rows] == [None, 1, 2, 3, None]
    rows = rows[1:]
    assert [r['main']['selected_per_view'] for r in rows[:3]] == [1.0, 2.0,
                                                                 3.0]
    one, two, three, catseg = (r['main']['gflops'] for r in rows)
    assert 0 < one < two < three and catseg > 0
    # nearly linear in K (the SA branch's class attention is K^2, small)
    assert abs((three - two) - (two - one)) <= 0.05 * (three - one)
    fit = data['flops_fit']
    k, g = [1, 2, 3], [one, two, three]
    slope = sum((a - 2) * (b - sum(g) / 3) for a, b in zip(k, g)) / 2
    assert abs(fit['gflops_per_class'] - slope) <= 1e-9 * three
    assert abs(fit['base_gflops'] - (sum(g) / 3 - 2 * slope)) <= \
        1e-9 * three
    assert fit['max_relative_residual'] <= 0.05
    # the K at which DCP-CLIP reaches 0.35 x CAT-Seg's GFLOPs
    k = fit['k_at_goal']
    assert abs(fit['base_gflops'] + fit['gflops_per_class'] * k -
               0.35 * catseg) <= 1e-6 * catseg
    assert '(K pinned to 3)' in printed and 'reached at K =' in printed


def _tiny_configs(tmp_path, methods=('dcpclip', 'catseg')):
    return [str(write_tiny_config(
        REPO_ROOT / f'configs/{m}/vit-b16_coco-stuff171_80k_ade150.py',
        tmp_path / f'{m}.py')) for m in methods]


TINY_RUN = ['--generated', '--size', '64', '64', '--device', 'cpu',
            '--cfg-options', 'model.test_cfg.mode=whole']


def test_also_dataset_is_interleaved_image_by_image(tmp_path, capsys):
    """--also-dataset: both vocabularies timed on the same images, one
    untimed warm-up on each first, then image 1 on each, image 2 on each,
    ...; at a pinned K both compute exactly K classes per view."""
    dcpclip, = _tiny_configs(tmp_path, ('dcpclip', ))
    out = tmp_path / 'rows.json'
    _tool().main([dcpclip, '--dataset', 'ade150', '--also-dataset',
                  'ade847', '--images', '2', '--num-selected', '2',
                  '--no-flops', '--out', str(out), *TINY_RUN])
    captured = capsys.readouterr()
    rows = json.loads(out.read_text())['rows']
    assert [r['num_selected'] for r in rows] == [None, 2]
    for row in rows:
        assert len(row['main']['seconds_per_image']) == 2
        assert len(row['also']['seconds_per_image']) == 2
        assert row['time_ratio_also'] == \
            row['also']['seconds'] / row['main']['seconds']
        assert row['wall_s']['warmup'] > 0 and row['wall_s']['flops'] == 0
    assert rows[1]['main']['selected_per_view'] == 2.0
    assert rows[1]['also']['selected_per_view'] == 2.0
    # the rule's K is at most each vocabulary's size
    assert 1 <= rows[0]['also']['selected_per_view'] <= 847
    order = [line.split(': ', 1)[1].split(':')[0]
             for line in captured.err.splitlines()
             if 'dcpclip.py K=2:' in line and ' on ade' in line]
    assert order == ['warm-up image on ade150', 'warm-up image on ade847',
                     'image 1/2 on ade150', 'image 1/2 on ade847',
                     'image 2/2 on ade150', 'image 2/2 on ade847']
    assert 'ratio |' in captured.out


def test_untimed_config_is_counted_not_timed(tmp_path, capsys):
    """--untimed: no warm-up or timed image, the same FLOPs as a timed run;
    --flop-images 1 counts one image."""
    catseg, = _tiny_configs(tmp_path, ('catseg', ))
    results = {}
    for name, extra in (('timed', []), ('untimed', ['--untimed',
                                                    'catseg.py'])):
        out = tmp_path / f'{name}.json'
        _tool().main([catseg, '--images', '2', '--flop-images', '1',
                      '--out', str(out), *extra, *TINY_RUN])
        results[name], = json.loads(out.read_text())['rows']
    timed, untimed = results['timed'], results['untimed']
    assert untimed['timed'] is False and untimed['main']['seconds'] is None
    assert untimed['wall_s']['warmup'] == 0 == untimed['wall_s']['timed']
    assert timed['main']['images'] == 2
    assert len(timed['main']['gflops_per_image']) == 1
    assert untimed['main']['gflops_per_image'] == \
        timed['main']['gflops_per_image']
    assert '(untimed)' in capsys.readouterr().out


def test_text_bank_is_filled_once_and_read_back(tmp_path):
    """--text-bank: the first run encodes every prompt of the vocabulary
    into the bank, the second finds them all there."""
    dcpclip, = _tiny_configs(tmp_path, ('dcpclip', ))
    bank = tmp_path / 'bank'
    states = []
    for run in range(2):
        out = tmp_path / f'run{run}.json'
        _tool().main([dcpclip, '--images', '1', '--no-flops', '--untimed',
                      'dcpclip.py', '--text-bank', str(bank), '--out',
                      str(out), '--quiet', *TINY_RUN])
        states.append(json.loads(out.read_text())['rows'][0]['main']
                      ['text_bank'])
    first, second = states
    assert first['banked'] == 0 and first['prompts'] > 0
    assert second == dict(first, banked=first['prompts'])
    assert Path(first['path']).parent == bank


def test_random_text_keeps_the_pinned_flops(tmp_path):
    """--text random: at a pinned K the FLOPs are those of the encoded
    class embeddings (the head's cost does not depend on their values);
    --flop-counter dispatch counts every row with that counter."""
    dcpclip, catseg = _tiny_configs(tmp_path)
    flops = {}
    for text in ('encode', 'random'):
        out = tmp_path / f'{text}.json'
        _tool().main([dcpclip, catseg, '--images', '1', '--untimed',
                      'dcpclip.py', 'catseg.py', '--num-selected', '3',
                      '--random-init', '--text', text, '--out', str(out),
                      '--flop-counter', 'dispatch', '--quiet', *TINY_RUN])
        rows = json.loads(out.read_text())['rows']
        flops[text] = [r['main']['gflops'] for r in rows[1:]]
        assert {r['main']['flop_counter'] for r in rows} == {'dispatch'}
    assert flops['random'] == flops['encode'] and min(flops['random']) > 0


def test_bad_options_name_the_value(capsys):
    import pytest
    for argv, text in (
            (['a.py', '--untimed', 'b.py'], '--untimed b.py: not among'),
            (['a.py', '--text', 'random'], 'needs --random-init'),
            (['a.py', '--also-dataset', 'ade150'], 'is --dataset'),
            (['a.py', '--flop-images', '0'], '--flop-images 0')):
        with pytest.raises(SystemExit):
            _tool().parse_args(argv)
        assert text in capsys.readouterr().err


def test_configs_of_one_file_name_get_distinct_labels(capsys):
    """DCP-CLIP's and CAT-Seg's configs share a file name: rows are labelled
    by the shortest path suffix that tells them apart, and --untimed by the
    file name alone is refused as ambiguous."""
    import pytest
    tool = _tool()
    configs = ['configs/dcpclip/vit-l14_coco-stuff171_80k.py',
               'configs/catseg/vit-l14_coco-stuff171_80k.py',
               'configs/catseg/vit-b16_ade150.py']
    assert tool.row_labels(configs) == {
        configs[0]: 'dcpclip/vit-l14_coco-stuff171_80k.py',
        configs[1]: 'catseg/vit-l14_coco-stuff171_80k.py',
        configs[2]: 'vit-b16_ade150.py'}
    with pytest.raises(SystemExit):
        tool.parse_args([*configs, '--untimed',
                         'vit-l14_coco-stuff171_80k.py'])
    assert 'names 2 configs' in capsys.readouterr().err
    args = tool.parse_args([*configs, '--untimed', configs[1],
                            'vit-b16_ade150.py'])
    assert [tool.is_untimed(c, args) for c in configs] == [False, True, True]


def test_ratios_across_two_flop_counters_are_flagged(tmp_path, capsys):
    """'auto' traces CAT-Seg with jit and falls back to dispatch for
    DCP-CLIP's data-dependent K; jit counts normalisations and resizing,
    dispatch does not, so their GFLOPs ratio mixes two conventions: the
    table names each row's counter and flags the ratio; '--flop-counter
    dispatch' counts both in one and has nothing to flag."""
    configs = _tiny_configs(tmp_path)
    common = [*configs, '--dataset', 'ade150', '--images', '1',
              '--untimed', 'dcpclip.py', 'catseg.py', '--text', 'random',
              '--random-init', '--quiet', *TINY_RUN]
    out = tmp_path / 'auto.json'
    _tool().main([*common, '--out', str(out)])
    captured = capsys.readouterr()
    rows = json.loads(out.read_text())['rows']
    assert [r['main']['flop_counter'] for r in rows] == ['dispatch', 'jit']
    assert '| dispatch |' in captured.out and '| jit |' in captured.out
    assert 'counted by dispatch and jit: two conventions' in captured.out
    assert 'mix two conventions' in captured.err
    out = tmp_path / 'dispatch.json'
    _tool().main([*common, '--flop-counter', 'dispatch', '--out', str(out)])
    captured = capsys.readouterr()
    rows = json.loads(out.read_text())['rows']
    assert [r['main']['flop_counter'] for r in rows] == ['dispatch'] * 2
    assert 'two conventions' not in captured.out + captured.err
