"""``tools/analysis/efficiency_table.py`` on tiny versions of the shipped
DCP-CLIP and CAT-Seg ADE-150 evaluation configs (generated images, CPU).

FLOPs are skipped (``--no-flops``): tracing the CLIP tower for the FLOP
count fails on the tiny configs (TokenLayout receives traced tensor grid
sizes), see docs/dcp_clip.md.
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
    rows = json.loads(out.read_text())
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
