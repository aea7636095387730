"""Defect 4 of issue 13: a runtime that parity was asked to check but cannot run fails the check (exit 1) unless the
user explicitly allows skipping; the reason is printed whole (it used to be cut at '(available')."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def _unavailable(spec: str) -> bool:
    from oodgate.errors import OodgateError

    try:
        from oodgate.runtime.providers import resolve_providers
    except ImportError:
        from oodgate.runtime.session import resolve_providers
    try:
        resolve_providers(spec.split(":")[0])
    except OodgateError:
        return True
    return False


MISSING = [s for s in ("cuda", "tensorrt", "trt-native:fp16") if _unavailable(s)]
needs_missing = pytest.mark.skipif(not MISSING, reason="every GPU runtime is available here: nothing to skip")


def _base(energy_graph, energy_calibration_file):
    return ["parity", energy_graph, "--calibration", energy_calibration_file, "--data", "digits:test", "--limit", 16]


@needs_missing
@pytest.mark.parametrize("spec", MISSING)
def test_d4_a_requested_runtime_that_cannot_run_fails(cli, energy_graph, energy_calibration_file, tmp_path, spec):
    junit = tmp_path / "p.xml"
    result = cli(*_base(energy_graph, energy_calibration_file), "-p", "cpu", "-p", spec, "--junit", junit)
    assert result.exception is None and result.code == 1, (result.code, result.out, result.err)
    assert result.out.strip().splitlines()[-1] == "FAIL"
    suite = ET.parse(junit).getroot()
    assert int(suite.get("failures")) + int(suite.get("errors", "0")) >= 1


@needs_missing
def test_d4_allow_skip_passes_and_prints_the_whole_reason(cli, energy_graph, energy_calibration_file, tmp_path):
    from oodgate.errors import OodgateError

    try:
        from oodgate.runtime.providers import resolve_providers
    except ImportError:
        from oodgate.runtime.session import resolve_providers
    spec = MISSING[0]
    with pytest.raises(OodgateError) as info:
        resolve_providers(spec.split(":")[0])
    reason = str(info.value)
    junit = tmp_path / "p.xml"
    result = cli(*_base(energy_graph, energy_calibration_file), "-p", "cpu", "-p", spec, "--allow-skip",
                 "--junit", junit)
    assert result.code == 0, (result.out, result.err)
    assert reason in result.out, f"reason cut:\n{result.out}\nexpected:\n{reason}"
    suite = ET.parse(junit).getroot()
    assert suite.get("skipped") == "1" and suite.get("failures") == "0"
    assert reason in ET.tostring(suite, encoding="unicode")


@needs_missing
def test_d4_python_parity_report_fails_unless_skips_are_allowed(energy_cal, energy_graph, test_inputs):
    try:
        from oodgate.exporter.reference import parity
    except ImportError:
        from oodgate.exporter.parity import parity
    strict = parity(energy_graph, test_inputs[:8], calibration=energy_cal, providers=["cpu", MISSING[0]])
    assert not strict.passed
    lenient = parity(energy_graph, test_inputs[:8], calibration=energy_cal, providers=["cpu", MISSING[0]],
                     allow_skip=True)
    assert lenient.passed and len(lenient.skipped) == 1


def test_d4_all_runtimes_skipped_never_passes(cli, energy_graph, energy_calibration_file):
    if not MISSING:
        pytest.skip("every GPU runtime is available here")
    result = cli(*_base(energy_graph, energy_calibration_file), "-p", MISSING[0], "--allow-skip")
    assert result.code == 1 and result.out.strip().splitlines()[-1] == "FAIL", result.out
