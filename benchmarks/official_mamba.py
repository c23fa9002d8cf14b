"""The official Mamba (state-spaces/mamba, PyPI's mamba-ssm 2.3.2.post1) built on a GPU machine from its
source distribution, as the peer that benchmarks measure in the same run as ours (issues 25 and 31).

Here, once (peers/ is ignored by git and travels to the GPU machine as a carried path):

    mkdir -p peers && curl -sSL -o peers/mamba_ssm-2.3.2.post1.tar.gz \
        https://files.pythonhosted.org/packages/af/48/aa7bec0efc7453fa0512276c0069c854bf684219050294266534bfef34bb/mamba_ssm-2.3.2.post1.tar.gz

There, in a benchmark: `mamba_ssm = official_mamba()` compiles only `csrc/selective_scan` for the GPU's
architecture with `torch.utils.cpp_extension.load` (about 2 minutes on 16 cores; causal_conv1d is not
built, so the official Mamba block takes its documented fallback, torch's conv1d) and imports the
package from the same archive. The package's `__init__` is replaced by its version line alone: the
original imports Mamba-2 and Mamba-3, whose TileLang and CuTe kernels are not needed to measure Mamba-1.
"""

import os
import sys
import tarfile
from pathlib import Path
from types import ModuleType

ARCHIVE = Path("peers/mamba_ssm-2.3.2.post1.tar.gz")
VERSION = "2.3.2.post1"

# The official setup.py's nvcc flags for the selective scan (its CUDA build, Hopper only).
NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
    "--threads",
    "4",
]


def official_mamba(archive: Path = ARCHIVE, build: Path = Path("/tmp/official_mamba")) -> ModuleType:
    """Compile the official selective scan and return the imported `mamba_ssm` package.

    After this, `mamba_ssm.ops.selective_scan_interface.selective_scan_fn`, `mamba_ssm.modules.mamba_simple.Mamba`
    and `mamba_ssm.models.mixer_seq_simple.MambaLMHeadModel` import as in the official repository.
    """
    if not archive.is_file():
        raise SystemExit(f"{archive}: the mamba-ssm source distribution is missing (see this module's docstring)")
    import torch
    from torch.utils.cpp_extension import load

    source = build / f"mamba_ssm-{VERSION}"
    if not source.is_dir():
        build.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(build, filter="data")
        (source / "mamba_ssm" / "__init__.py").write_text(f'__version__ = "{VERSION}"\n')
    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    scan = source / "csrc" / "selective_scan"
    module = load(
        name="selective_scan_cuda",
        sources=[str(scan / "selective_scan.cpp"), *sorted(str(path) for path in scan.glob("*.cu"))],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=NVCC_FLAGS,
        build_directory=str(build),
        verbose=False,
    )
    sys.modules["selective_scan_cuda"] = module
    sys.path.insert(0, str(source))
    import mamba_ssm

    return mamba_ssm
