"""`make bench` keeps working: its data scaling is valid and its stage section runs end to end.
(The benchmark's numbers are reported, never asserted: speed targets live in `make bench`.)"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "bench"))


def test_scaled_framework_multiplies_distinct_rows():
    import bench

    from tasks.domain.blueprint import OfflineBlueprintGenerator
    from tasks.domain.expansion import expand_blueprint

    one, three = (len(expand_blueprint(OfflineBlueprintGenerator().generate(bench.scaled_framework(k)))) for k in (1, 3))
    assert three >= 2.5 * one, (one, three)


@pytest.mark.slow
def test_stage_benchmark_runs_and_reports(tmp_path):
    import bench

    results = bench.bench_stages([300], tmp_path)
    stage = results["300"]
    assert stage["rows"] == 300 and stage["validation_passed"]
    assert min(stage["expansion_rows_per_s"], stage["validation_rows_per_s"], stage["tokenization_rows_per_s"]) > 0
    assert "| 300 |" in bench.markdown({"machine": "test", "stages": results})
