"""`hupeft bench`: the JSON it promises, on a tiny model (the speed targets are read off its
table on the real model, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys


def bench(*args):
    return subprocess.run([sys.executable, "-m", "hupeft", "bench", "--model", "tiny-llama", *args],
                          capture_output=True, text=True)


def test_json_has_every_row_with_time_memory_and_trainable_count(tmp_path):
    out = tmp_path / "bench.json"
    proc = bench("--methods", "frozen,boft_m1", "--warmup", "0", "--steps", "2",
                 "--precision", "bf16-mixed", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["model"] == "tiny-llama" and result["precision"] == "bf16-mixed"
    rows = result["methods"]
    assert list(rows) == ["frozen", "boft_m1"]
    for row in rows.values():
        assert row["step_seconds"] > 0 and row["peak_memory_bytes"] > 0
    # tiny-llama: 2 layers x (q_proj, v_proj), 64 x 64. BOFT m=1, b=8: 8 blocks of 8*7/2 skew
    # entries plus 64 scales per layer. (Each row runs in two fresh processes, so two rows.)
    assert rows["frozen"]["trainable_params"] == 0
    assert rows["boft_m1"]["trainable_params"] == 4 * (8 * 28 + 64)
    assert "x floor" in proc.stdout and "bf16-mixed" in proc.stdout


def test_unknown_row_is_a_one_line_error_and_writes_nothing(tmp_path):
    out = tmp_path / "bench.json"
    proc = bench("--methods", "lora,dora", "--json", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown method row(s) ['dora']" in proc.stderr
    assert not out.exists()
