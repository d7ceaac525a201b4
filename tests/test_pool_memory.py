"""A 100 MB JSON array cut off mid-record is ingested in bounded memory, keeping every complete record."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource, sys
from curate.pool import ingest
rep = ingest(sys.argv[1], sys.argv[2], chunk_rows=10_000, progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"read": rep.n_read, "unique": rep.n_unique, "quarantined": rep.n_quarantined, "peak": peak}))
"""


@pytest.mark.slow
def test_truncated_100mb_json_array_in_bounded_memory(tmp_path):
    path = tmp_path / "big.json"
    n = 0
    with open(path, "w") as fh:
        fh.write("[")
        while fh.tell() < 100_000_000:
            rec = {"prompt": f"question {n} " + "lorem ipsum " * 40, "response": f"answer {n} " + "dolor " * 60}
            fh.write(("," if n else "") + json.dumps(rec))
            n += 1
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])  # cut inside the last record
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(tmp_path / "run")],
                         check=True, capture_output=True, text=True)  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (got["read"], got["unique"], got["quarantined"]) == (n, n - 1, 1)
    assert got["peak"] < 500_000_000, f"peak RSS {got['peak'] / 1e6:.0f} MB"
