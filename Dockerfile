# wav2vec 2.0 training container, on NVIDIA's NGC PyTorch image (CUDA, cuDNN, NCCL, PyTorch; the reference used
# 22.11-py3). Build: bash scripts/docker/build.sh   Run: bash scripts/docker/run.sh (datasets mounted at /datasets).
ARG FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:25.05-py3
FROM ${FROM_IMAGE_NAME}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/workspace/wav2vec2
WORKDIR /workspace/wav2vec2

# NVIDIA apex ships with the NGC PyTorch images (the reference's 22.11 used it); this project does not import it
# (torch AdamW and LayerNorm). numpy and tensorboard also come with the image. Torch is NOT reinstalled: the project
# is installed with --no-deps so that pip keeps the image's CUDA build of torch.
RUN pip install --no-cache-dir 'soundfile>=0.12' 'editdistance>=0.6' \
    && pip install --no-cache-dir 'git+https://github.com/NVIDIA/dllogger@v1.0.0#egg=dllogger'

COPY . .
RUN pip install --no-cache-dir --no-deps -e .

CMD ["bash"]
