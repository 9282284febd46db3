"""The benchmark suite's own parts, without timing anything long: the machine record every
results file carries (issue 18, part 3) and the reduced-decoding rows (part 1)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from benchmarks import inputs, machine
from benchmarks.run import Suite, bench_reduced_decoding, decoding_targets, reduced_row_names, write_results

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16
"""


def test_cpu_info_reads_the_model_and_the_instruction_set_flags(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    info = machine.cpu_info(path)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["flags"] == {
        "avx2": True,
        "avx512f": True,
        "avx512_vnni": True,
        "avx512_bf16": True,
        "avx_vnni": False,
        "amx_tile": True,
        "amx_int8": True,
        "amx_bf16": True,
    }


def test_cpu_flags_are_unknown_without_a_cpuinfo(tmp_path: Path) -> None:
    info = machine.cpu_info(tmp_path / "absent")
    assert set(info["flags"].values()) == {None}
    described = machine.describe({**machine.machine_info(), "cpu": info})
    assert "instruction-set flags unknown" in described


def test_every_results_file_records_the_machine(tmp_path: Path) -> None:
    suite = Suite(repeats=1)
    suite.add("a row", "images/s", [1.0, 2.0, 3.0])
    write_results(suite, tmp_path, [("a target (>= 1)", 2.0, 1.0)], stem="results-x")
    document = json.loads((tmp_path / "results-x.json").read_text())
    assert document["rows"] == [
        {"name": "a row", "unit": "images/s", "median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    ]
    assert set(document["machine"]["cpu"]["flags"]) == set(machine.CPU_FLAGS)
    assert document["machine"]["cpu"]["model"]
    first_line = (tmp_path / "results-x.md").read_text().splitlines()[0]
    assert first_line.startswith("Machine: ") and "avx2" in first_line


def test_reduced_decoding_rows_time_full_and_reduced_in_one_run() -> None:
    small = np.ascontiguousarray(inputs.large_radiograph(12)[::4, ::4])  # 512 x 625: a short test
    ds = inputs._dicom_dataset(small, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    png = io.BytesIO()
    Image.fromarray((small >> 4).astype(np.uint8)).save(png, format="PNG")
    suite = Suite(repeats=1)
    files = {"jpeg2000 lossless 12-bit": inputs._dicom_bytes(ds), "png 8-bit": png.getvalue()}
    bench_reduced_decoding(suite, files)
    names = [row.name for row in suite.rows]
    full, reduced, ratio = reduced_row_names("jpeg2000 lossless 12-bit", 64, 4)  # 512 / 4 >= 128
    assert {full, reduced, ratio, f"  {reduced}, ms per image"} <= set(names)
    assert reduced_row_names("jpeg2000 lossless 12-bit", 224, 1)[1] in names  # 512 / 2 < 448
    assert reduced_row_names("png 8-bit", 64, 1)[1] in names  # PNG: no reduced decode
    ratio = reduced_row_names("jpeg2000 lossless 12-bit", 224)[2]
    assert decoding_targets(suite)[0][1] == suite.value(ratio) > 0
