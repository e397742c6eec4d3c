"""benchmarks/report.py renders saved results (JSON, or the rows a stopped run printed) as tables."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import report  # noqa: E402


def test_tables_from_json_and_from_a_stopped_run_log(tmp_path):
    rows = [dict(width="30", batch=100, K=20, standard_s=0.001, symmetrized_s=0.0015, ratio=1.5)]
    (tmp_path / "step_time.json").write_text(json.dumps(
        {"machine": {"device": "cpu", "jax": "0.0"}, "benchmark": "step_time", "rows": rows, "complete": False}))
    (tmp_path / "orbit_throughput.log").write_text(
        "noise\n['4 in, 6 hidden, 3 out', 720, 'chunk=None', '0.15', '4.74e+06']\n[not python\n")
    text = report.report(tmp_path)
    assert "| 30 | 100 | 20 | 1.000 | 1.500 | 1.50 |" in text
    assert "stopped early" in text
    assert "| 4 in, 6 hidden, 3 out | 720 | chunk=None | 0.15 | 4.74e+06 |" in text
    assert "peers" not in text


def test_usage_error_names_the_argument(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "RESULTS_FOLDER" in capsys.readouterr().err
