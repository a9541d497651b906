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
