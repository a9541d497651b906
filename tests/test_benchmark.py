"""tools/benchmark.py reports latency, throughput, memory and stages."""
from mmseg_ovss.testing.tools import run_tool


def test_benchmark_reports_stages(repo_root, tmp_path):
    config = repo_root / 'configs' / 'baselines' / 'naclip_ade.py'
    out = tmp_path / 'bench.json'
    result = run_tool('benchmark', [
        config, '--random-init', '--model-name', 'ovss-tiny-ViT-16',
        '--num-images', '2', '--warmup', '0', '--short-side', '32',
        '--num-classes', '7', '--device', 'cpu', '--json', out])
    assert out.is_file()
    assert result['num_classes'] == 7 and result['image_size'] == [32, 43]
    assert result['images_per_s'] > 0 and result['cpu_peak_rss_mb'] > 0
    stages = result['stages_s_per_image']
    assert {'backbone', 'head', 'postprocess'} <= set(stages)
    assert sum(stages.values()) <= result['latency_s_mean'] * 1.05
