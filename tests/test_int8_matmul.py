"""``LLM_API_QUANTIZATION=int8`` without a model: the 8-bit matrix product that compiled decode steps call reads a
single row right, whatever stride the compiler gives its row (pytorch/pytorch#195066), and the path refuses what
it does not run on."""

from __future__ import annotations

import pytest
import torch
from torch._inductor.select_algorithm import extern_kernels

from llm_api.local_model.compiled import int8_decode_step, read_one_row_right
from llm_api.local_model.errors import ModelLoadError


def test_a_single_row_with_a_zero_stride_is_multiplied_right():
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 127, (1, 512), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 127, (512, 256), dtype=torch.int8, generator=generator)
    expected = (a.int() @ b.int())
    row = a.as_strided((1, 512), (0, 1))  # what the compiled code passes for one row's activations
    read_one_row_right()
    read_one_row_right()  # a second call wraps nothing twice
    out = torch.full((1, 256), -1, dtype=torch.int32)
    extern_kernels._int_mm(row, b, out=out)
    assert torch.equal(out, expected)
    assert torch.equal(extern_kernels._int_mm(a, b), expected)  # an ordinary row, no out: as before
    four = torch.randint(-128, 127, (4, 512), dtype=torch.int8, generator=generator)
    assert torch.equal(extern_kernels._int_mm(four, b), four.int() @ b.int())


@pytest.mark.parametrize("device, dtype", [("cpu", torch.bfloat16), ("cuda", torch.float32)])
def test_int8_runs_on_the_cpu_in_float32_only(tmp_path, device, dtype):
    with pytest.raises(ModelLoadError) as refused:
        int8_decode_step(torch.nn.Linear(4, 4), torch.device(device), dtype, tmp_path)
    assert "LLM_API_QUANTIZATION=int8 runs on the CPU in float32" in str(refused.value)
