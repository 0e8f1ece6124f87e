"""The llama.cpp build is made for the CPU it runs on, and a build this CPU cannot run stops start-up in one line."""

from __future__ import annotations

import platform
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from llm_api.local_model.errors import ModelLoadError
from llm_api.local_model.llama_cpp_model import TILED_ATTENTION_ROWS
from llm_api.local_model.spec import CPUINFO, LLAMA_CPP_CPU_FLAGS, check_cpu_runs_build
from tests.servers import ROOT

# The flags lines of /proc/cpuinfo on five kinds of x86 CPU (only the flags the build looks at, and a few others).
ZEN3_AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 avx2 bmi2 sha_ni"
ZEN4_AVX512 = (ZEN3_AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vbmi avx512_vnni avx512_bf16")
SKYLAKE_X = ZEN3_AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl"
SAPPHIRE_RAPIDS = ZEN4_AVX512 + " amx_bf16 amx_tile amx_int8"
OLD_SSE = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    return path


def chosen(tmp_path: Path, flags: str) -> tuple[str, list[str], list[str]]:
    """What scripts/build_llama_cpp.sh would compile for on a CPU with ``flags``: (the folder's suffix, the
    cmake switches, the CPU flags it writes as required)."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "build_llama_cpp.sh"), "--isa"], capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "CPUINFO": str(cpuinfo(tmp_path, flags))},
                            check=True, timeout=30)
    name, switches, required = result.stdout.splitlines()
    return name, switches.split(), required.split()


x86_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="the script picks x86 switches on x86 only")


@x86_only
def test_an_avx2_cpu_gets_an_avx2_build_with_no_avx512_instruction(tmp_path):
    name, switches, required = chosen(tmp_path, ZEN3_AVX2)
    assert name == "sse42-avx-avx2-fma-f16c-bmi2"
    assert "-DGGML_AVX2=ON" in switches and "-DGGML_AVX512=ON" not in switches
    assert not [switch for switch in switches if switch.startswith("-DGGML_AMX")]
    assert sorted(required) == sorted("sse4_2 avx avx2 fma f16c bmi2".split())


@x86_only
def test_an_avx512_cpu_gets_what_it_has_of_avx512_and_the_amx_kernels(tmp_path):
    name, switches, required = chosen(tmp_path, ZEN4_AVX512)
    assert name == "avx512-vbmi-vnni-bf16-amx"
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AMX_INT8=ON"} <= set(switches)
    assert "amx_int8" not in required  # AMX is used only where the CPU has it at run time
    assert {"avx512f", "avx512bw", "avx512_bf16"} <= set(required)

    name, switches, required = chosen(tmp_path, SKYLAKE_X)
    assert name == "avx512-amx"
    assert "-DGGML_AVX512_BF16=OFF" in switches and "avx512_bf16" not in required

    assert chosen(tmp_path, SAPPHIRE_RAPIDS)[0] == "avx512-vbmi-vnni-bf16-amx"


@x86_only
def test_a_cpu_without_avx_gets_a_build_that_names_none(tmp_path):
    name, switches, required = chosen(tmp_path, OLD_SSE)
    assert name == "sse42"
    assert "-DGGML_AVX=OFF" in switches and "-DGGML_AVX2=OFF" in switches and required == ["sse4_2"]


def test_a_build_for_instructions_this_cpu_lacks_is_refused_in_one_line(tmp_path):
    required = tmp_path / "cpu-flags"
    required.write_text("sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq avx512bw\n")
    with pytest.raises(ModelLoadError) as caught:
        check_cpu_runs_build(required, cpuinfo(tmp_path, ZEN3_AVX2))
    message = str(caught.value)
    assert "avx512f, avx512cd, avx512vl, avx512dq, avx512bw" in message and "make llama-cpp" in message
    assert "\n" not in message

    check_cpu_runs_build(required, cpuinfo(tmp_path, ZEN4_AVX512))  # the same build on a CPU that has them


def test_no_list_or_no_cpuinfo_checks_nothing(tmp_path):
    check_cpu_runs_build(tmp_path / "absent", cpuinfo(tmp_path, OLD_SSE))  # a build from before the list
    required = tmp_path / "cpu-flags"
    required.write_text("avx512f\n")
    check_cpu_runs_build(required, tmp_path / "no-proc")


def test_the_installed_build_runs_on_this_cpu():
    """The libraries the tests load were built for this machine, and said so beside them."""
    llama_cpp = pytest.importorskip("llama_cpp")
    required = Path(llama_cpp.__file__).parent / "lib" / LLAMA_CPP_CPU_FLAGS
    assert required.is_file()
    check_cpu_runs_build(required, CPUINFO)


def test_a_source_without_the_lines_a_patch_rewrites_stops_the_build(tmp_path):
    """scripts/patch_llama_cpp.py changes exact lines of the pinned llama.cpp; a source where they moved stops
    the build with the file and the change named, rather than compiling unpatched kernels."""
    cpu = tmp_path / "ggml" / "src" / "ggml-cpu"
    (cpu / "amx").mkdir(parents=True)
    (cpu / "amx" / "mmq.cpp").write_text("    _tile_loadconfig(&tc);\n")
    (cpu / "ops.cpp").write_text("// a later version, whose attention reads differently\n")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "patch_llama_cpp.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "ops.cpp" in result.stderr and "check the change against this version" in result.stderr
    assert "ldtilecfg" in (cpu / "amx" / "mmq.cpp").read_text()  # the first change was made, the second refused


def test_the_engine_cuts_prompts_for_the_attention_the_build_compiles():
    """The engine runs every part of a prompt in calls of at least as many tokens as the build's attention needs
    to run in tiles; the two numbers must be the same."""
    patch = runpy.run_path(str(ROOT / "scripts" / "patch_llama_cpp.py"))
    assert patch["TILED_FROM_ROWS"] == TILED_ATTENTION_ROWS
